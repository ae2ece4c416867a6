"""Patch embeddings as a raster: ``<scene>.patches.tif``, a Cloud-Optimized GeoTIFF that GDAL,
rasterio, rioxarray, QGIS and TorchGeo read like any other image: one pixel per patch-sized cell (the engine's patch size: 32 × 32 px for Clay v0, 8 × 8 for v1.5) of
the scene's grid, in the scene's CRS, one band per embedding dimension (``embedding_000``…), tiled,
ZSTD-compressed, with nearest-neighbour overviews. Which patch each cell holds, and the overviews'
cells: :mod:`clay.runtime.outputs.patch_grid`.

**Types** (``--raster-dtype``): ``float32``, the engine's values, nodata NaN; ``int8``, 8-bit codes
per band, linear (value = code × scale + offset, GDAL's band scale and offset, which GDAL, rasterio
and rioxarray apply), stored as **unsigned** bytes (GDAL ``Byte``): codes 1…255 span the values the
band was given, with scale = (max − min)/254 and offset = (max + min)/2 − 128 × scale (so code 128 is
the middle of the range), and code 0 is nodata. Not GDAL's ``Int8``: GDAL < 3.7 (Debian 12's 3.6,
the QGIS and servers built on it) has no such type and reads an ``Int8`` (or ``PIXELTYPE=SIGNEDBYTE``)
TIFF, which are the same bytes, as unsigned (−12 as 244) with its −128 nodata invalid, so as
data; ``Byte`` with scale and offset reads the same in every GDAL since 2.x (tested with Debian's
``gdal-bin`` 3.6 and rasterio's bundled 3.10). ``float16`` is refused: the pinned
rasterio wheels bundle GDAL 3.10, which has no Float16 type, and its half-float writer (``NBITS=16``
on Float32) took over 100 s for a 128 × 128-cell, 768-band raster whose float32 COG took 1.3 s
(:data:`clay.runtime.options.FLOAT16_REFUSED`).

**Streaming.** Cells go, as chips arrive, into one raw float32 file per level (full resolution and
each overview; pixel-interleaved, rows of cells written with ``pwrite``) under
``<name>.staging.partial/``: no array of the scene is held, only one chip's cells and a float32
distance per cell (0.5 MB for a 10980² tile). GDAL's per-band block cache makes many-band window
writes slow (31 ms per 16 × 16 × 768 chip into a tiled GTiff), hence raw files. On publish each level
is converted by rows of :data:`STRIPE` cells (int8: quantised) into an uncompressed pixel-interleaved
GeoTIFF, a VRT makes them one dataset with overviews and the provenance tags, and GDAL's COG driver
copies it to ``<name>.partial``, which is fsync'ed and renamed like the GeoParquet files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError
from rasterio.shutil import copy as gdal_copy
from rasterio.transform import Affine
from rasterio.windows import Window

from ..scenes.scene import Scene
from ..timing import NullClock, StageClock
from .overlap import GroundClaims
from .patch_grid import Claim, Level, block_size, overview_levels
from .publish import naming, partial_path, publish, staging_path

#: int8 rasters: the stored code of nodata, and of a band's mid-range value; codes span
#: ``CODE_MID - STEPS … CODE_MID + STEPS`` (1…255).
CODE_NODATA = 0
CODE_MID = 128
STEPS = 127
#: Rows of cells converted at a time on publish (a full-width stripe: 17 MB for 343 cells × 768 dims).
STRIPE = 16
#: Bytes written to a level GeoTIFF between two reopenings: closing flushes its blocks out of GDAL's
#: cache, so the conversion holds at most this much of them whatever the scene's size.
FLUSH_BYTES = 32 << 20
#: Lossless compression, with the predictor that suits the type (3: floating point, 2: differences
#: of integers), ZSTD level 1. On the demo scene's cells (float32 / int8 bytes): ZSTD 1 1 325 695 /
#: 399 461, ZSTD 9 1 289 009 / 398 783 at 1.9× / 1.1× the time, DEFLATE 6 1 320 453 / 405 887, no
#: predictor +3 % / +7 %; embeddings are close to incompressible (float32 raw: 1 183 744 + overviews).
COMPRESSION = {"float32": ("ZSTD", 3, 1), "int8": ("ZSTD", 2, 1)}
#: GDAL's compression threads for the COG copy: ALL_CPUS doubled the copy's peak memory on 2 cores
#: (+292 MB instead of +146 MB for a 343 × 320-cell, 768-band raster) and was no faster beside the engine.
COG_THREADS = 1
ITEM = {"float32": (np.float32, "Float32", "nan"), "int8": (np.uint8, "Byte", str(CODE_NODATA))}
#: What GDAL raises through rasterio when a write fails (CPLE_*: rasterio's wrappers of GDAL's errors).
GDAL_ERRORS = (OSError, RasterioError, CPLE_BaseError)


def band_names(dim: int) -> list[str]:
    return [f"embedding_{k:03d}" for k in range(dim)]


def tag_name(key: str) -> str:
    """A GeoParquet metadata key as a GDAL tag name (``clay:engine`` → ``CLAY_ENGINE``): GDAL splits
    ``name=value`` items at the first ``=`` or ``:``, so a tag name cannot hold a colon."""
    return key.replace(":", "_").upper()


def quantisation(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per band float32 ``(scale, middle)`` mapping ``[low, high]`` onto codes 1…255, ``middle`` at
    :data:`CODE_MID` (a band never given a value, or a constant one: scale 1). The band's GDAL offset
    is :func:`gdal_offset` of these."""
    low = np.where(np.isfinite(low), low, 0).astype(np.float64)
    high = np.where(np.isfinite(high), high, 0).astype(np.float64)
    scale = np.where(high > low, (high - low) / (2 * STEPS), 1.0)
    return scale.astype(np.float32), ((high + low) / 2).astype(np.float32)


