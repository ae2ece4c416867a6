"""What the user pointed at, before any pixel is read: scenes found among paths, URIs and
manifests, GeoTIFF headers (georeferencing, per-band masks, scale/offset, units, tags), and bands
matched to Clay's by name.

Every problem a user can fix is a :class:`SceneError` whose message names the file. The training
data reads chips through the same band matching, so a file that trains also embeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import rasterio
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioError
from rasterio.transform import Affine

from .bands import BAND_GROUPS, BAND_NAMES, GROUP_NAMES, canonical_band_name
from .dates import DatedFile

if TYPE_CHECKING:
    from .stac import AssetFacts

#: Data types a Clay band may be stored in. uint8 is left out on purpose: Sentinel-2's uint8 files
#: are the true-colour preview (TCI), not reflectances.
SUPPORTED_DTYPES = ("uint16", "int16", "uint32", "int32", "float32", "float64")
SCENE_SUFFIXES = (".tif", ".tiff")
MANIFEST_SUFFIX = ".txt"
#: STAC Items and ItemCollections (GeoJSON): read as such, never handed to GDAL, whose STAC drivers
#: would open them as rasters without a CRS.
ITEM_SUFFIXES = (".json", ".geojson")
#: URI schemes GDAL reads through a virtual file system (``/vsicurl/`` keeps the whole URL).
URI_SCHEMES = {"s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/", "http": "/vsicurl/", "https": "/vsicurl/"}


class SceneError(ValueError):
    """A scene the runtime cannot embed; the message names the file and the problem."""


@dataclass(frozen=True)
class GdalPath:
    """A scene file that GDAL reads and this machine cannot list: ``/vsis3/...``, ``/vsicurl/...``,
    or ``s3://``, ``gs://``, ``az://``, ``http(s)://`` URIs (given to GDAL as ``/vsi...`` paths).

    ``pathlib`` would fold the ``//`` of ``/vsicurl/https://...``, so this keeps the text as given.
    It answers the few ``Path`` questions the runtime asks of a scene file; whether it exists is
    GDAL's to say when the header is read (one line with GDAL's reason, like any unreadable file).
    Messages and ``source_url`` show the user's spelling; rasterio opens :attr:`gdal`.
    """

    uri: str
    gdal: str

    @classmethod
    def parse(cls, text: str) -> GdalPath | None:
        """The GDAL path of ``text``, or ``None`` when it is an ordinary local path."""
        if text.startswith("/vsi"):
            return cls(text, text)
        scheme, sep, rest = text.partition("://")
        if not sep or scheme.lower() not in URI_SCHEMES:
            return None
        prefix = URI_SCHEMES[scheme.lower()]
        return cls(text, prefix + (text if prefix == "/vsicurl/" else rest))

    def __fspath__(self) -> str:
        return self.gdal

    def __str__(self) -> str:
        return self.uri

    @property
    def name(self) -> str:
        return self.uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def parent(self) -> GdalPath:
        uri, gdal = self.uri.split("?", 1)[0], self.gdal.split("?", 1)[0]
        return GdalPath(uri.rsplit("/", 1)[0], gdal.rsplit("/", 1)[0])

    def is_file(self) -> bool:
        return True

    def is_dir(self) -> bool:
        return False

    def exists(self) -> bool:
        return True

    def resolve(self) -> GdalPath:
        return self


def scene_path(path: str | Path | GdalPath) -> Path | GdalPath:
    """A command-line scene argument as a local :class:`Path` or a :class:`GdalPath`."""
    if isinstance(path, (Path, GdalPath)):
        return path
    return GdalPath.parse(str(path)) or Path(path)


def read_manifest(manifest: Path) -> list[Path | GdalPath]:
    """The scenes a text manifest lists, one a line; blank lines and ``#`` comments are skipped,
    and relative paths are taken from the manifest's folder (so a manifest can travel with its data)."""
    try:
        lines = manifest.read_text(encoding="utf-8-sig").splitlines()  # a BOM (Windows editors) is not a path
    except (OSError, UnicodeDecodeError) as exc:
        raise SceneError(f"{manifest}: cannot read this manifest ({getattr(exc, 'strerror', None) or exc})") from None
    entries = []
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        entry = scene_path(text)
        entries.append(entry if isinstance(entry, GdalPath) or entry.is_absolute() else manifest.parent / entry)
    if not entries:
        raise SceneError(f"{manifest}: the manifest lists no scene")
    return entries


