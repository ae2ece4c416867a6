"""A scene as the engine needs it: validated up front, on one pixel grid, described by plain data.

:func:`open_scene` checks a scene against an engine before any chip is read: bands matched by name,
the grid of the finest file, how each band is brought onto it, SAR units, the date. The result,
:class:`Scene`, holds no open file, so it can be handed to reader threads, processes or Ray tasks;
:mod:`clay.runtime.reader` reads its chips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date as Date
from functools import cached_property
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from shapely.geometry import box

from . import geometry
from .bands import S2_BANDS, SAR_BANDS
from .files import (
    Header,
    SceneError,
    SceneFiles,
    band_sources,
    discover_scenes,
    first_line,
    read_header,
    scene_date,
    scene_path,
)
from .grid import Chip, chip_grid
from .metadata import EngineMetadata
from .options import RunOptions


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


@dataclass(frozen=True)
class ReadGroup:
    """Bands read together: one file, one way of reading it, in one call."""

    path: Path
    positions: tuple[int, ...]  # where the bands go in the engine's band order
    indexes: tuple[int, ...]  # their 1-based band indexes in the file
    mode: str  # "direct" (on the scene grid), "resample" (coarser grid, window read) or "warp"
    source_transform: rasterio.Affine | None


@dataclass
class Scene:
    """An opened, validated scene on one pixel grid (the finest of its files). Plain data."""

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
    patch_size: int
    s2_offset: float = 0.0
    applied: dict = field(default_factory=dict)

    @cached_property
    def bands(self) -> tuple[str, ...]:
        return tuple(s.band for s in self.sources)

    @cached_property
    def s2_count(self) -> int:
        """Engine bands are in spec order, so the S2 bands (if any) are the first ones."""
        return sum(b in S2_BANDS for b in self.bands)

    @cached_property
    def read_groups(self) -> tuple[ReadGroup, ...]:
        groups: dict[tuple[Path, str], list[int]] = {}
        for position, source in enumerate(self.sources):
            mode = "resample" if source.source_transform is not None else "warp" if source.warp else "direct"
            groups.setdefault((source.path, mode), []).append(position)
        return tuple(
            ReadGroup(path, tuple(positions), tuple(self.sources[p].index for p in positions), mode,
                      self.sources[positions[0]].source_transform)  # fmt: skip
            for (path, mode), positions in groups.items()
        )

    def chips(self, edge: str = "shift") -> list[Chip]:
        """The chip grid, row-major (see :func:`clay.runtime.grid.chip_grid`)."""
        return chip_grid(self.height, self.width, self.chip_size, edge)

    def chip_polygon(self, chip: Chip):
        return geometry.chip_polygon(self.transform, self.crs, chip)

    def chip_centre(self, chip: Chip) -> tuple[float, float]:
        return geometry.chip_centre(self.transform, self.crs, chip, self.chip_size)


def open_scene(scene: SceneFiles | str | Path, engine: EngineMetadata, options: RunOptions | None = None) -> Scene:
    """Validate a scene against an engine before any pixel is read.

    Bands are matched by name (band descriptions, or file names for single-band files); the grid is
    that of the finest file; other files are resampled onto it while reading.
    """
    options = options or RunOptions()
    if not isinstance(scene, SceneFiles):
        path = scene_path(scene)
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
        from_db = band in SAR_BANDS and _sar_is_db(header, index, band, options.sar_units)
        if warp:
            applied.setdefault("resampled_bilinear", []).append(band)
        if from_db:
            applied.setdefault("sar_db_to_linear", []).append(band)
        aligned = warp and _resamples_by_window(header, reference)
        readers.append(BandSource(path, index, band, warp, header.nodata, from_db, header.transform if aligned else None))
    if options.s2_offset:
        applied["s2_offset_removed"] = options.s2_offset
    when = options.date or scene_date(scene, headers)
    applied["date_source"] = "--date" if options.date else "file tags"
    return Scene(
        path=scene.path, name=scene.name, crs=reference.crs, transform=reference.transform, width=reference.width,
        height=reference.height, date=when, sources=tuple(readers),
        fill_values=np.asarray(engine.band_means, dtype=np.float32), chip_size=engine.chip_size,
        patch_size=engine.patch_size, s2_offset=options.s2_offset, applied=applied,
    )  # fmt: skip


def _resamples_by_window(header: Header, reference: Header) -> bool:
    """Whether a file can be read onto the reference grid by a resampled window instead of a warp."""
    src, ref = header.transform, reference.transform
    north_up = src.b == src.d == ref.b == ref.d == 0 and src.a > 0 > src.e and ref.a > 0 > ref.e
    if header.crs != reference.crs or not north_up or header.nodata is not None:
        return False
    tolerance = 1e-6 * abs(src.a)
    left, top = ref.c, ref.f
    right, bottom = ref @ (reference.width, reference.height)
    src_right, src_bottom = src @ (header.width, header.height)
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
    """Whether a SAR band holds dB: from ``sar_units``, else the band's unit metadata, else refuse a
    band that is mostly negative (linear power is never negative)."""
    unit = header.units[index - 1].strip().lower()
    if sar_units == "db":
        return True
    if sar_units == "auto" and unit in ("db", "decibel", "decibels"):
        return True
    if sar_units == "auto" and unit in ("linear", "power", "1"):
        return False
    try:
        with rasterio.open(header.path) as src:
            sample = np.concatenate([src.read(index, window=w, out_dtype="float32").ravel() for w in _sample_windows(src)])
    except RasterioError as exc:
        raise SceneError(f"{header.path}: SAR band {band} could not be read to check its units ({first_line(exc)})") from None
    sample = sample[np.isfinite(sample)]
    if sample.size and (sample < 0).mean() > 0.5:
        raise SceneError(
            f"{header.path}: SAR band {band} is mostly negative, so it is in dB, not linear power; "
            "pass --sar-units db (RunOptions(sar_units='db') in Python)"
        )
    return False


def _sample_windows(src, size: int = 128) -> list[Window]:
    """Five small windows (centre and quadrant centres): a sample of a band without decoding all of
    it (a decimated read of a file without overviews decodes every block)."""
    h, w = min(size, src.height), min(size, src.width)
    spots = [(0.5, 0.5), (0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)]
    return [Window(int(fx * (src.width - w)), int(fy * (src.height - h)), w, h) for fy, fx in spots]


def gsd_warning(scene: Scene) -> str | None:
    """A warning when pixels are far from Clay v0's 10 m, or the CRS is geographic."""
    size = abs(scene.transform.a)
    if scene.crs.is_geographic:
        _, lat = geometry.chip_centre(scene.transform, scene.crs, Chip(0, 0, 1, 1), 0)
        metres = size * 111_320 * math.cos(math.radians(lat))
        return (f"{scene.path}: geographic CRS {scene.crs.to_string()}: pixels are about {metres:.1f} m here; "
                "Clay v0 was trained on 10 m UTM chips")  # fmt: skip
    metres = size * (scene.crs.linear_units_factor[1] if scene.crs.linear_units_factor else 1.0)
    if not 8.0 <= metres <= 12.5:
        return f"{scene.path}: {metres:g} m pixels; Clay v0 was trained on 10 m chips"
    return None
