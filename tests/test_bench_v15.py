"""clay-bench --model clay-v1.5 on the tiny encoder: FLOPs from the architecture (checked against
PyTorch's own FLOP counter), and a short run whose km²/s follow from its chips/s."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch", reason="the benchmark needs the [bench] extra")
pytest.importorskip("matplotlib", reason="the benchmark needs the [bench] extra")

from clay.benchmarks.v15 import encoder_flops_v15  # noqa: E402
from clay.training.model_v15 import random_encoder_v15  # noqa: E402

from .conftest import run_module  # noqa: E402


@pytest.mark.parametrize(("size", "chip"), [("tiny", 64), ("small", 32)])
def test_v15_flops_match_pytorchs_flop_counter(size, chip):
    from torch.utils.flop_counter import FlopCounterMode

    from clay.training.model_v15 import set_attention

    encoder = random_encoder_v15(size)
    set_attention(encoder, "explicit")  # the counter sees matmuls, not the CPU's fused SDPA kernel
    cube, meta = torch.zeros(1, 10, chip, chip), torch.zeros(1, 8)
    with torch.no_grad():
        weight, bias = encoder.patch_embedding.kernel([0.5] * 10)  # folded at export: not counted per chip
        position = encoder.position_encoding(chip // 8, 10.0)
        with FlopCounterMode(display=False) as counter:
            patches = torch.nn.functional.conv2d(cube, weight, bias, stride=8).flatten(2).transpose(1, 2)
            encoder.encode_tokens(patches, meta, position)
    assert encoder_flops_v15(encoder, 10, chip) == pytest.approx(counter.get_total_flops(), rel=1e-3)


def test_bench_v15_reports_chips_and_area_per_second(tmp_path):
    out = tmp_path / "bench"
    result = run_module("clay.benchmarks.cli", "--model", "clay-v1.5", "--size", "tiny", "--batch", "1", "--repeats", "1",
                        "--backends", "onnx-cpu-int8", "--out", out)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "bench-v1.5-tiny.json").read_text())
    assert (data["model"], data["sensor"], data["chip_size"]) == ("clay-v1.5", "sentinel-2-l2a", 256)
    assert data["km2_per_chip"] == pytest.approx(2.56**2)
    rows = {r["backend"]: r for r in data["results"]}
    assert set(rows) == {"eager-fp32-clay", "onnx-cpu-int8"}
    for row in rows.values():
        assert row["km2_per_s_median"] == pytest.approx(row["chips_per_s_median"] * 2.56**2)
    assert rows["onnx-cpu-int8"]["cosine_min"] >= 0.99
    assert (out / "bench-v1.5-tiny.md").read_text().startswith("Clay v1.5 `tiny` encoder (sentinel-2-l2a, 256 px chips)")


def test_bench_takes_every_v15_size_and_refuses_them_for_v0():
    """--size offers v1.5's base and large (clay-bench --model clay-v1.5 --size large is the issue's
    measurement); with clay-v0 they are refused in one line. Both checked before any model is built."""
    from click.testing import CliRunner

    from clay.benchmarks.cli import main

    runner = CliRunner()
    v15 = runner.invoke(main, ["--model", "clay-v1.5", "--size", "large", "--scene", "x"])
    assert v15.exit_code != 0 and "Invalid value for '--size'" not in v15.output
    assert "--scene are for --model clay-v0" in str(v15.exception) + v15.output
    v0 = runner.invoke(main, ["--model", "clay-v0", "--size", "large"])
    assert v0.exit_code != 0 and "clay-v0 is benchmarked at tiny, small" in str(v0.exception) + v0.output
