"""What a file says about itself, before any pixel is read: its GeoTIFF header (georeferencing,
per-band masks, scale/offset, units, tags) and its bands matched to Clay's by name.

Every problem a user can fix is a :class:`~clay.runtime.errors.SceneError` whose message names the
file. The training data reads chips through the same band matching, so a file that trains also embeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import rasterio
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioError
from rasterio.transform import Affine

from ..bands import BAND_GROUPS, BAND_NAMES, GROUP_NAMES, canonical_band_name
from ..errors import SceneError, first_line
from .dates import DatedFile
from .inputs import GdalPath, SceneFiles
from .products import band_label
from .remote import is_remote, open_failure

#: Data types a Clay band may be stored in. uint8 is left out on purpose: Sentinel-2's uint8 files
#: are the true-colour preview (TCI), not reflectances.
SUPPORTED_DTYPES = ("uint16", "int16", "uint32", "int32", "float32", "float64")


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
    # each came from, for the notes recorded in the outputs (clay.runtime.scenes.stac.asset_header).
    declared: dict[str, str] = field(default_factory=dict)
    date: DatedFile | None = None  # the sensing date a catalogue declares for the file
    # Each band's label as the file gives it: its description, or for a single-band file without one
    # the band part of its name (products.band_label); "" where none. Clay v1.5 sensors other than
    # Sentinel-2/1 name their bands by these (clay.runtime.sensors.band_for_label).
    labels: tuple[str, ...] = ()

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
            labels = tuple(d if d and i != alpha else "" for i, d in enumerate(src.descriptions, start=1))
            names = tuple(canonical_band_name(d) if d else None for d in labels)
            if src.count == 1 and names[0] is None:
                names = (canonical_band_name(band_label(path)),)  # per-band products name the band in the file name
                labels = labels if labels[0] else (band_label(path),)
            return Header(
                path, src.crs, src.transform, src.width, src.height, src.count, names, tuple(src.dtypes),
                tuple(src.nodatavals), tuple(mask_kind(f, alpha) for f in src.mask_flag_enums), tuple(src.scales),
                tuple(src.offsets), tuple(u or "" for u in src.units),
                {domain: src.tags(ns=domain) if domain else src.tags() for domain in TAG_DOMAINS},
                tuple(src.tags(i) for i in range(1, src.count + 1)), bool(src.overviews(1)), alpha, labels=labels,
            )  # fmt: skip
    except RasterioError as exc:
        if is_remote(path):  # the server's answer first: an expired URL is not a bad file
            raise SceneError(f"{path}: cannot be read ({open_failure(path, first_line(exc))})") from None
        raise SceneError(f"{path}: not a readable GeoTIFF ({first_line(exc)})") from None


def _within(path, folder) -> str:
    """``path`` as found under the scene's folder (``a/B02.tif``), so that two files of one name differ."""
    try:
        return str(Path(str(path)).relative_to(str(folder)))
    except ValueError:
        return Path(str(path)).name


def band_sources(scene: SceneFiles, headers: list[Header], wanted: tuple[str, ...]) -> dict[str, tuple[Path, int]]:
    """Engine band → (file, 1-based index); duplicates and missing bands are errors."""
    found: dict[str, tuple[Path, int]] = {}
    for header in headers:
        for index, name in enumerate(header.names, start=1):
            if name is None:
                continue
            if name in found:
                other = found[name][0]
                where = (f"{_within(other, scene.path)} and {_within(header.path, scene.path)}" if other != header.path
                         else f"{header.path.name} (twice)")  # fmt: skip
                raise SceneError(f"{scene.path}: two bands claim {name}: {where}")
            found[name] = (header.path, index)
    clay_v0_bands = all(b in BAND_NAMES for b in wanted)  # not so for a Clay v1.5 engine of another sensor
    if not found and len(headers) == 1 and headers[0].count == len(BAND_NAMES) and clay_v0_bands:
        return {b: (headers[0].path, BAND_NAMES.index(b) + 1) for b in wanted}  # unnamed 13-band stack
    if not found and len(headers) == 1 and not clay_v0_bands:
        raise SceneError(f"{scene.path}: {headers[0].count} bands without band descriptions; this engine's bands "
                         f"({', '.join(wanted)}) must be named by band description")  # fmt: skip
    if not found and len(headers) == 1:
        raise SceneError(
            f"{scene.path}: {headers[0].count} bands without band descriptions, expected {len(BAND_NAMES)} in Clay "
            f"order ({BAND_NAMES[0]}…{BAND_NAMES[-1]}) or bands named by description"
        )
    missing = [b for b in wanted if b not in found]
    if missing:
        fitting = [g for g in GROUP_NAMES if all(BAND_NAMES[i] in found for i in BAND_GROUPS[g])]
        hint = (f"; the band groups it has: {','.join(fitting)} (export an engine for them with clay-export "
                f"--groups {','.join(fitting)})" if fitting and clay_v0_bands else "")  # fmt: skip
        raise SceneError(
            f"{scene.path}: lacks band(s) {', '.join(missing)} (the scene has {', '.join(found) or 'no Clay band'}){hint}"
        )
    return {b: found[b] for b in wanted}


def band_count(path: Path | GdalPath) -> int:
    try:
        with rasterio.open(path) as src:
            return src.count
    except RasterioError:
        return 0


def names_clay_bands(path: Path | GdalPath) -> bool:
    try:
        with rasterio.open(path) as src:
            return any(canonical_band_name(d) for d in src.descriptions if d)
    except RasterioError:
        return False
