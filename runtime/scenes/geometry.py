"""Where chips and patches lie on Earth: footprints in lon/lat (OGC:CRS84 axis order) for any
affine geotransform, and the chip centres the engine is given.

A window's footprint is its outline in pixel space (corners, and points along its edges at every
patch boundary) pushed through the geotransform and reprojected, so north-up, south-up, flipped,
rotated and sheared grids are all placed right. Rings are counterclockwise (RFC 7946 §3.1.6,
GeoParquet's ``orientation``): the pixel outline is walked in whichever direction the geotransform
and the projection map to counterclockwise. A footprint that crosses the antimeridian is cut there
into a MultiPolygon (RFC 7946 §3.1.9) and one that holds a pole runs along the antimeridian up to
it, both by the ``antimeridian`` package (the STAC ecosystem's implementation); its bbox then
follows RFC 7946 §5 as GeoParquet 1.1 asks: west > east. Reprojection uses one PROJ transformer per
thread and CRS.
"""

from __future__ import annotations

import threading

import antimeridian
import numpy as np
import shapely
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window

from .grid import Chip, PatchCell

_local = threading.local()


class FootprintError(ValueError):
    """A window whose corners do not map to lon/lat (outside the area its CRS is defined for)."""


def to_wgs84(crs: CRS) -> Transformer:
    """This thread's transformer from ``crs`` to lon/lat degrees."""
    cache = getattr(_local, "transformers", None)
    if cache is None:
        cache = _local.transformers = {}
    key = crs.to_wkt()
    if key not in cache:
        cache[key] = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return cache[key]


def lonlat(transform: Affine, crs: CRS, cols, rows) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (column, row; fractional, any shape) → lon/lat degrees, same shape.
    Raises :class:`FootprintError` where PROJ cannot place a point."""
    xs, ys = transform @ (np.asarray(cols, np.float64), np.asarray(rows, np.float64))
    lons, lats = to_wgs84(crs).transform(xs, ys)
    lons, lats = np.asarray(lons, np.float64), np.asarray(lats, np.float64)
    if not (np.isfinite(lons).all() and np.isfinite(lats).all()):
        raise FootprintError(f"pixels of this grid fall outside the area {crs.to_string()} is defined for")
    # A geographic grid past ±180° (lon 180.05) is given back as it is: wrap it like PROJ's output.
    outside = (lons < -180.0) | (lons > 180.0)
    if outside.any():
        lons = np.where(outside, (lons + 180.0) % 360.0 - 180.0, lons)
    return lons, lats


def counterclockwise(transform: Affine, crs: CRS, col: float, row: float) -> bool:
    """Whether a counterclockwise ring in pixel space (column right, row down, taken as x and y)
    stays counterclockwise in lon/lat near pixel (``col``, ``row``): the sign of the geotransform's
    determinant times that of the projection's Jacobian. Constant over any usable grid."""
    step = 1e-3  # of a pixel: far below any curvature, far above float noise
    lons, lats = lonlat(transform, crs, [col, col + step, col], [row, row, row + step])
    dlon = (lons[1:] - lons[0] + 180.0) % 360.0 - 180.0  # across the antimeridian too
    dlat = lats[1:] - lats[0]
    return bool(dlon[0] * dlat[1] - dlon[1] * dlat[0] > 0)


