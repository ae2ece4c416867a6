"""The PyTorch paths that run on a CUDA GPU: reduced-precision and compiled inference, training, and
clay-bench's GPU report. They need a GPU, so CI (which has none) skips them; they ran on the device
machine a session was lent (see the closing notes)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the GPU paths need the [training] extra")

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU visible to PyTorch: the GPU paths cannot run here"
)

from clay.benchmarks.backends import eager_backend, eager_backends  # noqa: E402
from clay.benchmarks.bench import cosine_rows  # noqa: E402
from clay.runtime.bands import GROUP_NAMES  # noqa: E402
from clay.training.model import ClayMAE, normalise  # noqa: E402
from clay.training.synthetic import make_chips  # noqa: E402

from .conftest import masked_training_steps, run_module, trained_like_tiny  # noqa: E402


def test_every_gpu_eager_backend_matches_cpu_fp32():
    """fp32, fp16/bf16 autocast and torch.compile on the GPU against Clay-style fp32 on the CPU."""
    model = trained_like_tiny()
    pixels, lonlat, date = make_chips(3, seed=11)
    reference = eager_backend(trained_like_tiny(), GROUP_NAMES, "explicit", None, "cpu")(pixels, lonlat, date)
    backends = eager_backends(model, GROUP_NAMES, "cuda")
    names = {b.name for b in backends}
    assert {"eager-fp16-sdpa", "compiled-fp16-sdpa", "eager-bf16-sdpa", "compiled-bf16-sdpa"} <= names
    for backend in backends:
        out = backend.run(pixels, lonlat, date)
        cosine = cosine_rows(out, reference).min()
        bound = 0.99999 if backend.precision == "fp32" else 0.999
        assert cosine >= bound, (backend.name, cosine)
        assert np.isfinite(out).all(), backend.name


def test_masked_training_on_the_gpu_in_bf16_falls_like_on_the_cpu():
    torch.manual_seed(0)
    model = ClayMAE("tiny").cuda()
    pixels, lonlat, date = make_chips(2, seed=3)
    cube = normalise(torch.from_numpy(pixels)).cuda()
    lonlat, date = torch.from_numpy(lonlat).cuda(), torch.from_numpy(date).cuda()
    generator = torch.Generator(device="cuda").manual_seed(0)
    losses, _, _ = masked_training_steps(model, cube, lonlat, date, generator, autocast="cuda")
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3]), losses


def test_clay_bench_on_a_gpu_writes_a_gpu_report_with_measured_peaks(tmp_path):
    result = run_module("clay.benchmarks.cli", "--size", "tiny", "--batch", "2", "--repeats", "2",
                        "--backends", "eager-fp32-sdpa,eager-fp16-sdpa,eager-bf16-sdpa", "--out", tmp_path, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench-tiny-gpu.json").read_text())
    gpu = report["machine"]["gpu"]
    assert gpu["name"] == torch.cuda.get_device_name(0) == report["machine"]["device"]
    assert gpu["fp16_gflops"] > gpu["fp32_gflops"] > 0
    rows = {r["backend"]: r for r in report["results"]}
    assert set(rows) == {"eager-fp32-clay", "eager-fp32-sdpa", "eager-fp16-sdpa", "eager-bf16-sdpa"}
    for row in rows.values():
        assert 0 < row["peak_fraction"] < 1, row
        assert row["cosine_min"] > 0.999, row
    assert (tmp_path / "bench-tiny-gpu.md").read_text().count(gpu["name"]) >= 1
