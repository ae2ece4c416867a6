"""A GeoTIFF scene as the engine needs it: validated up front, cut into a chip grid, read in windows.

Nothing here reads a whole scene: each chip is one windowed read, so a scene of any size streams in
bounded memory. Every problem a user can fix is a :class:`SceneError` naming the file.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from datetime import date as Date
from pathlib import Path

import numpy as np
import rasterio
import shapely
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from shapely.geometry import Polygon, box

from clay.training.bands import BAND_GROUPS, BAND_NAMES, GROUP_NAMES, S2_BANDS, SAR_BANDS, canonical_band_name

from .metadata import EngineMetadata

SUPPORTED_DTYPES = ("uint16", "int16", "float32")
EDGE_MODES = ("shift", "pad", "drop")
SAR_UNITS = ("auto", "db", "linear")
SCENE_SUFFIXES = (".tif", ".tiff")


class SceneError(ValueError):
    """A scene the runtime cannot embed; the message names the file and the problem."""


def date_tag(tags: dict[str, str]) -> str | None:
    """The acquisition date text of a GeoTIFF: the release's ``date`` tag, else TIFF ``DateTime``."""
    return tags.get("date") or tags.get("DATE") or tags.get("TIFFTAG_DATETIME")


def parse_date(text: str) -> Date:
    """``YYYY-MM-DD`` (also the TIFF ``YYYY:MM:DD HH:MM:SS`` form) → date."""
    head = text.strip()[:10]
    if len(head) == 10 and head[4] == ":" and head[7] == ":":
        head = head.replace(":", "-")
    return Date.fromisoformat(head)


@dataclass(frozen=True)
class Chip:
    """One chip of the grid: pixel origin in the scene and the part of the window inside it."""

    row: int
    col: int
    height: int  # rows of real pixels (< chip size only for padded chips)
    width: int


@dataclass(frozen=True)
class BandSource:
    """Where one engine band comes from: a file, its 1-based band index, and how to read it."""

    path: Path
    index: int
    band: str
    warp: bool  # not on the scene grid: read through a bilinear WarpedVRT onto it
    nodata: float | None
    from_db: bool  # SAR stored in dB, converted to linear power when read
    # Set when the file's grid differs from the scene's only by pixel size and origin (same CRS,
    # north-up, covering the scene, no nodata to mask): a bilinear resampled windowed read then gives
    # the WarpedVRT's values (identical on the demo scene's 20 m bands) at a seventh of the cost.
    source_transform: rasterio.Affine | None = None


