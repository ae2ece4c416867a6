"""Reading one chip of a scene: a windowed read per file, invalid pixels found and filled, values
brought to Clay units, edges padded.

Nothing here reads a whole scene, so a scene of any size streams in bounded memory. Files stay
open between chips in a small per-thread cache (GDAL handles are not shared between threads),
closed when evicted or when their thread ends.
Reader threads run inside :func:`gdal_env`, GDAL's configuration for this workload.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from ..errors import SceneError, first_line
from .grid import Chip
from .remote import http_env, is_remote, remote_problem, stalled_hint
from .scene import ReadGroup, Scene, repeat_factor
from .units import Conversion, check_values

#: GDAL's block cache: each block is read once per chip, so the default (5 % of RAM) is pure
#: overhead here; bounding it kept a 10980² scene at 0.5 GB of RSS instead of 1.8 GB.
GDAL_CACHE_MB = 128
HANDLES_PER_THREAD = 32

#: Stored types whose every value float32 holds exactly: read straight into the chip's float32 buffer
#: (a nodata value compares equal after the conversion). int32 and float64 are not (2^24 and beyond).
EXACT_IN_FLOAT32 = frozenset({"uint8", "int8", "uint16", "int16", "float32"})

_local = threading.local()


def _forget_handles_in_child() -> None:
    """A forked child (a DataLoader worker, a multiprocessing pool) starts with no open file: the
    parent's GDAL handles share their file offsets with it, and GDAL seeks then reads, so two
    processes reading through one handle could read each other's bytes."""
    global _local
    _local = threading.local()


os.register_at_fork(after_in_child=_forget_handles_in_child)


def gdal_env(cache_mb: int = GDAL_CACHE_MB) -> rasterio.Env:
    """GDAL's configuration for chip reads; enter it in every thread that reads (rasterio's
    environment is per thread)."""
    return rasterio.Env(GDAL_CACHEMAX=cache_mb)


