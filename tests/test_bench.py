"""clay-bench on the tiny model: the JSON is complete and every ratio comes from measured timings."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch", reason="the benchmark needs the [bench] extra")
pytest.importorskip("matplotlib", reason="the benchmark needs the [bench] extra")

from clay.benchmarks.bench import BASELINE  # noqa: E402
from clay.benchmarks.flops import encoder_flops  # noqa: E402
from clay.training.model import get_size  # noqa: E402


def test_small_encoder_flops_match_the_published_shape():
    assert encoder_flops(get_size("small")) / 1e9 == pytest.approx(353, rel=0.01)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = subprocess.run(
        [sys.executable, "-m", "clay.benchmarks.cli", "--size", "tiny", "--batch", "1", "--batch", "2",
         "--repeats", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads((out / "bench-tiny.json").read_text())


def test_bench_writes_json_markdown_and_png(report):
    out, data = report
    assert (out / "bench-tiny.md").read_text().startswith("Clay `tiny` encoder")
    assert (out / "bench-tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for key in ("size", "flops_per_chip", "machine", "versions", "commit", "backends", "results", "end_to_end", "date"):
        assert key in data
    assert data["machine"]["cpu"]["fp32_gflops"] > 0
    names = {b["name"] for b in data["backends"]}
    assert {"eager-fp32-clay", "onnx-cpu-fp32", "onnx-cpu-int8", "tensorrt-fp16", "onnx-cuda-fp16"} <= names
    absent = {b["name"]: b["absent"] for b in data["backends"]}
    measured = {r["backend"] for r in data["results"]}
    assert all((absent[n] is None) == (n in measured) for n in names)  # absent ones are listed, not dropped
    assert data["end_to_end"] and 0 < data["end_to_end"][0]["percent"] <= 150


def test_every_ratio_is_computed_from_timings_of_the_same_rounds(report):
    _, data = report
    for batch in data["batches"]:
        rows = {r["backend"]: r for r in data["results"] if r["batch"] == batch}
        baseline = rows[BASELINE]
        for row in rows.values():
            seconds, base = np.array(row["seconds"]), np.array(baseline["seconds"])
            best = np.array(rows[row["best_eager"]]["seconds"])
            assert len(seconds) == data["repeats"]
            assert np.allclose(row["chips_per_s"], batch / seconds)
            assert np.allclose(row["ratio_vs_baseline"], base / seconds)
            assert np.allclose(row["ratio_vs_best_eager"], best / seconds)
            assert row["ratio_vs_baseline_median"] == pytest.approx(np.median(base / seconds))
            assert row["gflops"] == pytest.approx(np.median(batch / seconds) * data["flops_per_chip"] / 1e9)
            assert 0.9 <= row["cosine_min"] <= 1.0 + 1e-6
        assert baseline["ratio_vs_baseline"] == [1.0] * data["repeats"]