@dataclass(frozen=True)
class SceneFiles:
    """What the user pointed at as one scene: a multi-band file, or single-band files (per-band
    products, possibly at several resolutions and from several products) that belong together, or
    the assets of one or more STAC Items (:mod:`clay.runtime.stac`), with what the Items declare
    about each."""

    path: Path | GdalPath
    files: tuple[Path | GdalPath, ...]
    # files beside them that are not Clay bands (a STAC Item's: "<item id>:<asset key>")
    ignored: tuple[Path | GdalPath | str, ...] = ()
    label: str | None = None  # the scene's name where it is not the path's (a STAC Item's id)
    assets: tuple[AssetFacts, ...] = ()  # what STAC Items declare about the files, one per file
    problem: str | None = None  # why the scene cannot be opened, found before it is (a bad STAC Item)

    @property
    def name(self) -> str:
        if self.label is not None:
            return self.label
        return self.path.stem if self.path.is_file() else self.path.name

    def declared(self, path: Path | GdalPath) -> AssetFacts | None:
        """What a STAC Item declares about one of the scene's files (``None``: a plain file)."""
        return next((asset for asset in self.assets if asset.path == path), None)


@dataclass(frozen=True, eq=False)  # a file's header is itself: identity, hashable
class Header:
    """What a file says about itself, without its pixels. Per-band tuples are in band order."""

    path: Path | GdalPath
    crs: rasterio.crs.CRS
    transform: Affine
    width: int
    height: int
    count: int
    names: tuple[str | None, ...]  # canonical band name per band (None: not a Clay band)
    dtypes: tuple[str, ...]
    nodata: tuple[float | None, ...]
    masks: tuple[str, ...]  # see mask_kind: "none", "nodata", "mask" or "alpha"
    scales: tuple[float, ...]
    offsets: tuple[float, ...]
    units: tuple[str, ...]
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # metadata domain ("" default) → tags
    band_tags: tuple[dict[str, str], ...] = ()
    overviews: bool = False
    alpha: int | None = None  # 1-based index of the file's alpha band, if it has one
    # Values a catalogue (a STAC Item) declared for the file and this header holds in place of the
    # file's silence, by kind ("bands", "scale", "nodata", "unit", "harmonised", "baseline"): where
    # each came from, for the notes recorded in the outputs (clay.runtime.stac.asset_header).
    declared: dict[str, str] = field(default_factory=dict)
    date: DatedFile | None = None  # the sensing date a catalogue declares for the file

    def tag(self, key: str, domain: str = "") -> str | None:
        return self.tags.get(domain, {}).get(key)


#: Metadata domains whose tags a header keeps (GDAL's IMAGERY domain holds acquisition metadata).
TAG_DOMAINS = ("", "IMAGERY")


def mask_kind(flags, alpha: int | None = None) -> str:
    """GDAL's mask flags of a band (rasterio ``mask_flag_enums``) as how its invalid pixels are found:
    ``none`` (all valid), ``nodata`` (equal to the nodata value), ``mask`` (a per-band or per-dataset
    mask band, or an alpha band GDAL applies: read with ``read_masks``) or ``alpha``: the file has an
    alpha band that GDAL does not apply as a mask (it does so only for grey + alpha and RGBA files),
    read here as one (0: invalid)."""
    flags = set(flags)
    if flags == {MaskFlags.all_valid}:
        return "alpha" if alpha else "none"
    if flags == {MaskFlags.nodata}:
        return "nodata"
    return "mask"


