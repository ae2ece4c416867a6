"""The ONNX Runtime CUDA path: the fused float16 artifact against eager fp32, and the pipeline on a
GPU (device input slots, pinned ring, stage clock). It needs onnxruntime-gpu and a CUDA GPU, so CI
(which has neither) skips it; it ran on the device machine a session was lent (see the closing notes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="onnxruntime-gpu with a CUDA GPU is not available: the ONNX Runtime CUDA path cannot run here",
)
torch = pytest.importorskip("torch", reason="the artifacts under test are exported with the [export] extra")

from clay.runtime.bands import GROUP_NAMES  # noqa: E402
from clay.runtime.formats import format_named  # noqa: E402

from .conftest import trained_like_tiny  # noqa: E402


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> Path:
    from clay.export.artifacts import ExportOptions, export_artifacts

    out = tmp_path_factory.mktemp("cuda")
    export_artifacts(ExportOptions(out=out, checkpoint=checkpoint, groups=GROUP_NAMES, fp16=True, patch_embeddings=True),
                     log=lambda _: None)  # fmt: skip
    return out


def test_cuda_artifact_on_the_gpu_matches_eager_fp32(exported):
    from clay.export import check
    from clay.runtime.engines.choice import open_engine

    engine = open_engine(exported, "onnx-cuda")
    assert engine.path.name == format_named("cuda").file_name and engine.backend == "onnx-cuda"
    feeds = check.check_feeds(GROUP_NAMES, count=3)  # generated chips and the chip of plausible extremes
    expected = check.eager_reference(trained_like_tiny().encoder, GROUP_NAMES, feeds, True)
    for feed, want in zip(feeds, expected):
        got = engine.infer(feed["pixels"], feed["lonlat"], feed["date"])
        for name in ("embedding", "patch_embeddings"):
            assert np.isfinite(got[name]).all()
            assert check.cosine_per_chip(got[name], want[name]).min() >= 0.999, name


def test_pipeline_on_the_gpu_equals_the_engine_on_the_same_chips(exported, tmp_path):
    import pyarrow.parquet as pq
    from clay.runtime.engines.choice import open_engine
    from clay.runtime.options import RunOptions
    from clay.runtime.outputs.publish import ScenePaths
    from clay.runtime.pipeline import ChipReaders, SceneJob, run_scenes
    from clay.runtime.scenes.reader import read_chip
    from clay.runtime.scenes.scene import open_scene
    from clay.runtime.timing import StageClock
    from clay.training.synthetic import write_scene

    engine = open_engine(exported, "onnx-cuda")
    paths = [write_scene(tmp_path / f"s{k}.tif", 1536, 1024, seed=k) for k in range(2)]
    options = RunOptions(batch_size=4, readers=4)
    scenes = [open_scene(p, engine.metadata, options) for p in paths]
    jobs = [SceneJob(s, ScenePaths(tmp_path / f"{s.name}.parquet")) for s in scenes]
    clock, readers = StageClock(), ChipReaders(4)
    try:
        results = list(run_scenes(engine, jobs, options, readers, clock=clock))
    finally:
        readers.close()
    assert [r.chips_done for r in results] == [6, 6]
    assert {"read", "copy in", "compute", "copy out", "write"} <= set(clock.seconds)
    for scene in scenes:
        chips = scene.chips()
        pixels = np.stack([read_chip(scene, c)[0] for c in chips])
        lonlat = np.array([scene.chip_centre(c) for c in chips], np.float32)
        date = np.tile(np.array([scene.date.year, scene.date.month, scene.date.day], np.float32), (len(chips), 1))
        want = engine.infer(pixels, lonlat, date)["embedding"]
        got = np.stack(pq.read_table(tmp_path / f"{scene.name}.parquet")["embeddings"].to_numpy(zero_copy_only=False))
        cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cosine.min() >= 0.99999
