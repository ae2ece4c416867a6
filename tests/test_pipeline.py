"""The pipeline keeps an engine busy and its readers reading: counted with test engines, not timed.

``FixedTimeEngine`` is a test harness, not a backend: it sleeps a set time per batch and returns
vectors computed from the pixels it was given (so misrouted or reordered chips change the output).
The gated engines below check the pipeline's overlap by counting events (batches staged, reads
started), so that a loaded machine can slow these tests down but not fail them; the speeds are
benchmarks (``clay.benchmarks.throughput``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from clay.runtime.bands import S2_BANDS
from clay.runtime.demo import DEMO_ENGINE
from clay.runtime.engines.base import Engine, NULL_CLOCK
from clay.runtime.engines.choice import read_engine_metadata
from clay.runtime.options import RunOptions
from clay.runtime.outputs.publish import ScenePaths
from clay.runtime.pipeline import ChipReaders, SceneJob, run_scenes
from clay.runtime.scenes.scene import open_scene
from clay.training.synthetic import write_scene
from rasterio.windows import Window

BATCH = 2
PATIENCE = 60.0  # s a gated engine waits for the pipeline before counting a miss


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


def run(engine: Engine, paths: list[Path], out: Path, readers: int, batch: int = BATCH) -> list:
    """The results of a whole run (reads, engine, writes)."""
    options = RunOptions(readers=readers, batch_size=batch)
    jobs = [SceneJob(open_scene(p, engine.metadata, options), ScenePaths(out / f"{p.stem}.parquet")) for p in paths]
    out.mkdir(parents=True, exist_ok=True)
    pool = ChipReaders(readers)
    try:
        return list(run_scenes(engine, jobs, options, pool))
    finally:
        pool.close()


def rows(out: Path, names: list[str]) -> list[tuple]:
    table = [pq.read_table(out / f"{name}.parquet") for name in names]
    return [(r["row"], r["col"], tuple(r["embeddings"]), r["geometry"]) for t in table for r in t.to_pylist()]


class GatedEngine(FixedTimeEngine):
    """Counts instead of timing whether the pipeline works ahead of the engine. Each call but the
    last returns only once ``ready(call)`` holds (re-checked whenever the pipeline stages a batch or
    a chip read starts); a call that waits ``PATIENCE`` s in vain is a miss. A pipeline that holds
    work back until the engine returns cannot satisfy the gate and misses on any machine; one that
    works ahead satisfies it however loaded the machine is (it only takes longer)."""

    def __init__(self, total_chips: int, batch: int) -> None:
        super().__init__(seconds=0.0)
        self.total_chips, self.batch = total_chips, batch
        self.sizes: list[int] = []
        self.misses = 0
        self.staged = self.reads_started = 0
        self.changed = threading.Condition()

    def ready(self, call: int) -> bool:
        """Whether call number ``call`` (1-based) may return: the property under test."""
        raise NotImplementedError

    def note(self, counter: str) -> None:
        with self.changed:
            setattr(self, counter, getattr(self, counter) + 1)
            self.changed.notify_all()

    def stage(self, pixels, lonlat, date, clock=NULL_CLOCK):
        staged = super().stage(pixels, lonlat, date, clock)
        self.note("staged")
        return staged

    def _infer(self, pixels, lonlat, date):
        outputs = super()._infer(pixels, lonlat, date)
        self.sizes.append(len(pixels))
        call = len(self.sizes)
        # every call but the last; after one miss the verdict is in
        if call * self.batch < self.total_chips and not self.misses:
            with self.changed:
                if not self.changed.wait_for(lambda: self.ready(call), timeout=PATIENCE):
                    self.misses += 1
        return outputs


class NextBatchStagedEngine(GatedEngine):
    """Batch k returns once batch k + 1 has been staged: the engine is never left idle while a full
    batch waits to be handed over."""

    def ready(self, call: int) -> bool:
        return self.staged > call


class ReadAheadEngine(GatedEngine):
    """Batch k returns once every chip read of batch k + 2 has started: while the engine runs one
    batch and holds the next one staged, the readers read the one after, never waiting for it."""

    def ready(self, call: int) -> bool:
        return self.reads_started >= min(self.total_chips, (call + 2) * self.batch)


@pytest.fixture
def counted_reads(monkeypatch):
    """Make every chip read (``pipeline.read_chip``, in the reader threads) report its start to an
    engine, and count the reads in progress at once; yields a function that attaches the engine
    and returns the counts."""
    from clay.runtime import pipeline

    counts = {"active": 0, "most": 0}
    lock = threading.Lock()
    attached: list[GatedEngine] = []
    real = pipeline.read_chip

    def counted(*args, **kwargs):
        with lock:
            counts["active"] += 1
            counts["most"] = max(counts["most"], counts["active"])
        for engine in attached:
            engine.note("reads_started")
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                counts["active"] -= 1

    monkeypatch.setattr(pipeline, "read_chip", counted)

    def attach(engine: GatedEngine) -> dict:
        attached.append(engine)
        return counts

    return attach


def test_engine_is_handed_the_next_full_batch_while_it_runs_one_across_scene_boundaries(scenes, tmp_path):
    """Counted, not timed: every call but the last finds the next batch staged before it returns
    (no miss), and every batch is full across the scenes' boundaries (batch 3, 8 scenes of 2 chips)."""
    for name in ("long", "parts"):
        engine = NextBatchStagedEngine(total_chips=16, batch=3)
        results = run(engine, scenes[name], tmp_path / name, readers=2, batch=3)
        assert engine.misses == 0, f"{name}: the engine waited {PATIENCE} s for a batch held back"
        assert engine.sizes == [3, 3, 3, 3, 3, 1], engine.sizes  # full batches; the stream's remainder last
        assert [r.chips_done for r in results] == ([16] if name == "long" else [2] * 8)
        assert all(r.error is None for r in results)


