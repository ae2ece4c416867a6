"""A GeoTIFF scene as the engine needs it: validated up front, cut into a chip grid, read in windows.

Nothing here reads a whole scene: each chip is one windowed read, so a scene of any size streams in
bounded memory. Every problem a user can fix is a :class:`SceneError` naming the file.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from datetime import date as Date
from pathlib import Path

import numpy as np
import rasterio
from pyproj import Transformer
from rasterio.errors import RasterioError
from rasterio.windows import Window
from shapely.geometry import Polygon, box

from clay.training.bands import BAND_NAMES, S2_BANDS, canonical_band_name

from .metadata import EngineMetadata

SUPPORTED_DTYPES = ("uint16", "int16", "float32")
EDGE_MODES = ("shift", "pad", "drop")


class SceneError(ValueError):
    """A scene the runtime cannot embed; the message names the file and the problem."""


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


@dataclass
class Scene:
    """An opened, validated scene. Reads are thread-safe (one dataset handle per thread)."""

    path: Path
    crs: rasterio.crs.CRS
    transform: rasterio.Affine
    width: int
    height: int
    date: Date
    band_indexes: tuple[int, ...]  # 1-based, in the engine's band order
    bands: tuple[str, ...]
    fill_values: np.ndarray  # raw-space band means, float32 [C]: nodata becomes 0 after normalisation
    nodata: float | None
    chip_size: int

    def __post_init__(self) -> None:
        self._local = threading.local()
        self._to_wgs84 = Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True)
        # Engine bands are in spec order, so the S2 bands (if any) are the first ones.
        self._s2_count = sum(b in S2_BANDS for b in self.bands)

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
        replication, and the chip's nodata fraction (over its real pixels)."""
        dataset = self._dataset()
        window = Window(chip.col, chip.row, chip.width, chip.height)
        try:
            data = dataset.read(list(self.band_indexes), window=window, out_dtype="float32")
        except RasterioError as exc:
            raise SceneError(f"{self.path}: read failed at row {chip.row}, col {chip.col} ({exc})") from None
        fraction = 0.0
        if self._may_hold_nodata(data):
            invalid = ~np.isfinite(data)
            if self.nodata is not None and not math.isnan(self.nodata):
                invalid |= data == self.nodata
            invalid[: self._s2_count] |= data[: self._s2_count] == 0  # S2 L2A nodata
            fraction = float(invalid.any(axis=0).mean())
            if fraction:
                data = np.where(invalid, self.fill_values[:, None, None], data)
        pad_rows, pad_cols = self.chip_size - chip.height, self.chip_size - chip.width
        if pad_rows or pad_cols:
            data = np.pad(data, ((0, 0), (0, pad_rows), (0, pad_cols)), mode="edge")
        return data, fraction

    def _may_hold_nodata(self, data: np.ndarray) -> bool:
        """Cheap reductions first: on a 2-core machine every pass over a chip is taken from the engine."""
        if not np.isfinite(data.sum(dtype=np.float64)):
            return True
        if self.nodata is not None and not math.isnan(self.nodata) and (data == self.nodata).any():
            return True
        return bool(self._s2_count and data[: self._s2_count].min() <= 0)

    def _dataset(self):
        dataset = getattr(self._local, "dataset", None)
        if dataset is None:
            dataset = self._local.dataset = rasterio.open(self.path)
        return dataset

    # --- geometry ---------------------------------------------------------------------------------

    def chip_footprint(self, chip: Chip) -> Polygon:
        """The chip's real pixels (padding excluded) in the scene CRS."""
        left, top = self.transform @ (chip.col, chip.row)
        right, bottom = self.transform @ (chip.col + chip.width, chip.row + chip.height)
        return box(min(left, right), min(top, bottom), max(left, right), max(top, bottom))

    def chip_polygon_wgs84(self, chip: Chip, points_per_edge: int = 8) -> Polygon:
        """Footprint reprojected to lon/lat (CRS84 axis order), edges densified so that it stays
        faithful where the projection bends straight lines."""
        ring = self.chip_footprint(chip).exterior
        dense = [ring.interpolate(i / (4 * points_per_edge), normalized=True) for i in range(4 * points_per_edge)]
        lons, lats = self._to_wgs84.transform([p.x for p in dense], [p.y for p in dense])
        return Polygon(zip(lons, lats))

    def chip_centre_lonlat(self, chip: Chip) -> tuple[float, float]:
        """Centre of the pixels fed to the engine (the full chip window), in degrees."""
        x, y = self.transform @ (chip.col + self.chip_size / 2, chip.row + self.chip_size / 2)
        lon, lat = self._to_wgs84.transform(x, y)
        return float(lon), float(lat)

    def close(self) -> None:
        dataset = getattr(self._local, "dataset", None)
        if dataset is not None:
            dataset.close()


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


def match_bands(path: Path, descriptions, count: int, wanted: tuple[str, ...]) -> tuple[int, ...]:
    """1-based indexes of ``wanted`` bands: by band description (``B2``/``b02``/``VV``...), or by
    position when the file has exactly the 13 Clay bands and no names."""
    named: dict[str, int] = {}
    for index, description in enumerate(descriptions, start=1):
        name = canonical_band_name(description) if description else None
        if name is None:
            continue
        if name in named:
            raise SceneError(f"{path}: two bands are named {name} (bands {named[name]} and {index})")
        named[name] = index
    if named:
        missing = [b for b in wanted if b not in named]
        if missing:
            raise SceneError(
                f"{path}: lacks band(s) {', '.join(missing)} (the file has {', '.join(named)})"
            )
        return tuple(named[b] for b in wanted)
    if count != len(BAND_NAMES):
        raise SceneError(
            f"{path}: {count} bands without band descriptions, expected {len(BAND_NAMES)} in Clay order "
            f"({BAND_NAMES[0]}…{BAND_NAMES[-1]}) or bands named by description"
        )
    return tuple(BAND_NAMES.index(b) + 1 for b in wanted)


def open_scene(path: str | Path, engine: EngineMetadata, date: Date | None = None) -> Scene:
    """Validate a scene against an engine before any pixel is read."""
    path = Path(path)
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
            indexes = match_bands(path, src.descriptions, src.count, tuple(engine.bands))
            tags = src.tags()
            when = date or _scene_date(path, tags)
            nodata = src.nodata
            crs, transform, width, height = src.crs, src.transform, src.width, src.height
    except RasterioError as exc:
        raise SceneError(f"{path}: not a readable GeoTIFF ({_first_line(exc)})") from None
    return Scene(
        path=path, crs=crs, transform=transform, width=width, height=height, date=when, band_indexes=indexes,
        bands=tuple(engine.bands), fill_values=np.asarray(engine.band_means, dtype=np.float32), nodata=nodata,
        chip_size=engine.chip_size,
    )  # fmt: skip


def _scene_date(path: Path, tags: dict[str, str]) -> Date:
    text = tags.get("date") or tags.get("DATE") or tags.get("TIFFTAG_DATETIME")
    if not text:
        raise SceneError(f"{path}: no acquisition date (no 'date' tag, no TIFF DateTime); pass --date YYYY-MM-DD")
    try:
        return parse_date(text)
    except ValueError:
        raise SceneError(f"{path}: acquisition date {text!r} is not YYYY-MM-DD; pass --date YYYY-MM-DD") from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