@dataclass
class Scene:
    """An opened, validated scene on one pixel grid (the finest of its files).

    Reads are thread-safe: every thread opens its own dataset and VRT handles.
    """

    path: Path  # the file, or the folder of per-band files, the user named
    name: str
    crs: rasterio.crs.CRS
    transform: rasterio.Affine
    width: int
    height: int
    date: Date
    sources: tuple[BandSource, ...]  # in the engine's band order
    fill_values: np.ndarray  # raw-space band means, float32 [C]: nodata becomes 0 after normalisation
    chip_size: int
    s2_offset: float = 0.0
    applied: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._local = threading.local()
        self._to_wgs84 = Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True)
        self.bands = tuple(s.band for s in self.sources)
        # Engine bands are in spec order, so the S2 bands (if any) are the first ones.
        self._s2_count = sum(b in S2_BANDS for b in self.bands)
        self._nodata = np.array([np.nan if s.nodata is None else s.nodata for s in self.sources], np.float32)
        self._db = [i for i, s in enumerate(self.sources) if s.from_db]
        reads: dict[tuple[Path, bool], list[int]] = {}
        for position, source in enumerate(self.sources):
            reads.setdefault((source.path, source.warp and source.source_transform is None), []).append(position)
        self._reads = list(reads.items())
        self._resample_from = {s.path: s.source_transform for s in self.sources if s.source_transform is not None}

    # --- grid -------------------------------------------------------------------------------------

    def chips(self, edge: str = "shift") -> list[Chip]:
        """The chip grid, row-major. Right/bottom remainders: a last chip shifted back inside the
        scene (``shift``), a padded chip (``pad``) or nothing (``drop``, the Clay release). Scenes
        smaller than a chip are padded whatever the mode."""
        rows = _starts(self.height, self.chip_size, edge)
        cols = _starts(self.width, self.chip_size, edge)
        size = self.chip_size
        return [
            Chip(r, c, min(size, self.height - r), min(size, self.width - c)) for r in rows for c in cols
        ]

    # --- reading ----------------------------------------------------------------------------------

    def read_chip(self, chip: Chip) -> tuple[np.ndarray, float]:
        """Raw float32 pixels ``[C, size, size]`` with nodata filled by band means and edges padded by
        replication, and the chip's nodata fraction (over its real pixels).

        SAR in dB becomes linear power and ``s2_offset`` is removed here, after nodata is found on
        the stored values and before the fill, so the engine always sees Clay v0's units.
        """
        window = Window(chip.col, chip.row, chip.width, chip.height)
        data = np.empty((len(self.sources), chip.height, chip.width), np.float32)
        for (path, warp), positions in self._reads:
            indexes = [self.sources[p].index for p in positions]
            try:
                if path in self._resample_from:
                    data[positions] = self.reader(path, False).read(
                        indexes, window=self._source_window(self._resample_from[path], window),
                        out_shape=(len(indexes), chip.height, chip.width), resampling=Resampling.bilinear,
                        out_dtype="float32")  # fmt: skip
                else:
                    data[positions] = self.reader(path, warp).read(indexes, window=window, out_dtype="float32")
            except RasterioError as exc:
                raise SceneError(f"{path}: read failed at row {chip.row}, col {chip.col} ({_first_line(exc)})") from None
        fraction, invalid = 0.0, None
        if self._may_hold_nodata(data):
            invalid = ~np.isfinite(data) | (data == self._nodata[:, None, None])
            invalid[: self._s2_count] |= data[: self._s2_count] == 0  # S2 L2A nodata
            fraction = float(invalid.any(axis=0).mean())
        if self._db:
            data[self._db] = np.power(10.0, data[self._db] / 10.0, dtype=np.float32)
        if self.s2_offset:
            data[: self._s2_count] -= self.s2_offset
        if fraction:
            data = np.where(invalid, self.fill_values[:, None, None], data)
        pad_rows, pad_cols = self.chip_size - chip.height, self.chip_size - chip.width
        if pad_rows or pad_cols:
            data = np.pad(data, ((0, 0), (0, pad_rows), (0, pad_cols)), mode="edge")
        return data, fraction

    def _source_window(self, source: rasterio.Affine, window: Window) -> Window:
        """The scene-grid window in a coarser file's pixel coordinates (fractional: GDAL resamples it)."""
        x, y = self.transform * (window.col_off, window.row_off)
        return Window((x - source.c) / source.a, (y - source.f) / source.e,
                      window.width * self.transform.a / source.a, window.height * self.transform.e / source.e)  # fmt: skip

    def _may_hold_nodata(self, data: np.ndarray) -> bool:
        """Cheap reductions first: on a 2-core machine every pass over a chip is taken from the engine."""
        if not np.isfinite(data.sum(dtype=np.float64)):
            return True
        for position, value in enumerate(self._nodata):
            if not np.isnan(value) and (data[position] == value).any():
                return True
        return bool(self._s2_count and data[: self._s2_count].min() <= 0)

    def reader(self, path: Path, warp: bool):
        """This thread's reader for a file: the file itself, or a bilinear WarpedVRT onto the grid."""
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = {}
        key = (path, warp)
        if key not in handles:
            dataset = rasterio.open(path)
            if warp:
                floating = np.dtype(dataset.dtypes[0]).kind == "f"
                handles[key] = WarpedVRT(
                    dataset, crs=self.crs, transform=self.transform, width=self.width, height=self.height,
                    resampling=Resampling.bilinear, src_nodata=dataset.nodata, nodata=np.nan if floating else 0,
                )  # fmt: skip
                handles[(path, "source")] = dataset
            else:
                handles[key] = dataset
        return handles[key]

    # --- geometry ---------------------------------------------------------------------------------

    def chip_footprint(self, chip: Chip) -> Polygon:
        """The chip's real pixels (padding excluded) in the scene CRS."""
        left, top = self.transform @ (chip.col, chip.row)
        right, bottom = self.transform @ (chip.col + chip.width, chip.row + chip.height)
        return box(min(left, right), min(top, bottom), max(left, right), max(top, bottom))

    def chip_polygon_wgs84(self, chip: Chip, points_per_edge: int = 8) -> Polygon:
        """Footprint reprojected to lon/lat (CRS84 axis order), edges densified so that it stays
        faithful where the projection bends straight lines."""
        footprint = self.chip_footprint(chip)
        edge = min(footprint.bounds[2] - footprint.bounds[0], footprint.bounds[3] - footprint.bounds[1])
        xs, ys = shapely.segmentize(footprint, edge / points_per_edge).exterior.xy
        lons, lats = self._to_wgs84.transform(np.asarray(xs), np.asarray(ys))
        return Polygon(zip(lons, lats))

    def to_wgs84(self, xs, ys):
        """Scene-CRS coordinates to (lon, lat) degrees."""
        return self._to_wgs84.transform(xs, ys)

    def chip_centre_lonlat(self, chip: Chip) -> tuple[float, float]:
        """Centre of the pixels fed to the engine (the full chip window), in degrees."""
        x, y = self.transform @ (chip.col + self.chip_size / 2, chip.row + self.chip_size / 2)
        lon, lat = self._to_wgs84.transform(x, y)
        return float(lon), float(lat)

    def close(self) -> None:
        """Close this thread's handles (worker threads' handles close when their threads end)."""
        for handle in getattr(self._local, "handles", {}).values():
            handle.close()
        self._local.handles = {}


