"""Scenes built the way users' files are built: a GeoTIFF writer with every knob the real-inputs
tests turn (geotransform, CRS, dtype, nodata, GDAL mask bands and alpha, scale/offset, units, tags
in any metadata domain, band descriptions), and the independent references they compare against
(footprints projected with pyproj alone, IoU across the antimeridian, pixel centres a footprint must
hold and the pixels beyond it it must not, near a pole too)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import shapely.validation
from pyproj import Transformer
from rasterio.transform import Affine


def write_stack(
    path: Path,
    cube: np.ndarray,
    transform: Affine,
    crs: str,
    bands: Sequence[str | None],
    *,
    dtype: str | None = None,
    nodata: float | None = None,
    tags: dict[str, str] | None = None,
    imagery: dict[str, str] | None = None,
    scales: Sequence[float] | None = None,
    offsets: Sequence[float] | None = None,
    units: Sequence[str] | None = None,
    dataset_mask: np.ndarray | None = None,
    alpha: np.ndarray | None = None,
    tiled: bool = True,
) -> Path:
    """Write ``cube`` ``[C, H, W]`` as a GeoTIFF. ``bands`` become band descriptions (``None``: none);
    ``dataset_mask`` (bool, True = valid) an internal PER_DATASET mask band; ``alpha`` (bool) an
    extra alpha band; ``imagery`` tags go to GDAL's IMAGERY metadata domain."""
    count, height, width = cube.shape
    dtype = dtype or str(cube.dtype)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count + (alpha is not None),
               "dtype": dtype, "crs": crs, "transform": transform, "nodata": nodata, "compress": "deflate"}  # fmt: skip
    if tiled:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", **profile) as dst:
            if alpha is not None:  # before any pixel: GDAL writes it as the TIFF's ExtraSamples tag
                dst.colorinterp = [rasterio.enums.ColorInterp.gray] * count + [rasterio.enums.ColorInterp.alpha]
            dst.write(cube.astype(dtype), indexes=list(range(1, count + 1)))
            if alpha is not None:
                dst.write(np.where(alpha, np.iinfo(dtype).max if np.dtype(dtype).kind in "iu" else 1, 0).astype(dtype),
                          count + 1)  # fmt: skip
            for i, name in enumerate(bands, start=1):
                if name:
                    dst.set_band_description(i, name)
            if scales is not None:
                dst.scales = list(scales) + [1.0] * (alpha is not None)
            if offsets is not None:
                dst.offsets = list(offsets) + [0.0] * (alpha is not None)
            if units is not None:
                dst.units = list(units) + [""] * (alpha is not None)
            if tags:
                dst.update_tags(**tags)
            if imagery:
                dst.update_tags(ns="IMAGERY", **imagery)
            if dataset_mask is not None:
                dst.write_mask(np.where(dataset_mask, 255, 0).astype(np.uint8))
    return path


def projected_outline(transform: Affine, crs: str, col: float, row: float, width: float, height: float,
                      points: int = 50) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """A window's outline in lon/lat, computed here with pyproj and numpy only (not the runtime's
    geometry code): ``points`` per edge, corners pushed through the affine transform."""
    t = np.linspace(0, 1, points, endpoint=False)
    cols = np.concatenate([col + width * t, np.full(points, col + width), col + width * (1 - t), np.full(points, col)])
    rows = np.concatenate([np.full(points, row), row + height * t, np.full(points, row + height), row + height * (1 - t)])
    xs = transform.c + transform.a * cols + transform.b * rows
    ys = transform.f + transform.d * cols + transform.e * rows
    return Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xs, ys)


def unwrapped(geometry, centre_lon: float):
    """A lon/lat geometry with every longitude moved within 180° of ``centre_lon`` (so parts cut at
    the antimeridian join again), for areas and IoU near ±180°."""
    return shapely.transform(geometry, lambda xy: np.column_stack([(xy[:, 0] - centre_lon + 180) % 360 - 180 + centre_lon, xy[:, 1]]))


def iou(a, b) -> float:
    a, b = shapely.make_valid(a), shapely.make_valid(b)
    return float(a.intersection(b).area / a.union(b).area)


def reference_footprint(transform: Affine, crs: str, col: float, row: float, width: float, height: float):
    """The independent footprint of a window as one polygon in unwrapped longitudes around its centre."""
    lons, lats = projected_outline(transform, crs, col, row, width, height)
    centre = float(lons[0])
    polygon = shapely.Polygon(np.column_stack([(np.asarray(lons) - centre + 180) % 360 - 180 + centre, lats]))
    return polygon, centre


