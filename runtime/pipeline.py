"""Scene → batches → engine → GeoParquet, with chip reading overlapped with inference.

Worker threads read and prepare upcoming batches (rasterio and numpy release the GIL) while the
engine runs the current one; a bounded queue of futures keeps memory flat whatever the scene size.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import shapely

from .engine import Engine
from .output import AtomicParquetWriter, chip_columns, chip_schema, embeddings_column, file_metadata, patch_schema
from .scene import Chip, Scene, SceneError

GRID = 16
GDAL_CACHE_MB = 128


@dataclass
class RunOptions:
    batch_size: int | None = None
    edge: str = "shift"
    max_nodata: float = 0.5
    patch_embeddings: bool = False
    workers: int = 2
    prefetch: int = 3


@dataclass
class SceneResult:
    scene: Path
    output: Path
    patches: Path | None
    chips_done: int
    chips_skipped: int
    seconds: float
    backend: str

    @property
    def chips_per_second(self) -> float:
        return self.chips_done / self.seconds if self.seconds else 0.0


@dataclass
class PreparedBatch:
    chips: list[Chip]
    pixels: np.ndarray
    lonlat: np.ndarray
    date: np.ndarray
    fractions: list[float]
    skipped: int


def prepare_batch(scene: Scene, chips: Sequence[Chip], max_nodata: float) -> PreparedBatch:
    """Read the chips, drop those above ``max_nodata``, and stack the engine inputs."""
    kept, arrays, fractions = [], [], []
    for chip in chips:
        pixels, fraction = scene.read_chip(chip)
        if fraction > max_nodata:
            continue
        kept.append(chip)
        arrays.append(pixels)
        fractions.append(fraction)
    day = scene.date
    lonlat = np.array([scene.chip_centre_lonlat(c) for c in kept], dtype=np.float32).reshape(-1, 2)
    date = np.tile(np.array([day.year, day.month, day.day], dtype=np.float32), (len(kept), 1))
    pixels = np.stack(arrays) if arrays else np.empty((0,), np.float32)
    return PreparedBatch(kept, pixels, lonlat, date, fractions, len(chips) - len(kept))


def prepared_batches(scene: Scene, chips: Sequence[Chip], options: RunOptions, batch_size: int) -> Iterator[PreparedBatch]:
    """Batches in grid order, read ``options.prefetch`` batches ahead by ``options.workers`` threads."""
    groups = [chips[i : i + batch_size] for i in range(0, len(chips), batch_size)]
    # A small block cache: each block is read once, and GDAL's default (5 % of RAM) is pure overhead here.
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS", GDAL_CACHEMAX=GDAL_CACHE_MB), ThreadPoolExecutor(options.workers) as pool:
        pending: deque = deque()
        upcoming = iter(groups)
        for group in upcoming:
            pending.append(pool.submit(prepare_batch, scene, group, options.max_nodata))
            if len(pending) >= options.prefetch:
                break
        while pending:
            batch = pending.popleft().result()
            following = next(upcoming, None)
            if following is not None:
                pending.append(pool.submit(prepare_batch, scene, following, options.max_nodata))
            yield batch


def patch_rows(scene: Scene, chip: Chip, grid: np.ndarray) -> dict[str, list]:
    """One row per 32-px patch of a chip (group mean of its tokens); cells in padding are left out."""
    size = scene.chip_size // GRID
    rows, cols, polygons, vectors = [], [], [], []
    corners_x = chip.col + size * np.arange(GRID + 1)
    corners_y = chip.row + size * np.arange(GRID + 1)
    xs, ys = np.meshgrid(corners_x, corners_y)
    wx, wy = scene.transform @ (xs, ys)
    lon, lat = scene.to_wgs84(wx, wy)
    mean = grid.mean(axis=0)  # [16, 16, dim]
    for i in range(GRID):
        for j in range(GRID):
            if size * i >= chip.height or size * j >= chip.width:
                continue
            ring = [(lon[i, j], lat[i, j]), (lon[i, j + 1], lat[i, j + 1]), (lon[i + 1, j + 1], lat[i + 1, j + 1]),
                    (lon[i + 1, j], lat[i + 1, j])]  # fmt: skip
            polygons.append(shapely.Polygon(ring))
            rows.append(chip.row + size * i)
            cols.append(chip.col + size * j)
            vectors.append(mean[i, j])
    return {"rows": rows, "cols": cols, "polygons": polygons, "vectors": vectors}


def embed_scene(
    engine: Engine,
    scene: Scene,
    output: Path,
    options: RunOptions,
    progress: Callable[[int, int], None] | None = None,
    applied: dict[str, str] | None = None,
) -> SceneResult:
    """Embed every chip of ``scene`` into ``output`` (GeoParquet); per-patch rows into
    ``<output stem>.patches.parquet`` when asked. Nothing is left under a final name on failure."""
    meta = engine.metadata
    if options.patch_embeddings and not meta.has_patch_embeddings:
        raise SceneError(f"{scene.path}: --patch-embeddings needs an engine exported with --patch-embeddings")
    chips = scene.chips(options.edge)
    if not chips:
        raise SceneError(f"{scene.path}: no chips with --edge {options.edge}")
    batch_size = options.batch_size or engine.preferred_batch
    extra = file_metadata(meta, scene.crs.to_string(), {**scene.applied, **(applied or {})})
    source = str(scene.path.resolve())
    writer = AtomicParquetWriter(output, chip_schema(meta.dim, extra))
    patches_path = output.with_name(output.name.removesuffix(".parquet") + ".patches.parquet")
    patch_writer = AtomicParquetWriter(patches_path, patch_schema(meta.dim, extra)) if options.patch_embeddings else None
    start, done, skipped = time.perf_counter(), 0, 0
    try:
        for batch in prepared_batches(scene, chips, options, batch_size):
            skipped += batch.skipped
            if batch.chips:
                outputs = engine.infer(batch.pixels, batch.lonlat, batch.date)
                polygons = [scene.chip_polygon_wgs84(c) for c in batch.chips]
                writer.write(chip_columns(source, scene.date, outputs["embedding"], polygons,
                                          [c.row for c in batch.chips], [c.col for c in batch.chips], batch.fractions))  # fmt: skip
                if patch_writer is not None:
                    _write_patches(patch_writer, scene, source, batch.chips, outputs["patch_embeddings"])
                done += len(batch.chips)
            if progress:
                progress(len(batch.chips) + batch.skipped, done)
        if done == 0:
            raise SceneError(f"{scene.path}: every chip has more than {options.max_nodata:.0%} nodata; nothing to embed")
        seconds = time.perf_counter() - start
        writer.commit()
        if patch_writer is not None:
            patch_writer.commit()
    except BaseException:
        writer.abort()
        if patch_writer is not None:
            patch_writer.abort()
        raise
    finally:
        scene.close()
    return SceneResult(scene.path, output, patches_path if patch_writer else None, done, skipped, seconds, engine.backend)


def _write_patches(writer: AtomicParquetWriter, scene: Scene, source: str, chips: list[Chip], grids: np.ndarray) -> None:
    for chip, grid in zip(chips, grids):
        cells = patch_rows(scene, chip, grid)
        count = len(cells["rows"])
        writer.write({
            "source_url": [source] * count, "date": [scene.date] * count,
            "embeddings": embeddings_column(np.array(cells["vectors"])),
            "geometry": shapely.to_wkb(np.array(cells["polygons"], dtype=object)).tolist(),
            "row": cells["rows"], "col": cells["cols"], "chip_row": [chip.row] * count, "chip_col": [chip.col] * count,
        })  # fmt: skip
