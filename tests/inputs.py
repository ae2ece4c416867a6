"""Scenes built the way users' files are built: a GeoTIFF writer with every knob the real-inputs
tests turn (geotransform, CRS, dtype, nodata, GDAL mask bands and alpha, scale/offset, units, tags
in any metadata domain, band descriptions), and the independent references they compare against
(footprints projected with pyproj alone, IoU across the antimeridian)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
import shapely
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
