"""Where chips and patches lie on Earth: footprints in lon/lat (OGC:CRS84 axis order) for any
affine geotransform, and the chip centres the engine is given.

A window's footprint is its outline in pixel space (corners, and points along its edges at every
patch boundary) pushed through the geotransform and reprojected, so north-up, south-up, flipped,
rotated and sheared grids are all placed right. Rings are counterclockwise (RFC 7946 §3.1.6,
GeoParquet's ``orientation``): the pixel outline is walked in whichever direction the geotransform
and the projection map to counterclockwise. Where a straight edge between two outline points in
lon/lat strays more than :data:`TOLERANCE` pixels from the pixels' true edge (near a pole, where a
320 m edge spans degrees of longitude), points are added along it until it does not, so a
footprint covers every pixel centre of its window and its patches' edges are its own.

The ring is followed with continuous longitudes (no jump at ±180°): a ring that goes once round a
pole is closed over it (along latitude ±90°), an edge through a pole becomes the stretch of
latitude ±90° between the meridians it arrives and leaves on, and the result is cut at ±180° into
a MultiPolygon (RFC 7946 §3.1.9) only where it has area on both sides; a part that merely touches
±180° (an edge on the meridian, a pole cap) is one Polygon. Reprojection uses one PROJ transformer
per thread and CRS.

Bounding boxes are the plain coordinate ranges of what is written: a geometry cut at ±180° has
``xmin`` −180 and ``xmax`` 180, never west > east, so that the ``xmin <= qxmax AND xmax >= qxmin``
test every GeoParquet reader applies to the covering column (GeoPandas ``bbox=``, DuckDB, pyarrow
statistics) keeps it. GeoParquet 1.1 points to RFC 7946 §5 for such boxes, whose west > east form
those readers drop (its covering section: "This technique [...] does not apply to geometries that
cross the antimeridian"); −180…180 is the coordinates' own range, a looser box that still covers.
"""

from __future__ import annotations

import threading

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


def to_crs(crs: CRS) -> Transformer:
    """This thread's transformer from lon/lat degrees to ``crs``."""
    cache = getattr(_local, "inverse", None)
    if cache is None:
        cache = _local.inverse = {}
    key = crs.to_wkt()
    if key not in cache:
        cache[key] = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    return cache[key]


def wrap(degrees):
    """Longitude differences into [-180, 180)."""
    return (np.asarray(degrees, np.float64) + 180.0) % 360.0 - 180.0


def counterclockwise(transform: Affine, crs: CRS, window: Window) -> bool:
    """Whether a counterclockwise ring in pixel space (column right, row down, taken as x and y)
    stays counterclockwise in lon/lat over ``window``: the sign of the geotransform's determinant
    times that of the projection's Jacobian, constant over any usable grid. Taken at whichever of
    the window's centre and the centres of its quarters is farthest from a pole (at a pole
    longitude is undefined, and a window holding one may have it at its centre)."""
    c0, r0, w, h = float(window.col_off), float(window.row_off), float(window.width), float(window.height)
    cols = c0 + w * np.array([0.5, 0.25, 0.75, 0.75, 0.25])
    rows = r0 + h * np.array([0.5, 0.25, 0.25, 0.75, 0.75])
    _, lats = lonlat(transform, crs, cols, rows)
    k = int(np.argmin(np.abs(lats)))
    col, row = cols[k], rows[k]
    step = 1e-3  # of a pixel: far below any curvature, far above float noise
    lons, lats = lonlat(transform, crs, [col, col + step, col], [row, row, row + step])
    dlon = wrap(lons[1:] - lons[0])  # across the antimeridian too
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


#: How far (in pixels) a straight lon/lat edge may stray from the pixels' true edge before points
#: are added along it: well inside the half pixel between an edge and the nearest pixel centre.
TOLERANCE = 0.05
#: Halvings of one outline segment at most (32 px / 2¹² < 0.01 px).
MAX_SPLITS = 12
#: A point within this many degrees of latitude ±90° is the pole (0.1 mm; PROJ gives 90 − 1e-12
#: for a point 0.1 µm off it), where longitude means nothing.
POLE_EPSILON = 1e-9