def gdal_offset(scale: np.ndarray, middle: np.ndarray) -> np.ndarray:
    """The band offset GDAL stores (value = code × scale + offset), float64 ``[dim]``."""
    return middle.astype(np.float64) - CODE_MID * scale.astype(np.float64)


def quantise(values: np.ndarray, scale: np.ndarray, middle: np.ndarray) -> np.ndarray:
    """``values [..., dim]`` float32 (NaN: nodata) → uint8 codes 1…255, NaN → :data:`CODE_NODATA`."""
    steps = np.clip(np.rint((values - middle) / scale), -STEPS, STEPS)
    return np.where(np.isnan(values), CODE_NODATA, steps + CODE_MID).astype(np.uint8)


class RawLevel:
    """One level's cells as a raw float32 file, ``[height, width, dim]`` in C order, read and
    written by rows of cells (never mapped: its pages are the kernel's cache, not this process's)."""

    def __init__(self, path: Path, height: int, width: int, dim: int) -> None:
        self.path, self.height, self.width, self.dim = path, height, width, dim
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(self.fd, height * width * dim * 4)  # sparse: never-written cells read as zeros

    def _offset(self, row: int, col: int) -> int:
        return (row * self.width + col) * self.dim * 4

    def write(self, values: np.ndarray, row: int, col: int) -> None:
        """``values [h, w, dim]`` float32 at cell (``row``, ``col``)."""
        values = np.ascontiguousarray(values, np.float32)
        runs = [values] if values.shape[1] == self.width else values  # full rows: one contiguous run
        for k, run in enumerate(runs):
            view, offset = memoryview(run).cast("B"), self._offset(row + (0 if len(runs) == 1 else k), col)
            while view:
                done = os.pwrite(self.fd, view, offset)
                view, offset = view[done:], offset + done

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        out = np.empty((height, width, self.dim), np.float32)
        runs = [out] if width == self.width else out
        for k, run in enumerate(runs):
            view, offset = memoryview(run).cast("B"), self._offset(row + (0 if len(runs) == 1 else k), col)
            while view:
                done = os.preadv(self.fd, [view], offset)
                if not done:
                    raise OSError(f"{self.path}: short read")
                view, offset = view[done:], offset + done
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PatchRasterWriter:
    """Streams a scene's patch vectors into ``path`` (see the module docstring): :meth:`write` as
    chips arrive (grid order decides ties), :meth:`commit` to publish, :meth:`abort` to leave
    nothing. Write errors are an :class:`~clay.runtime.outputs.publish.OutputError` naming the file."""

    def __init__(self, path: Path, scene: Scene, dim: int, dtype: str, tags: dict[str, str], claims: GroundClaims,
                 clock: StageClock | None = None) -> None:  # fmt: skip
        if dtype not in ITEM:
            raise ValueError(f"patch rasters are written as {' or '.join(ITEM)}, not {dtype!r}")
        self.path, self.dim, self.dtype, self.crs = path, dim, dtype, scene.crs
        self.claims = claims  # which patch holds each cell: shared with the rows' overlap columns
        self.grid = claims.grid
        self.block = block_size(dim, np.dtype(ITEM[dtype][0]).itemsize, self.grid)
        self.levels = overview_levels(self.grid, self.block)
        self.tags = {tag_name(k): v for k, v in {**tags, "clay:raster": json.dumps(self.describe())}.items()}
        self.clock = clock or NullClock()
        self.low = np.full(dim, np.inf, np.float32)  # per band, over the values written (int8's range)
        self.high = np.full(dim, -np.inf, np.float32)
        self.staging = staging_path(path)
        self.raw: list[RawLevel] = []
        with self.clock.timed("patch raster"), naming(path, GDAL_ERRORS):
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging.mkdir(parents=True)
            sizes = [
                (self.grid.height, self.grid.width),
                *((len(lv.rows), len(lv.cols)) for lv in self.levels),
            ]
            for k, (height, width) in enumerate(sizes):
                self.raw.append(RawLevel(self.staging / f"level{k}.f32", height, width, dim))

    def describe(self) -> dict:
        """The layout, recorded in the ``CLAY_RASTER`` tag."""
        record = {"cell_px": self.grid.cell, "dtype": self.dtype, "nodata": ITEM[self.dtype][2],
                  "cells": "of the kept chips' patches containing a cell's centre, the one whose centre is nearest; "
                           "ties to the first in grid order; none: nodata",
                  "overviews": "nearest: cell (r, c) of level f is cell (min(r*f + f/2, H-1), min(c*f + f/2, W-1))"}  # fmt: skip
        if self.dtype == "int8":
            record["stored"] = "Byte (unsigned 8-bit, read alike by GDAL >= 2; not GDAL 3.7's Int8)"
            record["quantisation"] = (
                "per band: value = code * scale + offset (GDAL scale, offset); codes 1-255; 0: nodata"
            )
        return record

    def write(self, claimed: list[tuple[Claim, np.ndarray] | None], patch_means: np.ndarray) -> None:
        """``patch_means [B, 16, 16, dim]`` (the chips' patch vectors, group means) into the cells each
        chip won: ``claimed``, what :meth:`GroundClaims.claim` returned for each chip, in grid order."""
        with self.clock.timed("patch raster"), naming(self.path, GDAL_ERRORS):
            for won, patches in zip(claimed, patch_means):
                if won is not None:
                    self._write_claim(*won, patches)

    def _write_claim(self, claim: Claim, wins: np.ndarray, patches: np.ndarray) -> None:
        h, w = claim.distance2.shape
        r0, c0 = claim.row0, claim.col0
        if not wins.any():
            return
        values = patches[claim.i][:, claim.j].astype(np.float32)  # [h, w, dim]
        won = values[wins]
        np.minimum(self.low, won.min(axis=0), out=self.low)
        np.maximum(self.high, won.max(axis=0), out=self.high)
        if not wins.all():  # keep the cells a nearer patch already holds
            values = np.where(wins[..., None], values, self.raw[0].read(r0, c0, h, w))
        self.raw[0].write(values, r0, c0)
        for level, raw in zip(self.levels, self.raw[1:]):
            rows, cols = Level.within(level.rows, r0, r0 + h), Level.within(level.cols, c0, c0 + w)
            if rows.stop > rows.start and cols.stop > cols.start:
                raw.write(values[level.rows[rows] - r0][:, level.cols[cols] - c0], rows.start, cols.start)

    def commit(self) -> Path:
        """Convert the levels, build the COG, fsync, rename, fsync the folder; the staging is removed."""
        partial = partial_path(self.path)
        with self.clock.timed("patch raster"), naming(partial, GDAL_ERRORS):
            quant = quantisation(self.low, self.high) if self.dtype == "int8" else None
            written = self.claims.written
            masks = [written] + [written[np.ix_(lv.rows, lv.cols)] for lv in self.levels]
            factors = [1] + [level.factor for level in self.levels]
            names = [self._convert(raw, mask, quant, f) for raw, mask, f in zip(self.raw, masks, factors)]
            source = self.staging / "raster.vrt"
            source.write_text(self._vrt(names, quant), encoding="utf-8")
            compress, predictor, level = COMPRESSION[self.dtype]
            try:
                gdal_copy(str(source), str(partial), driver="COG", BLOCKSIZE=self.block, COMPRESS=compress,
                          LEVEL=level, PREDICTOR=predictor, OVERVIEWS="FORCE_USE_EXISTING", BIGTIFF="IF_SAFER",
                          NUM_THREADS=COG_THREADS)  # fmt: skip
            except GDAL_ERRORS:
                partial.unlink(missing_ok=True)
                raise
            publish(partial, self.path)
            shutil.rmtree(self.staging, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        """Drop everything written; nothing is left under any of the raster's names."""
        for raw in self.raw:
            raw.close()
        shutil.rmtree(self.staging, ignore_errors=True)
        partial_path(self.path).unlink(missing_ok=True)

    def _convert(self, raw: RawLevel, written: np.ndarray, quant, factor: int) -> str:
        """One level as an uncompressed pixel-interleaved GeoTIFF of the output type (nodata where
        no cell was written), by stripes; the raw file is removed. Returns its file name."""
        kind, _, nodata = ITEM[self.dtype]
        target = raw.path.with_suffix(".tif")
        profile = {"driver": "GTiff", "width": raw.width, "height": raw.height, "count": self.dim,
                   "dtype": np.dtype(kind).name, "nodata": float(nodata), "interleave": "pixel",
                   "blockysize": STRIPE, "bigtiff": "if_safer",
                   "transform": self.grid.transform @ Affine.scale(factor)}  # fmt: skip
        dataset, flushed = rasterio.open(target, "w", **profile), 0
        try:
            for row in range(0, raw.height, STRIPE):
                rows = min(STRIPE, raw.height - row)
                values = raw.read(row, 0, rows, raw.width)
                values[~written[row : row + rows]] = np.nan
                if quant is not None:
                    values = quantise(values, *quant)
                dataset.write(np.moveaxis(values, -1, 0), window=Window(0, row, raw.width, rows))
                flushed += values.nbytes
                if flushed >= FLUSH_BYTES:
                    dataset.close()
                    dataset, flushed = rasterio.open(target, "r+"), 0
        finally:
            dataset.close()
        raw.close()
        raw.path.unlink()
        return target.name

    def _vrt(self, names: list[str], quant) -> str:
        """The levels as one dataset: the full-resolution GeoTIFF's bands with the others as their
        overviews, the CRS, geotransform, band names, nodata, int8's scale and offset, and the tags."""
        _, kind, nodata = ITEM[self.dtype]
        bands = []
        for b, name in enumerate(band_names(self.dim)):
            scaling = ""
            if quant is not None:
                offset = gdal_offset(quant[0][b], quant[1][b])
                scaling = f"<Offset>{float(offset)!r}</Offset><Scale>{float(quant[0][b])!r}</Scale>"
            overviews = "".join(f'<Overview><SourceFilename relativeToVRT="1">{escape(n)}</SourceFilename>'
                                f"<SourceBand>{b + 1}</SourceBand></Overview>" for n in names[1:])  # fmt: skip
            bands.append(f'<VRTRasterBand dataType="{kind}" band="{b + 1}"><Description>{name}</Description>'
                         f"<NoDataValue>{nodata}</NoDataValue>{scaling}<SimpleSource>"
                         f'<SourceFilename relativeToVRT="1">{escape(names[0])}</SourceFilename><SourceBand>{b + 1}'
                         f"</SourceBand></SimpleSource>{overviews}</VRTRasterBand>")  # fmt: skip
        metadata = "".join(f"<MDI key={quoteattr(k)}>{escape(v)}</MDI>" for k, v in self.tags.items())
        geotransform = ", ".join(repr(float(v)) for v in self.grid.transform.to_gdal())
        return (f'<VRTDataset rasterXSize="{self.grid.width}" rasterYSize="{self.grid.height}">'
                f'<SRS>{escape(self.crs.to_wkt())}</SRS><GeoTransform>{geotransform}'
                f'</GeoTransform><Metadata>{metadata}</Metadata><Metadata domain="IMAGE_STRUCTURE"><MDI key="INTERLEAVE">'
                f'PIXEL</MDI></Metadata>{"".join(bands)}</VRTDataset>')  # fmt: skip