def read_chip(scene: Scene, chip: Chip, out: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Pixels in Clay units, float32 ``[C, size, size]`` (into ``out`` when given), with invalid
    pixels filled by band means and edges padded by replication, and the chip's nodata fraction: the
    share of its real pixels where any band is invalid.

    Invalid is decided on the stored values, per band: the file's nodata value, NaN, a GDAL mask band
    or alpha (``read_masks``), a stored 0 in a Sentinel-2 band (L2A NO_DATA), and whatever a warp
    could not fill. Then each band's conversion (:class:`clay.runtime.scenes.units.Conversion`: scale,
    offset, S2 offset, dB → linear) brings it to Clay units, and units nothing declared are checked
    on the valid values (:func:`clay.runtime.scenes.units.check_values`), before the fill. Read errors and
    values in the wrong units are a :class:`SceneError` naming the file (read errors: the window and
    GDAL's reason too; a remote file's, what its server says: its HTTP status, or that it stalled
    beyond ``scene.http_timeout``, see :mod:`clay.runtime.scenes.remote`).
    """
    if any(is_remote(group.path) for group in scene.read_groups):
        with http_env(scene.http_timeout):  # no remote read without a time limit, whichever thread reads
            return _read_chip(scene, chip, out)
    return _read_chip(scene, chip, out)


def _read_chip(scene: Scene, chip: Chip, out: np.ndarray | None) -> tuple[np.ndarray, float]:
    size = scene.chip_size
    if out is None:
        out = np.empty((len(scene.sources), size, size), np.float32)
    data = out[:, : chip.height, : chip.width]
    invalid: np.ndarray | None = None
    for group in scene.read_groups:  # on-grid groups first: their invalid pixels steer the resampled ones
        positions = _positions(group)
        try:
            if group.mode == "repeat":  # repeated straight into the chip: one pass, no intermediate
                values, mask = None, _read_repeated(scene, group, chip, data, positions)
            else:  # on-grid bands consecutive in the chip: read into it (GDAL converts on the way)
                target = data[positions] if group.mode == "direct" and isinstance(positions, slice) else None
                values, mask = _read_group(scene, group, chip, nodata_seen=invalid is not None, target=target)
        except RasterioError as exc:
            window = f"rows {chip.row}-{chip.row + chip.height}, cols {chip.col}-{chip.col + chip.width}"
            raise SceneError(f"{group.path}: read failed at {window} ({_read_failure(scene, group, exc)})") from None
        if mask is not None:
            if invalid is None:
                invalid = np.zeros(data.shape, bool)
            invalid[positions] = mask
        if values is not None:
            data[positions] = values
        _convert(scene, group, data)  # while the group's bands are still in the CPU's cache
    for k, source in enumerate(scene.sources):
        if source.check:  # undeclared units, a removed offset: confirmed on the values (one pass, no extra read)
            check_values(source.path, source.band, source.check, data[k], None if invalid is None else ~invalid[k])
    fraction = 0.0
    if invalid is not None:
        fraction = float(invalid.any(axis=0).mean())
        np.copyto(data, np.broadcast_to(scene.fill_values[:, None, None], data.shape), where=invalid)
    if chip.height < size:
        out[:, chip.height :, : chip.width] = out[:, chip.height - 1 : chip.height, : chip.width]
    if chip.width < size:
        out[:, :, chip.width :] = out[:, :, chip.width - 1 : chip.width]
    return out, fraction


def _read_failure(scene: Scene, group: ReadGroup, exc: RasterioError) -> str:
    """GDAL's reason; for a remote file, what its server says when asked again (GDAL's own words for
    a stalled or refused range read are only "TIFFReadEncodedTile() failed"), else that remote reads
    give up after ``http_timeout`` s without progress."""
    reason = first_line(exc)
    if not is_remote(group.path):
        return reason
    problem = remote_problem(group.path, scene.http_timeout)
    return f"{problem}; GDAL: {reason}" if problem else f"{reason}; {stalled_hint(scene.http_timeout)}"


def _convert(scene: Scene, group: ReadGroup, data: np.ndarray) -> None:
    """A group's stored values → Clay units, in place in the chip (invalid pixels too: they are
    filled after, so overflow there is of no consequence). Repeated bands were converted before
    their repetition (:func:`_read_repeated`: a ``k``²-th of the pixels, the same operations on
    each value)."""
    if group.mode != "repeat":
        for k in group.positions:
            convert_band(scene.sources[k].conversion, data[k])


def convert_band(conversion: Conversion, band: np.ndarray) -> None:
    """One band's float32 values → Clay units, in place (``gain``, ``bias``, then dB → linear)."""
    if conversion.identity:
        return
    with np.errstate(over="ignore", invalid="ignore"):
        if conversion.gain != 1.0:
            band *= np.float32(conversion.gain)
        if conversion.bias != 0.0:
            band += np.float32(conversion.bias)
        if conversion.from_db:
            np.power(np.float32(10.0), band / np.float32(10.0), out=band)


def _positions(group: ReadGroup) -> slice | list[int]:
    """A slice where the group's bands are consecutive (a view, no copy), else a list."""
    first, last = group.positions[0], group.positions[-1]
    if group.positions == tuple(range(first, last + 1)):
        return slice(first, last + 1)
    return list(group.positions)