def georeferencing_problem(src) -> str | None:
    """Why an open dataset cannot be placed on Earth, or ``None``. GDAL reports a file without a
    geotransform as the identity (pixel (0, 0) at the CRS origin, 1-unit pixels): placing chips with
    it would put them at the wrong place with exit code 0."""
    transform = src.transform
    if src.crs is None:
        if src.gcps[0] and src.gcps[1] is not None:  # GCPs with their own CRS: a warp gives the grid
            return "ground control points only; warp it onto a grid first (gdalwarp -t_srs EPSG:... in.tif out.tif)"
        if transform == Affine.identity() or transform.is_degenerate:
            return ("no CRS and no geotransform; the runtime needs both to place chips on Earth (if you know them: "
                    "gdal_edit.py -a_srs EPSG:... -a_ullr ULX ULY LRX LRY FILE)")  # fmt: skip
        return "no CRS; the runtime needs one to place chips on Earth (if you know it: gdal_edit.py -a_srs EPSG:... FILE)"
    if transform == Affine.identity() or transform.is_degenerate:
        if src.gcps[0]:
            how = "ground control points only"
        elif src.rpcs is not None:
            how = "RPCs only"
        else:
            how = "no geotransform (GDAL reports the identity: 1-unit pixels at the CRS origin)"
        return f"{how}; warp it onto a grid first (gdalwarp -t_srs EPSG:... in.tif out.tif)"
    return None


def read_header(path: Path | GdalPath) -> Header:
    """What the runtime (and the training data) need to know of a file, without reading pixels.
    Raises :class:`SceneError` for a file that is missing, unreadable or not georeferenced."""
    if not path.is_file():
        raise SceneError(f"{path}: no such file")
    try:
        with rasterio.open(path) as src:
            if src.driver.upper().startswith("STAC"):
                raise SceneError(f"{path}: a STAC document, not a raster: give clay-run the Item's or ItemCollection's "
                                 "own path or URL ending in .json")  # fmt: skip
            problem = georeferencing_problem(src)
            if problem:
                raise SceneError(f"{path}: {problem}")
            alpha = next((i for i, c in enumerate(src.colorinterp, start=1) if c == ColorInterp.alpha), None)
            names = tuple(canonical_band_name(d) if d and i != alpha else None
                          for i, d in enumerate(src.descriptions, start=1))  # fmt: skip
            if src.count == 1 and names[0] is None:
                names = (canonical_band_name(path.stem),)  # per-band products name the band in the file name
            return Header(
                path, src.crs, src.transform, src.width, src.height, src.count, names, tuple(src.dtypes),
                tuple(src.nodatavals), tuple(mask_kind(f, alpha) for f in src.mask_flag_enums), tuple(src.scales),
                tuple(src.offsets), tuple(u or "" for u in src.units),
                {domain: src.tags(ns=domain) if domain else src.tags() for domain in TAG_DOMAINS},
                tuple(src.tags(i) for i in range(1, src.count + 1)), bool(src.overviews(1)), alpha,
            )  # fmt: skip
    except RasterioError as exc:
        raise SceneError(f"{path}: not a readable GeoTIFF ({first_line(exc)})") from None


def band_sources(scene: SceneFiles, headers: list[Header], wanted: tuple[str, ...]) -> dict[str, tuple[Path, int]]:
    """Engine band → (file, 1-based index); duplicates and missing bands are errors."""
    found: dict[str, tuple[Path, int]] = {}
    for header in headers:
        for index, name in enumerate(header.names, start=1):
            if name is None:
                continue
            if name in found:
                other = found[name][0]
                where = f"{other.name} and {header.path.name}" if other != header.path else f"{header.path.name} (twice)"
                raise SceneError(f"{scene.path}: two bands claim {name}: {where}")
            found[name] = (header.path, index)
    if not found and len(headers) == 1 and headers[0].count == len(BAND_NAMES):
        return {b: (headers[0].path, BAND_NAMES.index(b) + 1) for b in wanted}  # unnamed 13-band stack
    if not found and len(headers) == 1:
        raise SceneError(
            f"{scene.path}: {headers[0].count} bands without band descriptions, expected {len(BAND_NAMES)} in Clay "
            f"order ({BAND_NAMES[0]}…{BAND_NAMES[-1]}) or bands named by description"
        )
    missing = [b for b in wanted if b not in found]
    if missing:
        fitting = [g for g in GROUP_NAMES if all(BAND_NAMES[i] in found for i in BAND_GROUPS[g])]
        hint = (f"; the band groups it has: {','.join(fitting)} (export an engine for them with clay-export "
                f"--groups {','.join(fitting)})" if fitting else "")  # fmt: skip
        raise SceneError(
            f"{scene.path}: lacks band(s) {', '.join(missing)} (the scene has {', '.join(found) or 'no Clay band'}){hint}"
        )
    return {b: found[b] for b in wanted}