def pixel_centres(transform: Affine, crs: str, col: float, row: float, width: float, height: float,
                  step: int = 1, outside: bool = False) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Lon/lat (wrapped into [-180, 180)) of a window's pixel centres, computed here with pyproj
    alone: every ``step``-th one inside and every one along its edges; or, ``outside``, the
    centres of the ring of pixels just outside it (half a pixel beyond each edge)."""
    if outside:
        cs = np.arange(col - 0.5, col + width + 1)
        rs = np.arange(row - 0.5, row + height + 1)
        cols = np.concatenate([cs, cs, np.full(len(rs), col - 0.5), np.full(len(rs), col + width + 0.5)])
        rows = np.concatenate([np.full(len(cs), row - 0.5), np.full(len(cs), row + height + 0.5), rs, rs])
    else:
        cs, rs = np.arange(col + 0.5, col + width), np.arange(row + 0.5, row + height)
        grid_c, grid_r = np.meshgrid(cs[::step], rs[::step])
        cols = np.concatenate([grid_c.ravel(), cs, cs, np.full(len(rs), cs[0]), np.full(len(rs), cs[-1])])
        rows = np.concatenate([grid_r.ravel(), np.full(len(cs), rs[0]), np.full(len(cs), rs[-1]), rs, rs])
    xs = transform.c + transform.a * cols + transform.b * rows
    ys = transform.f + transform.d * cols + transform.e * rows
    lons, lats = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xs, ys)
    return (np.asarray(lons) + 180) % 360 - 180, np.asarray(lats)


def projected_area(geometry, crs: str) -> float:
    """A lon/lat (Multi)Polygon's area in ``crs`` units², its vertices projected with pyproj: for a
    polar stereographic CRS the meridians (±180° cuts) and the pole (a cap's latitude-90° edge)
    are straight lines and a point there, so this is the window's own area when it is right."""
    to_plane = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    return float(shapely.area(shapely.transform(geometry, lambda xy: np.column_stack(to_plane.transform(xy[:, 0], xy[:, 1])))))


def pole_pixel(transform: Affine, crs: str) -> tuple[float, float] | None:
    """Where the pole of a polar CRS falls in pixel coordinates (col, row), by pyproj and the
    inverse geotransform; None for a CRS without one in view."""
    lat = {"EPSG:3031": -90.0, "EPSG:3413": 90.0}.get(crs)
    if lat is None:
        return None
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(0.0, lat)
    return ~transform @ (x, y)


def check_window(geom, transform: Affine, crs: str, col: float, row: float, width: float, height: float, step: int):
    """What a footprint must be, from pyproj alone: valid, holding every pixel centre of its window,
    none of the pixels just outside it (so it does not wrap the long way round nor take in the
    meridians it does not cover), the window's area in the polar plane, and the pole when the
    window holds it."""
    assert geom.is_valid, shapely.validation.explain_validity(geom)
    assert geom.geom_type in ("Polygon", "MultiPolygon")
    lons, lats = pixel_centres(transform, crs, col, row, width, height, step)
    inside = shapely.intersects_xy(geom, lons, lats)
    assert inside.all(), f"{(~inside).sum()} of {inside.size} pixel centres outside, e.g. {lons[~inside][:3]}, {lats[~inside][:3]}"
    lons, lats = pixel_centres(transform, crs, col, row, width, height, outside=True)
    outside = shapely.contains_xy(geom, lons, lats)
    assert not outside.any(), f"{outside.sum()} pixel centres beyond the window inside, e.g. {lons[outside][:3]}, {lats[outside][:3]}"
    lon_w, lon_e = geom.bounds[0], geom.bounds[2]
    assert -180 <= lon_w <= lon_e <= 180
    if crs != "EPSG:4326":
        expected = abs(transform.determinant) * width * height
        assert projected_area(geom, crs) == pytest.approx(expected, rel=2e-3)
    pole = pole_pixel(transform, crs)
    if pole is not None and col + 0.01 < pole[0] < col + width - 0.01 and row + 0.01 < pole[1] < row + height - 0.01:
        near = 90 - 1e-8 if crs == "EPSG:3413" else -90 + 1e-8  # 1 mm from the pole, on every meridian
        assert shapely.contains_xy(geom, np.linspace(-179.9, 179.9, 37), np.full(37, near)).all()
        return True
    return False