def trace(transform: Affine, crs: CRS, cols: np.ndarray, rows: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[np.ndarray, np.ndarray]]]:  # fmt: skip
    """Closed rings in pixel coordinates (``cols``, ``rows``: ``[R, N]``, each ring's last point its
    first) → their lon/lat rings: ``lons``, ``lats`` ``[R, N]`` as they are, and ``{ring: (lons,
    lats)}`` (1-D) for the rings that needed more points, added along every segment
    whose straight lon/lat chord strays more than :data:`TOLERANCE` px from it (the chord's
    midpoint taken back to pixel space, measured across the segment). Deterministic per segment, so
    an edge two windows share (a chip's and its patch's) is traced alike in both. Raises
    :class:`FootprintError` where PROJ cannot place a point."""
    cols, rows = np.atleast_2d(np.asarray(cols, np.float64)), np.atleast_2d(np.asarray(rows, np.float64))
    lons, lats = lonlat(transform, crs, cols, rows)
    count, length = cols.shape
    ring = np.repeat(np.arange(count), length - 1)
    position = np.tile(np.arange(length - 1, dtype=np.float64), count)  # a point's place along its ring
    # pending segments: pixel ends, lon/lat ends, the place of their start and their length in places
    seg = {
        "c0": cols[:, :-1].ravel(), "r0": rows[:, :-1].ravel(), "c1": cols[:, 1:].ravel(), "r1": rows[:, 1:].ravel(),
        "lon0": lons[:, :-1].ravel(), "lat0": lats[:, :-1].ravel(), "lon1": lons[:, 1:].ravel(), "lat1": lats[:, 1:].ravel(),
        "ring": ring, "at": position, "span": np.ones(len(ring)),
    }  # fmt: skip
    added: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # ring, place, lon, lat
    inverse = ~transform
    for _ in range(MAX_SPLITS):
        # an edge that reaches a pole is a meridian there: straight in lon/lat, nothing to add
        keep = (np.abs(seg["lat0"]) < 90.0 - POLE_EPSILON) & (np.abs(seg["lat1"]) < 90.0 - POLE_EPSILON)
        seg = {k: v[keep] for k, v in seg.items()}
        if not len(seg["ring"]):
            break
        mid_lon = seg["lon0"] + wrap(seg["lon1"] - seg["lon0"]) / 2
        mid_lat = (seg["lat0"] + seg["lat1"]) / 2
        with np.errstate(invalid="ignore"):
            xs, ys = to_crs(crs).transform(wrap(mid_lon), mid_lat)
            pc, pr = inverse @ (np.asarray(xs, np.float64), np.asarray(ys, np.float64))
            dc, dr = seg["c1"] - seg["c0"], seg["r1"] - seg["r0"]
            stray = np.abs(dc * (pr - seg["r0"]) - dr * (pc - seg["c0"])) / np.hypot(dc, dr)
        split = ~(stray <= TOLERANCE)  # NaN (no inverse there) splits too
        if not split.any():
            break
        seg = {k: v[split] for k, v in seg.items()}
        cm, rm = (seg["c0"] + seg["c1"]) / 2, (seg["r0"] + seg["r1"]) / 2
        lm, am = lonlat(transform, crs, cm, rm)
        half = seg["span"] / 2
        added.append((seg["ring"], seg["at"] + half, lm, am))
        first = {**seg, "c1": cm, "r1": rm, "lon1": lm, "lat1": am, "span": half}
        second = {**seg, "c0": cm, "r0": rm, "lon0": lm, "lat0": am, "at": seg["at"] + half, "span": half}
        seg = {k: np.concatenate([first[k], second[k]]) for k in seg}
    refined = {}
    if added:
        ring_ids, places, new_lons, new_lats = (np.concatenate(parts) for parts in zip(*added))
        for k in np.unique(ring_ids):
            mine = ring_ids == k
            order = np.argsort(np.concatenate([np.arange(length, dtype=np.float64), places[mine]]), kind="stable")
            refined[int(k)] = (np.concatenate([lons[k], new_lons[mine]])[order], np.concatenate([lats[k], new_lats[mine]])[order])
    return lons, lats, refined