def _starts(length: int, size: int, edge: str) -> list[int]:
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, size))
    remainder = length - (starts[-1] + size)
    if remainder:
        if edge == "shift":
            starts.append(length - size)
        elif edge == "pad":
            starts.append(starts[-1] + size)
    return starts


@dataclass(frozen=True)
class SceneFiles:
    """What the user pointed at as one scene: a multi-band file, or single-band files (per-band
    products, possibly at several resolutions and from several products) that belong together."""

    path: Path
    files: tuple[Path, ...]

    @property
    def name(self) -> str:
        return self.path.stem if self.path.is_file() else self.path.name


def open_scene(
    scene: SceneFiles | str | Path,
    engine: EngineMetadata,
    date: Date | None = None,
    sar_units: str = "auto",
    s2_offset: float = 0.0,
) -> Scene:
    """Validate a scene against an engine before any pixel is read.

    Bands are matched by name (band descriptions, or file names for single-band files); the grid is
    that of the finest file; other files are warped onto it while reading.
    """
    if not isinstance(scene, SceneFiles):
        path = Path(scene)
        if not path.exists():
            raise SceneError(f"{path}: no such file")
        scene = SceneFiles(path, (path,)) if path.is_file() else discover_scenes([path])[0]
    wanted = tuple(engine.bands)
    headers = [read_header(p) for p in scene.files]
    sources = band_sources(scene, headers, wanted)
    used = [h for h in headers if h.path in {path for path, _ in sources.values()}]
    reference = min(used, key=lambda h: abs(h.transform.a))  # the finest grid
    _check_overlap(reference, used)
    unit = "degrees" if reference.crs.is_geographic else (reference.crs.linear_units or "units")
    applied: dict[str, object] = {"grid": f"{reference.path.name} ({abs(reference.transform.a):g} {unit} pixels)"}
    readers = []
    for band in wanted:
        path, index = sources[band]
        header = next(h for h in headers if h.path == path)
        warp = (header.crs, header.transform, header.width, header.height) != (
            reference.crs, reference.transform, reference.width, reference.height)  # fmt: skip
        from_db = band in SAR_BANDS and _sar_is_db(header, index, band, sar_units)
        if warp:
            applied.setdefault("resampled_bilinear", []).append(band)
        if from_db:
            applied.setdefault("sar_db_to_linear", []).append(band)
        aligned = warp and _resamples_by_window(header, reference)
        readers.append(BandSource(path, index, band, warp, header.nodata, from_db, header.transform if aligned else None))
    if s2_offset:
        applied["s2_offset_removed"] = s2_offset
    when = date or _scene_date(scene, headers)
    applied["date_source"] = "--date" if date else "file tags"
    return Scene(
        path=scene.path, name=scene.name, crs=reference.crs, transform=reference.transform, width=reference.width,
        height=reference.height, date=when, sources=tuple(readers),
        fill_values=np.asarray(engine.band_means, dtype=np.float32), chip_size=engine.chip_size,
        s2_offset=s2_offset, applied=applied,
    )  # fmt: skip


