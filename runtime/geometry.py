"""Where chips and patches lie on Earth: polygons and centres in lon/lat (OGC:CRS84 axis order).

Window corners come from rasterio (``windows.bounds``), so rotated or south-up grids are handled
where rasterio handles them. Reprojection uses one PROJ transformer per thread and CRS.
"""

from __future__ import annotations

import threading

import numpy as np
import shapely
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window, bounds

from .grid import Chip, PatchCell

_local = threading.local()


def to_wgs84(crs: CRS) -> Transformer:
    """This thread's transformer from ``crs`` to lon/lat degrees."""
    cache = getattr(_local, "transformers", None)
    if cache is None:
        cache = _local.transformers = {}
    key = crs.to_wkt()
    if key not in cache:
        cache[key] = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return cache[key]


def window_polygon(transform: Affine, crs: CRS, window: Window, points_per_edge: int = 8) -> shapely.Polygon:
    """A window's footprint in lon/lat, its edges densified so that it stays faithful where the
    projection bends straight lines."""
    left, bottom, right, top = bounds(window, transform)
    footprint = shapely.box(left, bottom, right, top)
    edge = min(right - left, top - bottom)
    xs, ys = shapely.segmentize(footprint, edge / points_per_edge).exterior.xy
    lons, lats = to_wgs84(crs).transform(np.asarray(xs), np.asarray(ys))
    return shapely.Polygon(zip(lons, lats))


def chip_polygon(transform: Affine, crs: CRS, chip: Chip) -> shapely.Polygon:
    """The chip's real pixels (padding excluded) in lon/lat."""
    return window_polygon(transform, crs, chip.window)


def chip_centre(transform: Affine, crs: CRS, chip: Chip, chip_size: int) -> tuple[float, float]:
    """Centre of the pixels fed to the engine (the full chip window, padding included), in degrees:
    the engine's ``lonlat`` input."""
    x, y = transform @ (chip.col + chip_size / 2, chip.row + chip_size / 2)
    lon, lat = to_wgs84(crs).transform(x, y)
    return float(lon), float(lat)


def patch_polygons(transform: Affine, crs: CRS, cells: list[PatchCell], patch_size: int) -> np.ndarray:
    """One lon/lat quadrilateral per patch cell (corners reprojected; a cell is 320 m, where a
    projection's curvature is far below a pixel), as an array of shapely polygons."""
    if not cells:
        return np.empty(0, dtype=object)
    rows = np.array([c.row for c in cells], dtype=np.float64)
    cols = np.array([c.col for c in cells], dtype=np.float64)
    corner_rows = rows[:, None] + patch_size * np.array([0, 0, 1, 1, 0])
    corner_cols = cols[:, None] + patch_size * np.array([0, 1, 1, 0, 0])
    xs, ys = transform @ (corner_cols, corner_rows)
    lons, lats = to_wgs84(crs).transform(xs, ys)
    return shapely.polygons(np.stack([lons, lats], axis=-1))