def unwrapped_ring(lons: np.ndarray, lats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A closed counterclockwise lon/lat ring with continuous longitudes (each step the short way
    round, so never a jump at ±180°), as a closed ring of a plane polygon: a ring that goes once
    round a pole is closed over it along latitude ±90°, and a run of points at a pole becomes the
    stretch of latitude ±90° between the meridians the ring arrives and leaves on, eastward at the
    south pole and westward at the north (counterclockwise on the plane: the pole is the top or
    bottom edge). Longitudes may then lie anywhere in [-540, 540]."""
    lons, lats = np.asarray(lons, np.float64)[:-1], np.asarray(lats, np.float64)[:-1]
    pole = np.abs(lats) >= 90.0 - POLE_EPSILON
    if pole.all():
        raise FootprintError("a window whose outline is a single point (at a pole)")
    start = int(np.argmin(pole))  # from a point that has a longitude
    if start:
        lons, lats, pole = np.roll(lons, -start), np.roll(lats, -start), np.roll(pole, -start)
    xs: list[float] = [float(lons[0])]
    ys: list[float] = [float(lats[0])]
    meridians: list[float] = [float(lons[0])]  # each point's longitude as PROJ gave it
    last, n, k = lons[0], len(lons), 1
    while k <= n:  # k == n: back to the first point, which is not at a pole
        if pole[k % n]:
            j = k
            while j < n and pole[j]:
                j += 1
            north = lats[k] > 0
            leave = lons[j % n]  # the meridian the ring leaves the pole on
            turn = (last - leave) % 360.0 if north else (leave - last) % 360.0
            cap = 90.0 if north else -90.0
            xs += [xs[-1], xs[-1] - turn if north else xs[-1] + turn]
            ys += [cap, cap]
            meridians += [float(last), float(leave)]
            last, k = leave, j  # the point after the run continues from there (no step)
            continue
        xs.append(xs[-1] + float(wrap(lons[k % n] - last)))
        ys.append(float(lats[k % n]))
        meridians.append(float(lons[k % n]))
        last, k = lons[k % n], k + 1
    # whole turns added to PROJ's own longitudes, not a running sum: its rounding would leave the
    # ring open by 1e-13° (a self-intersection where it closes)
    x, y, meridians = np.asarray(xs), np.asarray(ys), np.asarray(meridians)
    x = meridians + 360.0 * np.round((x - meridians) / 360.0)
    winding = x[-1] - x[0]
    if abs(winding) > 180.0:  # once round a pole: close the ring over it
        north = winding > 0  # counterclockwise on the plane: eastward under the north pole
        cap = 90.0 if north else -90.0
        x = np.concatenate([x, [x[-1], x[0], x[0]]])
        y = np.concatenate([y, [cap, cap, y[0]]])
    return x, y


def ring_polygon(lons: np.ndarray, lats: np.ndarray) -> shapely.Polygon | shapely.MultiPolygon:
    """A counterclockwise closed ring in lon/lat as a valid polygon in [-180, 180]: as it is, or
    cut at ±180° into a MultiPolygon where it has area on both sides, or closed over the pole it
    goes round (a Polygon from −180° to 180°)."""
    lons, lats = np.asarray(lons, np.float64), np.asarray(lats, np.float64)
    if np.ptp(lons) <= 180.0 and (np.abs(lats) < 90.0 - POLE_EPSILON).all():
        # within 180° of longitude every step is the short way without a jump: no cut, no pole
        return shapely.Polygon(np.column_stack([lons, lats]))
    x, y = unwrapped_ring(lons, lats)
    # within a hundred-millionth of a degree (1 mm) of ±180°: on it (PROJ gives either sign there)
    seam = 180.0 + 360.0 * np.round((x - 180.0) / 360.0)
    x = np.where(np.abs(x - seam) < 1e-8, seam, x)
    plane = shapely.Polygon(np.column_stack([x, y]))
    if not plane.is_valid:
        plane = shapely.make_valid(plane)
    low, high = int(np.floor((x.min() + 180.0) / 360.0)), int(np.ceil((x.max() - 180.0) / 360.0))
    if low == 0 and high == 0 and plane.geom_type == "Polygon":
        return shapely.geometry.polygon.orient(plane, 1.0)
    pieces = []
    for k in range(low, high + 1):
        part = shapely.intersection(plane, shapely.box(360.0 * k - 180.0, -90.0, 360.0 * k + 180.0, 90.0))
        part = shapely.transform(part, lambda xy, k=k: xy - [360.0 * k, 0.0])
        pieces += [p for p in getattr(part, "geoms", [part]) if p.geom_type == "Polygon" and p.area > 0]
    if not pieces:
        raise FootprintError("a window without area in lon/lat")
    merged = shapely.union_all(pieces) if len(pieces) > 1 else pieces[0]  # a pole cap's two halves meet again
    parts = [shapely.geometry.polygon.orient(p, 1.0) for p in getattr(merged, "geoms", [merged]) if p.geom_type == "Polygon"]
    return parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)


def window_polygon(transform: Affine, crs: CRS, window: Window, spacing: float = 32) -> shapely.Polygon | shapely.MultiPolygon:
    """A window's footprint in lon/lat: its outline (a point every ``spacing`` pixels along the edges,
    and more where the projection bends them) through the geotransform and the projection,
    counterclockwise, cut at the antimeridian."""
    cols, rows = outline(window, spacing)
    if not counterclockwise(transform, crs, window):
        cols, rows = cols[::-1], rows[::-1]
    lons, lats, refined = trace(transform, crs, cols[None], rows[None])
    return ring_polygon(*refined.get(0, (lons[0], lats[0])))


def chip_polygon(transform: Affine, crs: CRS, chip: Chip, patch_size: int = 32) -> shapely.Polygon | shapely.MultiPolygon:
    """The chip's real pixels (padding excluded) in lon/lat, through every patch corner on its edge."""
    return window_polygon(transform, crs, chip.window, patch_size)