@dataclass(frozen=True)
class Header:
    path: Path
    crs: rasterio.crs.CRS
    transform: rasterio.Affine
    width: int
    height: int
    count: int
    names: tuple[str | None, ...]  # canonical band name per band (None: not a Clay band)
    nodata: float | None
    units: tuple[str, ...]
    tags: dict[str, str]


def read_header(path: Path) -> Header:
    """What the runtime (and the training data) need to know of a file, without reading pixels."""
    if not path.is_file():
        raise SceneError(f"{path}: no such file")
    try:
        with rasterio.open(path) as src:
            dtypes = set(src.dtypes)
            if not dtypes <= set(SUPPORTED_DTYPES):
                raise SceneError(
                    f"{path}: unsupported data type {', '.join(sorted(dtypes))} (use {', '.join(SUPPORTED_DTYPES)})"
                )
            if src.crs is None:
                raise SceneError(f"{path}: no CRS; the runtime needs one to place chips on Earth")
            names = tuple(canonical_band_name(d) if d else None for d in src.descriptions)
            if src.count == 1 and names[0] is None:
                names = (canonical_band_name(path.stem),)  # per-band products name the band in the file name
            return Header(path, src.crs, src.transform, src.width, src.height, src.count, names, src.nodata,
                           tuple(u or "" for u in src.units), src.tags())  # fmt: skip
    except RasterioError as exc:
        raise SceneError(f"{path}: not a readable GeoTIFF ({_first_line(exc)})") from None


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
        hint = f"; the band groups it has: --groups {','.join(fitting)}" if fitting else ""
        raise SceneError(
            f"{scene.path}: lacks band(s) {', '.join(missing)} (the scene has {', '.join(found) or 'no Clay band'}){hint}"
        )
    return {b: found[b] for b in wanted}


def _resamples_by_window(header: Header, reference: Header) -> bool:
    """Whether a file can be read onto the reference grid by a resampled window instead of a warp."""
    src, ref = header.transform, reference.transform
    north_up = src.b == src.d == ref.b == ref.d == 0 and src.a > 0 > src.e and ref.a > 0 > ref.e
    if header.crs != reference.crs or not north_up or header.nodata is not None:
        return False
    tolerance = 1e-6 * abs(src.a)
    left, top = ref.c, ref.f
    right, bottom = ref * (reference.width, reference.height)
    src_right, src_bottom = src * (header.width, header.height)
    return (src.c - tolerance <= left and right <= src_right + tolerance
            and src.f + tolerance >= top and bottom >= src_bottom - tolerance)  # fmt: skip


def _check_overlap(reference: Header, headers: list[Header]) -> None:
    ref = box(*rasterio.transform.array_bounds(reference.height, reference.width, reference.transform))
    for header in headers:
        if header is reference:
            continue
        try:
            bounds = transform_bounds(header.crs, reference.crs,
                                      *rasterio.transform.array_bounds(header.height, header.width, header.transform))  # fmt: skip
        except Exception:  # noqa: BLE001 - PROJ errors have many types
            raise SceneError(f"{header.path} and {reference.path}: CRS {header.crs} cannot be matched to {reference.crs}") from None
        overlap = ref.intersection(box(bounds[2], bounds[3], bounds[0], bounds[1]) if bounds[0] > bounds[2] else box(*bounds))
        if overlap.area < 0.01 * ref.area:
            raise SceneError(f"{header.path} and {reference.path} do not overlap")