def test_output_equals_the_serial_run_row_for_row(scenes, tmp_path):
    engine = FixedTimeEngine(seconds=0.0)
    names = [p.stem for p in scenes["parts"]]
    run(engine, scenes["parts"], tmp_path / "serial", readers=1, batch=1)
    run(engine, scenes["parts"], tmp_path / "pipelined", readers=2, batch=3)  # batches straddle scenes
    assert rows(tmp_path / "pipelined", names) == rows(tmp_path / "serial", names)
    long = rows(tmp_path / "serial", names)
    assert len(long) == 16 and len({r[2] for r in long}) == 16  # every chip its own vector


def test_readers_read_ahead_of_the_engine_in_parallel(scenes, counted_reads, tmp_path):
    """Counted, not timed: while the engine runs batch k, the reads of batch k + 2 start (no miss),
    and the reader threads read at once: a reader-bound run never waits on the engine and goes at
    the reads' speed. (The speeds themselves are benchmarks: ``python -m clay.benchmarks.throughput``.)"""
    readers, paths = 2, scenes["parts"] + scenes["long"]
    engine = ReadAheadEngine(total_chips=32, batch=BATCH)
    counts = counted_reads(engine)
    results = run(engine, paths, tmp_path / "out", readers)
    assert engine.misses == 0, f"an engine call waited {PATIENCE} s for the readers, which waited for it"
    assert counts["most"] == readers, counts  # the reads run in parallel
    assert engine.sizes == [BATCH] * 16 and sum(r.chips_done for r in results) == 32


def test_the_gates_miss_work_ahead_the_pipeline_does_not_do(scenes, counted_reads, monkeypatch, tmp_path):
    """The gates have teeth: one batch further ahead than the pipeline stages (two batches) or reads
    (three) can never be satisfied, and is a miss after the patience (shortened here)."""
    monkeypatch.setitem(globals(), "PATIENCE", 1.0)

    class TwoStagedEngine(NextBatchStagedEngine):
        def ready(self, call: int) -> bool:
            return self.staged > call + 1

    class FourReadEngine(ReadAheadEngine):
        def ready(self, call: int) -> bool:
            return self.reads_started >= min(self.total_chips, (call + 3) * self.batch)

    staged = TwoStagedEngine(total_chips=16, batch=3)
    run(staged, scenes["parts"], tmp_path / "staged", readers=2, batch=3)
    read = FourReadEngine(total_chips=16, batch=BATCH)
    counted_reads(read)
    run(read, scenes["parts"], tmp_path / "read", readers=2)
    assert staged.misses == 1 and read.misses == 1