def is_item_path(path: Path | GdalPath) -> bool:
    """Whether a scene argument names a STAC Item or ItemCollection: a ``.json``/``.geojson`` file or
    URL, or a STAC API item URL (``…/collections/<id>/items/<id>``, which has no suffix)."""
    if path.suffix.lower() in ITEM_SUFFIXES:
        return True
    return isinstance(path, GdalPath) and path.uri.lower().startswith(("http://", "https://")) and (
        "/collections/" in path.uri and "/items/" in path.uri)  # fmt: skip


def discover_scenes(paths, manifests: bool = True, combine: bool = False) -> list[SceneFiles]:
    """Turn command-line paths into scenes.

    A multi-band GeoTIFF is a scene. Single-band files named as bands (``B02.tif``, ``B2.tif``,
    ``VV.tif``), given together on the command line or found under one folder (sub-folders
    included, e.g. an S2 and an S1 product side by side), form one scene with the multi-band files
    beside them whose band descriptions name Clay bands (an S2 stack and a ``DEM.tif``); the other
    GeoTIFFs (``visual.tif``, ``SCL.tif``, ``B01.tif``, ``AOT.tif``…) are not Clay bands and are listed
    in the scene's ``ignored``. A folder without per-band files gives one scene per multi-band file. A GDAL
    URI (``/vsis3/...``, ``s3://...``, ``https://...``) is a file. A ``.txt`` file is a manifest:
    each of its lines is discovered on its own, so one line is one scene (a file, or a folder of
    per-band files); lines are not manifests themselves. A ``.json`` file or URL is a STAC Item (one
    scene) or ItemCollection (one scene per Item), see :mod:`clay.runtime.stac`; with ``combine``,
    every Item found is one scene (an S2 item, an S1 item and a DEM item of one place).
    """
    scenes: list[SceneFiles] = []
    loose: list[Path | GdalPath] = []
    for path in map(scene_path, paths):
        if manifests and path.suffix.lower() == MANIFEST_SUFFIX and path.is_file() and not isinstance(path, GdalPath):
            for entry in read_manifest(path):
                scenes.extend(discover_scenes([entry], manifests=False))
        elif is_item_path(path):
            from .stac import item_scenes  # the STAC module imports this one

            scenes.extend(item_scenes(path))
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in SCENE_SUFFIXES)
            if not found:
                raise SceneError(f"{path}: no GeoTIFF files in this folder")
            per_band = [p for p in found if _is_band_file(p)]
            if per_band:
                members = [p for p in found if p in per_band or (_band_count(p) > 1 and _names_clay_bands(p))]
                scenes.append(SceneFiles(path, tuple(members), tuple(p for p in found if p not in members)))
                continue
            multi_band = [SceneFiles(p, (p,)) for p in found if _band_count(p) > 1]
            if not multi_band:
                raise SceneError(f"{path}: no multi-band GeoTIFF and no file named as a Clay band (B02.tif, VV.tif...)")
            scenes.extend(multi_band)
        elif path.is_file() and _is_band_file(path):
            loose.append(path)
        else:
            scenes.append(SceneFiles(path, (path,)))
    if loose:
        scenes.append(SceneFiles(loose[0].parent, tuple(loose)))
    if combine:
        from .stac import combine_items

        return [combine_items(scenes)]
    return scenes


def _band_count(path: Path | GdalPath) -> int:
    try:
        with rasterio.open(path) as src:
            return src.count
    except RasterioError:
        return 0


def _names_clay_bands(path: Path | GdalPath) -> bool:
    try:
        with rasterio.open(path) as src:
            return any(canonical_band_name(d) for d in src.descriptions if d)
    except RasterioError:
        return False


def _is_band_file(path: Path | GdalPath) -> bool:
    return canonical_band_name(path.stem) is not None and _band_count(path) == 1


def first_line(exc: BaseException) -> str:
    """The first line of an error, taken from GDAL's own message where rasterio wraps it ("Read
    failed. See previous exception for details." carries GDAL's reason as its cause)."""
    while "See previous exception" in str(exc) and (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