def _read_group(scene: Scene, group: ReadGroup, chip: Chip, nodata_seen: bool = False,
                target: np.ndarray | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:  # fmt: skip
    """A group's values on the chip's window and, where any is invalid, the invalid mask (else ``None``).

    ``target``: the group's float32 view of the chip, for an on-grid group; where every band's stored
    type is exact in float32 (:data:`EXACT_IN_FLOAT32`) the values are read straight into it and
    ``None`` is returned in their place (no intermediate array, no numpy pass to convert them).

    A bilinear resampled window read blends nodata into its neighbours, so it is kept only where the
    chip shows no nodata: none in the on-grid bands read before it (``nodata_seen``; S2's 10 m and
    20 m bands share their nodata areas) and none in its own result (a nodata area two source pixels
    wide leaves its value there). Otherwise the chip is read through the warper, which leaves
    nodata out of the kernel. A nearest one blends nothing (every value is a stored one), so its
    invalid pixels are found on its values, as on-grid bands' are."""
    indexes = list(group.indexes)
    window = chip.window
    if group.mode == "resample":  # a coarser file in the same CRS: GDAL resamples the window
        nearest = scene.resampling == "nearest"
        if nodata_seen and not nearest:
            return _read_warped(scene, group, chip)
        handle = band_reader(scene, group, warp=False)
        source = group.source_transform
        x, y = scene.transform @ (window.col_off, window.row_off)
        fractional = Window((x - source.c) / source.a, (y - source.f) / source.e,
                            window.width * scene.transform.a / source.a, window.height * scene.transform.e / source.e)  # fmt: skip
        values = handle.read(indexes, window=fractional, out_shape=(len(indexes), chip.height, chip.width),
                             resampling=Resampling[scene.resampling], out_dtype=None if nearest else "float32")  # fmt: skip
        invalid = _invalid(scene, group, values)
        if nearest:
            return values, invalid
        if invalid is not None:
            return _read_warped(scene, group, chip)
        return values, None
    if group.mode == "warp":
        return _read_warped(scene, group, chip)
    handle = band_reader(scene, group, warp=False)
    stored = {handle.dtypes[i - 1] for i in indexes}
    written = target is not None and stored <= EXACT_IN_FLOAT32
    if written:  # every stored value kept exactly, so nodata and S2 zeros are found on the float32 ones
        values = handle.read(indexes, window=window, out=target)
    else:
        values = handle.read(indexes, window=window)  # the file's own dtype
    mask = _invalid(scene, group, values, floating=any(np.dtype(d).kind == "f" for d in stored))
    masked = [k for k, p in enumerate(group.positions) if scene.sources[p].mask == "mask"]
    if masked:
        unmasked = handle.read_masks([indexes[k] for k in masked], window=window) == 0
        if unmasked.any():
            mask = np.zeros(values.shape, bool) if mask is None else mask
            mask[masked] |= unmasked
    alpha = [k for k, p in enumerate(group.positions) if scene.sources[p].mask == "alpha"]
    if alpha:
        transparent = handle.read(scene.sources[group.positions[alpha[0]]].alpha, window=window) == 0
        if transparent.any():
            mask = np.zeros(values.shape, bool) if mask is None else mask
            mask[alpha] |= transparent
    return (None if written else values), mask


def _read_repeated(scene: Scene, group: ReadGroup, chip: Chip, data: np.ndarray,
                   positions: slice | list[int]) -> np.ndarray | None:  # fmt: skip
    """Nearest resampling from a grid ``k`` times coarser than the scene's and aligned with it
    (:func:`clay.runtime.scenes.scene.repeat_factor`): the source pixels under the chip read at their
    native resolution, their invalid pixels found there (a ``k``²-th of the work), then each pixel
    repeated ``k`` × ``k`` into ``data[positions]`` (``data``: the chip's float32 ``[C, chip.height,
    chip.width]``). Equal to GDAL's nearest resampled read of the same window (scene pixel ``i``
    takes source pixel ``(i + offset) // k``), at the cost of decoding the native window instead of
    resampling it. Returns the group's invalid mask ``[len(positions), chip.height, chip.width]``, or
    ``None`` where every pixel is valid."""
    source, grid = group.source_transform, scene.transform
    k = repeat_factor(source, grid)
    # The chip's first pixel counted from the source grid's origin, in scene pixels (whole numbers:
    # repeat_factor checked the offsets).
    col = chip.col + round((grid.c - source.c) / grid.a)
    row = chip.row + round((grid.f - source.f) / grid.e)
    first_col, first_row = col // k, row // k
    native = Window(first_col, first_row, (col + chip.width - 1) // k + 1 - first_col,
                    (row + chip.height - 1) // k + 1 - first_row)  # fmt: skip
    values = band_reader(scene, group, warp=False).read(list(group.indexes), window=native)
    invalid = _invalid(scene, group, values)  # on the stored values, before any conversion
    conversions = [scene.sources[p].conversion for p in group.positions]
    if not all(c.identity for c in conversions):  # converted before the repetition: a k²-th of the work
        values = values.astype(np.float32)
        for conversion, band in zip(conversions, values):
            convert_band(conversion, band)
    phase = (row - first_row * k, col - first_col * k)
    if isinstance(positions, slice):
        repeat_into(data[positions], values, k, *phase)
    else:
        for target, source in zip(positions, values):
            repeat_into(data[target][None], source[None], k, *phase)
    if invalid is None:
        return None
    mask = np.empty((len(group.positions), chip.height, chip.width), bool)
    repeat_into(mask, invalid, k, *phase)
    return mask


def repeat_into(target: np.ndarray, values: np.ndarray, k: int, row: int = 0, col: int = 0) -> None:
    """Nearest upsampling by an integer factor, written into ``target`` ``[C, H, W]`` (any dtype,
    any strides: a view of the chip): ``target[:, r, c] = values[:, (r + row) // k, (c + col) // k]``,
    where ``row``, ``col`` (``0 <= row, col < k``) is where the target's first pixel falls inside its
    source pixel. ``values`` ``[C, h, w]`` must reach ``(H - 1 + row) // k`` and ``(W - 1 + col) // k``.

    Two steps, each ``k`` strided assignments (the dtype converted on the way): the source rows
    widened to ``W`` columns in a scratch array ``k`` times smaller than the target (it stays in the
    CPU's cache), then each widened row written to its ``k`` target rows, whole rows at a time.
    Every target pixel is written once, by contiguous row copies: 0.39 ms for six 512² float32 bands
    (chips beyond the cache) on the 2-core EPYC of ``benchmarks/reads.py`` where one strided
    assignment per phase (``k``² of them, every cache line of the chip written ``k`` times) took 0.63."""
    height, width = target.shape[1:]
    needed = (height - 1 + row) // k + 1
    widened = np.empty((target.shape[0], needed, width), target.dtype)
    for j in range(min(k, width)):
        first_col, cols = (j + col) // k, len(range(j, width, k))
        widened[:, :, j::k] = values[:, :needed, first_col : first_col + cols]
    for i in range(min(k, height)):
        first_row, rows = (i + row) // k, len(range(i, height, k))
        target[:, i::k] = widened[:, first_row : first_row + rows]


def _read_warped(scene: Scene, group: ReadGroup, chip: Chip) -> tuple[np.ndarray, np.ndarray | None]:
    """Through a float32 WarpedVRT (resampled by the scene's method) whose nodata is NaN: what the
    source marks invalid (its nodata, mask band or alpha) is left out of the resampling, and what it
    cannot cover is NaN."""
    values = band_reader(scene, group, warp=True).read(list(group.indexes), window=chip.window)
    mask = np.isnan(values)
    return values, mask if mask.any() else None


def _invalid(scene: Scene, group: ReadGroup, raw: np.ndarray, floating: bool | None = None) -> np.ndarray | None:
    """Per band and pixel, whether a stored value is nodata, NaN or an S2 zero; ``None`` (cheap checks
    first) when none is. On a 2-core machine every pass over a chip is taken from the engine.
    ``floating``: whether the stored type is (integers read into float32 cannot be NaN: no pass
    looks for it); ``None``: ``raw``'s own type says."""
    sources = [scene.sources[p] for p in group.positions]
    nodata = [s.nodata if s.mask == "nodata" else None for s in sources]
    s2 = [k for k, s in enumerate(sources) if s.s2]
    floating = raw.dtype.kind == "f" if floating is None else floating
    # Floating values: each band's minimum (NaN where the band holds one: min propagates it; -inf)
    # and the group's maximum (+inf), two vectorised passes where a float64 sum took eight times as
    # long (13 float32 bands of 512²: 0.3 ms against 2.4 ms); the minima serve the S2 test too.
    lows = [raw[k].min() for k in range(len(raw))] if floating else None
    maybe = bool(floating and not (np.isfinite(lows).all() and np.isfinite(raw.max())))
    maybe = maybe or any(v is not None and not np.isnan(v) and (raw[k] == v).any() for k, v in enumerate(nodata))
    if s2 and not maybe:  # every band at once where all are S2 (a list index would copy the group first)
        low = (min(lows[k] for k in s2) if lows is not None
               else raw.min() if len(s2) == len(raw) else min(raw[k].min() for k in s2))  # fmt: skip
        maybe = bool(low <= 0)
    if not maybe:
        return None
    mask = ~np.isfinite(raw) if floating else np.zeros(raw.shape, bool)
    for k, value in enumerate(nodata):
        if value is not None and not np.isnan(value):
            mask[k] |= raw[k] == value
    for k in s2:
        mask[k] |= raw[k] == 0  # S2 L2A NO_DATA
    return mask if mask.any() else None


def band_reader(scene: Scene, group: ReadGroup, warp: bool):
    """This thread's open reader for a group's file: the file itself, or a float32 WarpedVRT onto the
    scene's grid (resampled by the scene's method) whose nodata is NaN. The warp's source nodata is
    the file's own, else 0 for a group of Sentinel-2 bands (their NO_DATA). The least recently used
    handles are closed beyond :data:`HANDLES_PER_THREAD`."""
    handles: OrderedDict | None = getattr(_local, "handles", None)
    if handles is None:
        handles = _local.handles = OrderedDict()
    src_nodata = _warp_source_nodata(scene, group) if warp else None
    src_alpha = next((scene.sources[p].alpha for p in group.positions if scene.sources[p].mask == "alpha"), None)
    key = (str(group.path),
           (scene.crs.to_wkt(), scene.transform, scene.width, scene.height, src_nodata, src_alpha, scene.resampling)
           if warp else None)  # fmt: skip
    if key in handles:
        handles.move_to_end(key)
        return handles[key][-1]
    dataset = rasterio.open(group.path)
    if warp:
        extra = {"src_alpha": src_alpha} if src_alpha else {}
        wrapped = _wrapped_source_crs(dataset)
        if wrapped is not None:
            extra["src_crs"] = wrapped
        vrt = WarpedVRT(dataset, crs=scene.crs, transform=scene.transform, width=scene.width, height=scene.height,
                        resampling=Resampling[scene.resampling], src_nodata=src_nodata, nodata=np.nan, dtype="float32",
                        **extra)  # fmt: skip
        handles[key] = (dataset, vrt)
    else:
        handles[key] = (dataset,)
    while len(handles) > HANDLES_PER_THREAD:
        _, evicted = handles.popitem(last=False)
        for handle in reversed(evicted):
            handle.close()
    return handles[key][-1]


def _wrapped_source_crs(dataset) -> CRS | None:
    """For a geographic grid that reaches past ±180° (179.8…180.2° E, as files cut there are
    written), its CRS with PROJ's ``+lon_wrap`` at the grid's centre longitude; else ``None``.
    GDAL's warper maps the scene's pixels to longitudes in [-180, 180], so without it no source
    pixel past 180° is found (and its source window is misjudged): they were read as nodata."""
    crs = dataset.crs
    if crs is None or not crs.is_geographic:
        return None
    xs, _ = dataset.transform @ (np.array([0, dataset.width, dataset.width, 0]), np.array([0, 0, dataset.height, dataset.height]))
    if xs.min() >= -180.0 and xs.max() <= 180.0:
        return None
    return CRS.from_proj4(f"{crs.to_proj4()} +lon_wrap={(xs.min() + xs.max()) / 2:.9f}")


def _warp_source_nodata(scene: Scene, group: ReadGroup) -> float | None:
    sources = [scene.sources[p] for p in group.positions]
    declared = next((s.nodata for s in sources if s.nodata is not None), None)
    if declared is not None:
        return declared
    return 0.0 if all(s.s2 for s in sources) else None