def chip_centre(transform: Affine, crs: CRS, chip: Chip, chip_size: int) -> tuple[float, float]:
    """Centre of the pixels fed to the engine (the full chip window, padding included), in degrees:
    the engine's ``lonlat`` input."""
    lons, lats = lonlat(transform, crs, [chip.col + chip_size / 2], [chip.row + chip_size / 2])
    return float(lons[0]), float(lats[0])


def patch_polygons(transform: Affine, crs: CRS, chip: Chip, cells: list[PatchCell], patch_size: int) -> np.ndarray:
    """One lon/lat polygon per patch cell, clipped to the chip's real pixels, as an array of shapely
    geometries: its four corners, and more points where the projection bends its edges (near a
    pole; the same as the chip's own edge where they share one), counterclockwise, cut at the
    antimeridian where a cell crosses it, closed over a pole it holds."""
    if not cells:
        return np.empty(0, dtype=object)
    rows = np.array([c.row for c in cells], dtype=np.float64)[:, None]
    cols = np.array([c.col for c in cells], dtype=np.float64)[:, None]
    bottom = np.minimum(rows + patch_size, chip.row + chip.height)
    right = np.minimum(cols + patch_size, chip.col + chip.width)
    corner_cols = np.concatenate([cols, right, right, cols, cols], axis=1)  # counterclockwise as x/y
    corner_rows = np.concatenate([rows, rows, bottom, bottom, rows], axis=1)
    if not counterclockwise(transform, crs, chip.window):
        corner_cols, corner_rows = corner_cols[:, ::-1], corner_rows[:, ::-1]
    lons, lats, refined = trace(transform, crs, corner_cols, corner_rows)
    # the usual case, at once: four corners, no pole, not across ±180°
    plain = (np.ptp(lons, axis=1) <= 180.0) & (np.abs(lats) < 90.0 - POLE_EPSILON).all(axis=1)
    plain[list(refined)] = False
    polygons = np.empty(len(lons), dtype=object)
    polygons[plain] = shapely.polygons(np.stack([lons[plain], lats[plain]], axis=-1))
    for k in np.flatnonzero(~plain):
        polygons[k] = ring_polygon(*refined.get(int(k), (lons[k], lats[k])))
    return polygons


def bounding_boxes(geometries) -> np.ndarray:
    """``[N, 4]`` (xmin, ymin, xmax, ymax) in degrees per geometry: its coordinates' ranges. A
    geometry cut at ±180° gets xmin −180 and xmax 180 (never west > east): the covering bbox the
    GeoParquet readers' ``xmin <= qxmax AND xmax >= qxmin`` test keeps for any query box at its
    latitudes (see the module docstring)."""
    geometries = np.asarray(geometries, dtype=object)
    return shapely.bounds(geometries).reshape(-1, 4)


def crosses_antimeridian(transform: Affine, crs: CRS, width: int, height: int, spacing: float = 32) -> bool:
    """Whether a grid's footprint is cut at the antimeridian or holds a pole: its chips and patches
    may then be MultiPolygons. The outline is followed every ``spacing`` pixels; a grid a chip wide
    whose every chip crosses is no different from a wider one."""
    footprint = window_polygon(transform, crs, Window(0, 0, width, height), spacing)
    return footprint.geom_type == "MultiPolygon" or np.ptp(shapely.get_coordinates(footprint)[:, 0]) >= 360.0