def _sar_is_db(header: Header, index: int, band: str, sar_units: str) -> bool:
    """Whether a SAR band holds dB: from ``--sar-units``, else the band's unit metadata, else refuse a
    band that is mostly negative (linear power is never negative)."""
    unit = header.units[index - 1].strip().lower()
    if sar_units == "db":
        return True
    if sar_units == "auto" and unit in ("db", "decibel", "decibels"):
        return True
    if sar_units == "auto" and unit in ("linear", "power", "1"):
        return False
    with rasterio.open(header.path) as src:
        sample = src.read(index, out_shape=(min(256, src.height), min(256, src.width)), out_dtype="float32")
    sample = sample[np.isfinite(sample)]
    if sample.size and (sample < 0).mean() > 0.5:
        raise SceneError(
            f"{header.path}: SAR band {band} is mostly negative, so it is in dB, not linear power; pass --sar-units db"
        )
    return False


def discover_scenes(paths) -> list[SceneFiles]:
    """Turn command-line paths into scenes.

    A multi-band GeoTIFF is a scene. Single-band files named as bands (``B02.tif``, ``B2.tif``,
    ``VV.tif``), given together on the command line or found under one folder (sub-folders
    included, e.g. an S2 and an S1 product side by side), form one scene. A folder of multi-band
    files gives one scene per file.
    """
    scenes: list[SceneFiles] = []
    loose: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in SCENE_SUFFIXES)
            if not found:
                raise SceneError(f"{path}: no GeoTIFF files in this folder")
            per_band = [p for p in found if _is_band_file(p)]
            if per_band:  # other single-band files (B01, B09, SCL...) are not Clay bands: ignored
                scenes.append(SceneFiles(path, tuple(per_band)))
            multi_band = [SceneFiles(p, (p,)) for p in found if _band_count(p) > 1]
            if not per_band and not multi_band:
                raise SceneError(f"{path}: no multi-band GeoTIFF and no file named as a Clay band (B02.tif, VV.tif...)")
            scenes.extend(multi_band)
        elif path.is_file() and _is_band_file(path):
            loose.append(path)
        else:
            scenes.append(SceneFiles(path, (path,)))
    if loose:
        scenes.append(SceneFiles(loose[0].parent, tuple(loose)))
    return scenes


def _band_count(path: Path) -> int:
    try:
        with rasterio.open(path) as src:
            return src.count
    except RasterioError:
        return 0


def _is_band_file(path: Path) -> bool:
    return canonical_band_name(path.stem) is not None and _band_count(path) == 1


def gsd_warning(scene: Scene) -> str | None:
    """A warning when pixels are far from Clay v0's 10 m, or the CRS is geographic."""
    size = abs(scene.transform.a)
    if scene.crs.is_geographic:
        _, lat = scene.chip_centre_lonlat(Chip(0, 0, 1, 1))
        metres = size * 111_320 * math.cos(math.radians(lat))
        return (f"{scene.path}: geographic CRS {scene.crs.to_string()}: pixels are about {metres:.1f} m here; "
                "Clay v0 was trained on 10 m UTM chips")  # fmt: skip
    metres = size * (scene.crs.linear_units_factor[1] if scene.crs.linear_units_factor else 1.0)
    if not 8.0 <= metres <= 12.5:
        return f"{scene.path}: {metres:g} m pixels; Clay v0 was trained on 10 m chips"
    return None


def _scene_date(scene: SceneFiles, headers: list[Header]) -> Date:
    for header in headers:
        text = date_tag(header.tags)
        if not text:
            continue
        try:
            return parse_date(text)
        except ValueError:
            raise SceneError(f"{header.path}: acquisition date {text!r} is not YYYY-MM-DD; pass --date YYYY-MM-DD") from None
    raise SceneError(f"{scene.path}: no acquisition date (no 'date' tag, no TIFF DateTime); pass --date YYYY-MM-DD")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
