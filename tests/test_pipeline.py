"""The pipeline keeps an engine busy: measured with a test engine of fixed service time.

``FixedTimeEngine`` is a test harness, not a backend: it sleeps a set time per batch and returns
vectors computed from the pixels it was given (so misrouted or reordered chips change the output).
The rates below are measured in the test itself, on whatever machine runs it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from clay.runtime.bands import S2_BANDS
from clay.runtime.cli import DEMO_ENGINE
from clay.runtime.engine import Engine, read_engine_metadata
from clay.runtime.options import RunOptions
from clay.runtime.output import ScenePaths
from clay.runtime.pipeline import ChipReaders, SceneJob, run_scenes
from clay.runtime.reader import read_chip
from clay.runtime.scene import open_scene
from clay.training.synthetic import write_scene
from rasterio.windows import Window

BATCH = 2


class FixedTimeEngine(Engine):
    """Sleeps ``seconds`` per batch; the embedding of a chip is its per-band means over a sparse
    grid of pixels (then zeros, then its lon/lat)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.metadata = read_engine_metadata(DEMO_ENGINE)
        self.backend, self.path, self.preferred_batch, self.seconds = "test-harness", DEMO_ENGINE, BATCH, seconds
        self.calls = 0

    def _infer(self, pixels, lonlat, date):
        time.sleep(self.seconds)
        self.calls += 1
        vectors = np.zeros((len(pixels), self.metadata.dim), np.float32)
        # a sparse sample of each band: as telling as the full mean, without taking the readers' CPU
        vectors[:, : pixels.shape[1]] = pixels[:, :, ::16, ::16].mean(axis=(2, 3))
        vectors[:, -2:] = lonlat
        return {"embedding": vectors}

    def _release(self) -> None:
        pass


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict[str, list[Path]]:
    """One long uint16 S2 scene of 16 chips, and the same pixels cut into 8 scenes of 2 chips."""
    folder = tmp_path_factory.mktemp("scenes")
    long = write_scene(folder / "long.tif", 16 * 512, 512, seed=4, dtype="uint16", bands=S2_BANDS)
    parts = []
    with rasterio.open(long) as src:
        for k in range(8):
            window = Window(k * 1024, 0, 1024, 512)
            profile = src.profile | {"width": 1024, "transform": src.window_transform(window)}
            path = folder / f"part{k}.tif"
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(src.read(window=window))
                dst.descriptions = src.descriptions
                dst.update_tags(**src.tags())
            parts.append(path)
    return {"long": [long], "parts": parts}


def run(engine: Engine, paths: list[Path], out: Path, readers: int, batch: int = BATCH) -> tuple[float, list]:
    """Chips/s of a whole run (reads, engine, writes) and its results."""
    options = RunOptions(readers=readers, batch_size=batch)
    jobs = [SceneJob(open_scene(p, engine.metadata, options), ScenePaths(out / f"{p.stem}.parquet")) for p in paths]
    out.mkdir(parents=True, exist_ok=True)
    pool = ChipReaders(readers)
    try:
        start = time.perf_counter()
        results = list(run_scenes(engine, jobs, options, pool))
        seconds = time.perf_counter() - start
    finally:
        pool.close()
    return sum(r.chips_done for r in results) / seconds, results


def reader_rate(paths: list[Path], readers: int) -> float:
    """Chips/s of the reads alone, with as many threads and the same buffers as the pipeline."""
    metadata = read_engine_metadata(DEMO_ENGINE)
    chips = [(scene, chip) for scene in (open_scene(p, metadata) for p in paths) for chip in scene.chips()]
    from concurrent.futures import ThreadPoolExecutor

    buffers = np.empty((readers * 2, len(metadata.bands), 512, 512), np.float32)
    read_chip(*chips[0], buffers[0])  # open files and warm the caches like the pipeline's first batch
    start = time.perf_counter()
    with ThreadPoolExecutor(readers) as pool:
        list(pool.map(lambda k: read_chip(*chips[k], buffers[k % len(buffers)]), range(len(chips))))
    return len(chips) / (time.perf_counter() - start)


def rows(out: Path, names: list[str]) -> list[tuple]:
    table = [pq.read_table(out / f"{name}.parquet") for name in names]
    return [(r["row"], r["col"], tuple(r["embeddings"]), r["geometry"]) for t in table for r in t.to_pylist()]


@pytest.fixture(scope="module")
def warmed(scenes, tmp_path_factory) -> None:
    """One run first: the process's one-time set-ups (PROJ's database, GDAL drivers in new threads,
    pyarrow's numpy conversion, ~0.15 s together) are not part of a steady rate."""
    run(FixedTimeEngine(0.0), scenes["parts"][:1], tmp_path_factory.mktemp("warm-up"), readers=2)


def test_engine_bound_pipeline_keeps_the_engine_busy_across_scene_boundaries(scenes, warmed, tmp_path):
    readers = 2
    read = reader_rate(scenes["long"], readers)
    engine = FixedTimeEngine(seconds=max(0.15, 1.5 * BATCH / read))  # the engine is the slower stage
    engine_rate = BATCH / engine.seconds
    long_rate, _ = run(engine, scenes["long"], tmp_path / "long", readers)
    parts_rate, results = run(engine, scenes["parts"], tmp_path / "parts", readers)
    bound = min(engine_rate, read)
    print(f"engine {engine_rate:.2f}, reads {read:.2f}, one long scene {long_rate:.2f}, 8 scenes {parts_rate:.2f} chips/s")
    assert long_rate >= 0.9 * bound
    assert parts_rate >= 0.9 * bound  # scene boundaries cost the engine nothing
    assert [r.chips_done for r in results] == [2] * 8 and all(r.error is None for r in results)


def test_output_equals_the_serial_run_row_for_row(scenes, warmed, tmp_path):
    engine = FixedTimeEngine(seconds=0.0)
    names = [p.stem for p in scenes["parts"]]
    run(engine, scenes["parts"], tmp_path / "serial", readers=1, batch=1)
    run(engine, scenes["parts"], tmp_path / "pipelined", readers=2, batch=3)  # batches straddle scenes
    assert rows(tmp_path / "pipelined", names) == rows(tmp_path / "serial", names)
    long = rows(tmp_path / "serial", names)
    assert len(long) == 16 and len({r[2] for r in long}) == 16  # every chip its own vector


def test_reader_bound_pipeline_runs_at_the_reads_speed(scenes, warmed, tmp_path):
    """64 chips in 11 scenes (the 8 small ones, the long one and two copies of it), so that the
    run's fixed start and end (~15 ms) weigh little; best of three runs of each side, as runs of
    half a second on a shared 2-core machine are noisy."""
    copies = [Path(shutil.copy(scenes["long"][0], tmp_path / f"copy{k}.tif")) for k in range(2)]
    readers, paths = 2, scenes["parts"] + scenes["long"] + copies
    read = max(reader_rate(paths, readers) for _ in range(3))
    engine = FixedTimeEngine(seconds=0.2 * BATCH / read)  # the reads are the slower stage
    rate = max(run(engine, paths, tmp_path / f"out{k}", readers)[0] for k in range(3))
    print(f"reads {read:.2f}, engine {BATCH / engine.seconds:.2f}, pipeline {rate:.2f} chips/s")
    assert rate >= 0.9 * min(read, BATCH / engine.seconds)