def outline(window: Window, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """A window's closed outline in pixel coordinates, counterclockwise taken as x/y: corners, and
    points along each edge every ``spacing`` pixels from its start (patch boundaries, so that a
    chip's edge runs through its patches' corners)."""
    c0, r0 = float(window.col_off), float(window.row_off)
    c1, r1 = c0 + window.width, r0 + window.height

    def along(start: float, stop: float) -> np.ndarray:
        inner = start + spacing * np.arange(1, int(np.ceil((stop - start) / spacing)))
        return np.concatenate([[start], inner])

    top, right = along(c0, c1), along(r0, r1)  # each edge from its start, its end left to the next edge
    bottom = np.concatenate([[c1], top[:0:-1]])  # back through the same columns
    left = np.concatenate([[r1], right[:0:-1]])
    cols = np.concatenate([top, np.full(len(right), c1), bottom, np.full(len(left), c0), [c0]])
    rows = np.concatenate([np.full(len(top), r0), right, np.full(len(bottom), r1), left, [r0]])
    return cols, rows


def ring_polygon(lons: np.ndarray, lats: np.ndarray) -> shapely.Polygon | shapely.MultiPolygon:
    """A counterclockwise closed ring in lon/lat as a valid polygon: as it is, or cut at the
    antimeridian (a MultiPolygon), or closed over the pole it holds."""
    if np.ptp(lons) <= 180.0:
        return shapely.Polygon(np.column_stack([lons, lats]))
    # The ring jumps across ±180°: cut it there (or close it over a pole). The winding is already
    # right (the package's own winding fix cannot tell a pole's cap from its complement).
    return antimeridian.fix_polygon(shapely.Polygon(np.column_stack([lons, lats])), fix_winding=False)


def window_polygon(transform: Affine, crs: CRS, window: Window, spacing: float = 32) -> shapely.Polygon | shapely.MultiPolygon:
    """A window's footprint in lon/lat: its outline (a point every ``spacing`` pixels along the edges)
    through the geotransform and the projection, counterclockwise, cut at the antimeridian."""
    cols, rows = outline(window, spacing)
    if not counterclockwise(transform, crs, window.col_off + window.width / 2, window.row_off + window.height / 2):
        cols, rows = cols[::-1], rows[::-1]
    return ring_polygon(*lonlat(transform, crs, cols, rows))


def chip_polygon(transform: Affine, crs: CRS, chip: Chip, patch_size: int = 32) -> shapely.Polygon | shapely.MultiPolygon:
    """The chip's real pixels (padding excluded) in lon/lat, through every patch corner on its edge."""
    return window_polygon(transform, crs, chip.window, patch_size)


def chip_centre(transform: Affine, crs: CRS, chip: Chip, chip_size: int) -> tuple[float, float]:
    """Centre of the pixels fed to the engine (the full chip window, padding included), in degrees:
    the engine's ``lonlat`` input."""
    lons, lats = lonlat(transform, crs, [chip.col + chip_size / 2], [chip.row + chip_size / 2])
    return float(lons[0]), float(lats[0])


def patch_polygons(transform: Affine, crs: CRS, chip: Chip, cells: list[PatchCell], patch_size: int) -> np.ndarray:
    """One lon/lat quadrilateral per patch cell, clipped to the chip's real pixels (a cell is 320 m,
    where a projection's curvature is far below a pixel), as an array of shapely geometries:
    counterclockwise polygons, cut at the antimeridian where a cell crosses it."""
    if not cells:
        return np.empty(0, dtype=object)
    rows = np.array([c.row for c in cells], dtype=np.float64)[:, None]
    cols = np.array([c.col for c in cells], dtype=np.float64)[:, None]
    bottom = np.minimum(rows + patch_size, chip.row + chip.height)
    right = np.minimum(cols + patch_size, chip.col + chip.width)
    corner_cols = np.concatenate([cols, right, right, cols, cols], axis=1)  # counterclockwise as x/y
    corner_rows = np.concatenate([rows, rows, bottom, bottom, rows], axis=1)
    if not counterclockwise(transform, crs, chip.col + chip.width / 2, chip.row + chip.height / 2):
        corner_cols, corner_rows = corner_cols[:, ::-1], corner_rows[:, ::-1]
    lons, lats = lonlat(transform, crs, corner_cols, corner_rows)
    polygons = shapely.polygons(np.stack([lons, lats], axis=-1))
    for k in np.flatnonzero(np.ptp(lons, axis=1) > 180.0):
        polygons[k] = ring_polygon(lons[k], lats[k])
    return polygons


def bounding_boxes(geometries) -> np.ndarray:
    """``[N, 4]`` (west, south, east, north) per geometry, RFC 7946 §5: for a geometry cut at the
    antimeridian, west is its eastern part's west edge and east its western part's east edge, so
    west > east (GeoParquet 1.1's rule for the bbox covering)."""
    geometries = np.asarray(geometries, dtype=object)
    boxes = shapely.bounds(geometries).reshape(-1, 4)
    for k in np.flatnonzero(shapely.get_type_id(geometries) == shapely.GeometryType.MULTIPOLYGON):
        boxes[k] = antimeridian.bbox(geometries[k])
    return boxes


def crosses_antimeridian(transform: Affine, crs: CRS, width: int, height: int, spacing: float = 32) -> bool:
    """Whether a grid's footprint is cut at the antimeridian or holds a pole: its chips and patches
    may then be MultiPolygons. The outline is followed every ``spacing`` pixels; a grid a chip wide
    whose every chip crosses is no different from a wider one."""
    footprint = window_polygon(transform, crs, Window(0, 0, width, height), spacing)
    return footprint.geom_type == "MultiPolygon" or np.ptp(shapely.get_coordinates(footprint)[:, 0]) >= 360.0
