"""Reading one chip of a scene: a windowed read per file, nodata found and filled, edges padded.

Nothing here reads a whole scene, so a scene of any size streams in bounded memory. Files stay
open between chips in a small per-thread cache (GDAL handles are not shared between threads),
closed when evicted or when their thread ends.
Reader threads run inside :func:`gdal_env`, GDAL's configuration for this workload.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from .files import SceneError, first_line
from .grid import Chip
from .scene import ReadGroup, Scene

#: GDAL's block cache: each block is read once per chip, so the default (5 % of RAM) is pure
#: overhead here; bounding it kept a 10980² scene at 0.5 GB of RSS instead of 1.8 GB.
GDAL_CACHE_MB = 128
HANDLES_PER_THREAD = 32

_local = threading.local()


def gdal_env(cache_mb: int = GDAL_CACHE_MB) -> rasterio.Env:
    """GDAL's configuration for chip reads; enter it in every thread that reads (rasterio's
    environment is per thread)."""
    return rasterio.Env(GDAL_CACHEMAX=cache_mb)


def read_chip(scene: Scene, chip: Chip, out: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Raw float32 pixels ``[C, size, size]`` (into ``out`` when given) with nodata filled by band
    means and edges padded by replication, and the chip's nodata fraction over its real pixels.

    Nodata is found on the stored values (the file's nodata value, NaN, S2 zeros); then SAR in dB
    becomes linear power and ``s2_offset`` is removed, before the fill, so the engine always sees
    Clay v0's units. Read errors are a :class:`SceneError` naming the file, the window and GDAL's
    reason.
    """
    size = scene.chip_size
    if out is None:
        out = np.empty((len(scene.sources), size, size), np.float32)
    data = out[:, : chip.height, : chip.width]
    invalid: np.ndarray | None = None
    for group in scene.read_groups:
        try:
            raw = _read_group(scene, group, chip)
        except RasterioError as exc:
            window = f"rows {chip.row}-{chip.row + chip.height}, cols {chip.col}-{chip.col + chip.width}"
            raise SceneError(f"{group.path}: read failed at {window} ({first_line(exc)})") from None
        positions = _positions(group)
        mask = _nodata_mask(scene, group, raw)
        if mask is not None:
            if invalid is None:
                invalid = np.zeros(data.shape, bool)
            invalid[positions] = mask
        data[positions] = raw
    db = [i for i, s in enumerate(scene.sources) if s.from_db]
    if db:
        data[db] = np.power(10.0, data[db] / 10.0, dtype=np.float32)
    if scene.s2_offset:
        data[: scene.s2_count] -= scene.s2_offset
    fraction = 0.0
    if invalid is not None:
        fraction = float(invalid.any(axis=0).mean())
        np.copyto(data, np.broadcast_to(scene.fill_values[:, None, None], data.shape), where=invalid)
    if chip.height < size:
        out[:, chip.height :, : chip.width] = out[:, chip.height - 1 : chip.height, : chip.width]
    if chip.width < size:
        out[:, :, chip.width :] = out[:, :, chip.width - 1 : chip.width]
    return out, fraction


def _positions(group: ReadGroup) -> slice | list[int]:
    """A slice where the group's bands are consecutive (a view, no copy), else a list."""
    first, last = group.positions[0], group.positions[-1]
    if group.positions == tuple(range(first, last + 1)):
        return slice(first, last + 1)
    return list(group.positions)


def _read_group(scene: Scene, group: ReadGroup, chip: Chip) -> np.ndarray:
    indexes = list(group.indexes)
    window = chip.window
    if group.mode == "resample":  # a coarser file in the same CRS: GDAL resamples the window bilinearly
        source = group.source_transform
        x, y = scene.transform @ (window.col_off, window.row_off)
        fractional = Window((x - source.c) / source.a, (y - source.f) / source.e,
                            window.width * scene.transform.a / source.a, window.height * scene.transform.e / source.e)  # fmt: skip
        return band_reader(scene, group.path, warp=False).read(
            indexes, window=fractional, out_shape=(len(indexes), chip.height, chip.width),
            resampling=Resampling.bilinear, out_dtype="float32",
        )  # fmt: skip
    if group.mode == "warp":
        return band_reader(scene, group.path, warp=True).read(indexes, window=window, out_dtype="float32")
    return band_reader(scene, group.path, warp=False).read(indexes, window=window)  # the file's own dtype


def _nodata_mask(scene: Scene, group: ReadGroup, raw: np.ndarray) -> np.ndarray | None:
    """Per band and pixel, whether the value is nodata; ``None`` (cheap checks first) when none is.
    On a 2-core machine every pass over a chip is taken from the engine."""
    nodata = [scene.sources[p].nodata for p in group.positions]
    s2 = [k for k, p in enumerate(group.positions) if p < scene.s2_count]
    floating = raw.dtype.kind == "f"
    maybe = floating and not np.isfinite(raw.sum(dtype=np.float64))
    maybe = maybe or any(v is not None and not np.isnan(v) and (raw[k] == v).any() for k, v in enumerate(nodata))
    maybe = maybe or bool(s2 and raw[s2].min() <= 0)
    if not maybe:
        return None
    mask = ~np.isfinite(raw) if floating else np.zeros(raw.shape, bool)
    for k, value in enumerate(nodata):
        if value is not None and not np.isnan(value):
            mask[k] |= raw[k] == value
    for k in s2:
        mask[k] |= raw[k] == 0  # S2 L2A nodata
    return mask


def band_reader(scene: Scene, path: Path, warp: bool):
    """This thread's open reader for a file: the file itself, or a bilinear WarpedVRT onto the
    scene's grid. The least recently used handles are closed beyond :data:`HANDLES_PER_THREAD`."""
    handles: OrderedDict | None = getattr(_local, "handles", None)
    if handles is None:
        handles = _local.handles = OrderedDict()
    key = (str(path), (scene.crs.to_wkt(), scene.transform, scene.width, scene.height) if warp else None)
    if key in handles:
        handles.move_to_end(key)
        return handles[key][-1]
    dataset = rasterio.open(path)
    if warp:
        floating = np.dtype(dataset.dtypes[0]).kind == "f"
        vrt = WarpedVRT(dataset, crs=scene.crs, transform=scene.transform, width=scene.width, height=scene.height,
                        resampling=Resampling.bilinear, src_nodata=dataset.nodata, nodata=np.nan if floating else 0)  # fmt: skip
        handles[key] = (dataset, vrt)
    else:
        handles[key] = (dataset,)
    while len(handles) > HANDLES_PER_THREAD:
        _, evicted = handles.popitem(last=False)
        for handle in reversed(evicted):
            handle.close()
    return handles[key][-1]
