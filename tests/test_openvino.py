"""The bf16 CPU path (issue 27): the OpenVINO IR's accuracy against eager fp32, its float32 pins,
the backend choice by CPU flags (injected), and what the engine line says."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest
from clay.runtime.engines import choice as engines
from clay.runtime.engines.cpu import CpuInfo, cpu_info, parse_cpuinfo
from clay.runtime.engines.base import EngineError
from clay.runtime.engines.choice import auto_order, open_engine
from clay.runtime.formats import format_named

BF16, INT8, FP32 = format_named("bf16"), format_named("int8"), format_named("fp32")
S2_GROUPS = ("rgb", "rededge", "nir", "swir")
AMX_XEON = CpuInfo("Intel(R) Xeon(R) Platinum 8488C", "GenuineIntel",
                   frozenset({"avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"}))  # fmt: skip
EPYC = CpuInfo("AMD EPYC", "AuthenticAMD", frozenset({"avx512f", "avx512_bf16", "avx512_vnni"}))
NATIVE_BF16 = cpu_info().native_bf16  # this machine: bf16 runs natively, else OpenVINO runs float32


def test_cpuinfo_flags_and_model_are_read_from_the_first_cpu():
    text = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\n"
            "cpu MHz\t\t: 2400.000\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile avx512_vnni\n\n"
            "processor\t: 1\nflags\t\t: fpu\n")  # fmt: skip
    cpu = parse_cpuinfo(text)
    assert cpu.amx_bf16 and cpu.native_bf16 and cpu.vnni and cpu.mhz == 2400.0
    assert cpu.describe() == "Intel(R) Xeon(R) Platinum 8488C (AMX-BF16 yes, AVX512-BF16 yes, VNNI yes)"
    assert not EPYC.amx_bf16 and EPYC.native_bf16
    assert not parse_cpuinfo("").native_bf16


def test_auto_tries_openvino_before_onnx_runtime_only_where_the_cpu_has_amx():
    present = ["onnx-cuda", "openvino-cpu", "onnx-cpu"]
    assert auto_order(present, AMX_XEON) == ["onnx-cuda", "openvino-cpu", "onnx-cpu"]
    assert auto_order(present, EPYC) == ["onnx-cuda", "onnx-cpu", "openvino-cpu"]
    assert auto_order(["onnx-cpu"], AMX_XEON) == ["onnx-cpu"]


# --- the artifact ------------------------------------------------------------------------------------

ov = pytest.importorskip("openvino", reason="the bf16 path needs the [openvino] extra")
torch = pytest.importorskip("torch", reason="the artifacts under test are exported with the [export] extra")

from clay.export.artifacts import ExportOptions, export_artifacts  # noqa: E402
from clay.runtime.engines.openvino_engine import PIN_ATTRIBUTE, bf16_pinned_layers, read_ir  # noqa: E402


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory) -> tuple[Path, object]:
    """The demo weights (S2 groups) as the int8 and bf16 CPU artifacts; the export's own check (its
    generated chips and the extreme chip, bound 0.99 each) has passed or it would have raised."""
    out = tmp_path_factory.mktemp("demo-export")
    report = export_artifacts(ExportOptions(out=out, int8_cpu=True, bf16_cpu=True), log=lambda _: None)
    return out, report


def test_export_checks_the_bf16_artifact_on_every_check_chip(demo_export):
    out, report = demo_export
    scores = [s for s in report.scores if s.artifact.startswith(BF16.file_name)]
    assert scores and all(s.passed and s.bound == 0.99 for s in scores)
    assert {p.name for p in report.artifacts} >= {BF16.file_name, Path(BF16.file_name).with_suffix(".bin").name}
    meta = engines.read_engine_metadata(out / BF16.file_name)
    assert meta.precision == "bf16" and meta.groups == S2_GROUPS and meta.model_size == "tiny"


def test_bf16_artifact_meets_the_int8_bound_on_check_chips_extreme_chip_and_demo_scene_with_demo_weights(demo_export):
    """Per chip against eager fp32, through the benchmark that writes the README's accuracy table."""
    from clay.benchmarks.bf16_fidelity import score
    from clay.training.checkpoint import DEMO_WEIGHTS, load_clay_mae

    out, _ = demo_export
    rows = score(load_clay_mae(DEMO_WEIGHTS), out, "demo weights", threads=2, only={"openvino-cpu-bf16"})
    ours = {r["chips"]: r for r in rows}
    assert [(name, r["count"]) for name, r in ours.items()] == [
        ("export check, generated", 4), ("export check, extreme (S2 DN 65535)", 1), ("demo scene T48QUE", 9)]
    assert all(r["absent"] is None and r["min_cosine"] >= BF16.cosine_bound for r in ours.values()), ours
    if NATIVE_BF16:  # where the CPU has bf16 dot products, bf16 is what was measured, not float32
        assert rows[0]["openvino_ran"] == "bf16"


@pytest.fixture(scope="module")
def all_groups_ir(checkpoint, tmp_path_factory) -> Path:
    """A tiny model with all six groups, bf16 artifact only; the export's check ran it on generated
    chips and on the extreme chip (S2 65535, S1 1000, DEM −500…9000 m) against eager fp32."""
    out = tmp_path_factory.mktemp("all-groups")
    report = export_artifacts(ExportOptions(out=out, checkpoint=checkpoint, bf16_cpu=True), log=lambda _: None)
    scores = [s for s in report.scores if s.artifact.startswith(BF16.file_name)]
    assert scores and all(s.passed and s.finite and s.min_cosine >= 0.99 for s in scores), [s.line() for s in scores]
    return out / BF16.file_name


def test_the_ends_are_pinned_and_openvino_runs_the_patch_embedding_in_float32_and_the_blocks_in_bf16(all_groups_ir):
    _, pinned = read_ir(all_groups_ir)
    layers = {layer.get("name"): layer.get("type") for layer in ET.parse(all_groups_ir).getroot().iter("layer")}
    convs = {name for name, kind in layers.items() if kind == "Convolution"}
    assert len(convs) == 6 and convs <= pinned  # one patch embedding per group, on raw values
    assert {name for name, kind in layers.items() if kind == "MVN"} & pinned  # patch norms, final norm
    block_matmuls = {name for name, kind in layers.items() if kind == "MatMul" and "/transformer/" in name}
    assert block_matmuls and not block_matmuls & pinned
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(all_groups_ir)), "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    assert bf16_pinned_layers(compiled, pinned) == []
    ops = [op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops()]
    convs_ran = {i["runtimePrecision"].astype(str) for i in ops if i["layerType"].astype(str) == "Convolution"}
    matmuls_ran = {i["runtimePrecision"].astype(str) for i in ops if i["layerType"].astype(str) == "FullyConnected"}
    assert convs_ran == {"f32"}
    assert ("bf16" in matmuls_ran) == NATIVE_BF16


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no bf16 dot products: OpenVINO runs everything in float32")
def test_an_openvino_that_ignores_the_pins_is_caught_and_the_engine_runs_float32(all_groups_ir, tmp_path, monkeypatch):
    """The pins renamed to an attribute OpenVINO does not know: the engine sees the patch embedding in
    bf16, recompiles in float32 and says so in its line."""
    ignored = tmp_path / all_groups_ir.name
    ignored.write_text(all_groups_ir.read_text().replace(f'name="{PIN_ATTRIBUTE}"', 'name="unknown_pin"'))
    (tmp_path / all_groups_ir.with_suffix(".bin").name).symlink_to(all_groups_ir.with_suffix(".bin"))
    monkeypatch.setattr("clay.runtime.engines.openvino_engine.PIN_ATTRIBUTE", "unknown_pin")
    with open_engine(ignored, "openvino-cpu", threads=2) as engine:
        assert engine.inference_precision == "f32"
        assert "ran float32-pinned layers in bf16" in engine.describe() and "compiled in f32" in engine.describe()


# --- the choice, and the engine line ---------------------------------------------------------------


def test_auto_runs_the_bf16_artifact_on_openvino_where_the_cpu_has_amx(demo_export):
    out, _ = demo_export
    with open_engine(out, cpu=AMX_XEON) as engine:
        assert engine.backend == "openvino-cpu" and engine.path.name == BF16.file_name
        assert engine.choice == "auto: Intel(R) Xeon(R) Platinum 8488C has AMX (amx_bf16), so bf16 on OpenVINO"
        assert engine.describe().startswith("openvino-cpu (tiny, bf16") and engine.describe().endswith(engine.choice)


def test_auto_falls_back_to_int8_on_onnx_runtime_without_amx(demo_export):
    out, _ = demo_export
    with open_engine(out, cpu=EPYC) as engine:
        assert engine.backend == "onnx-cpu" and engine.path.name == INT8.file_name
        assert engine.describe().endswith("; auto: AMD EPYC has VNNI but no AMX, and the folder has no clay.int8.xml "
                                          "(clay-export --int8-openvino), so int8 on ONNX Runtime")  # fmt: skip


def test_an_amx_cpu_without_openvino_or_without_the_artifact_says_why_it_runs_int8(demo_export, tmp_path, monkeypatch):
    out, _ = demo_export
    present = engines.available_backends()
    monkeypatch.setattr(engines, "available_backends", lambda: [b for b in present if b != "openvino-cpu"])
    with open_engine(out, cpu=AMX_XEON) as engine:
        assert engine.backend == "onnx-cpu" and 'OpenVINO is not installed (pip install "clay-runtime[openvino]")' in engine.choice
    with pytest.raises(EngineError, match=r"runs on openvino-cpu, and OpenVINO is not installed \(pip install"):
        open_engine(out / BF16.file_name)
    monkeypatch.undo()
    for name in (INT8.file_name, FP32.file_name):
        (tmp_path / name).symlink_to(out / name)
    with open_engine(tmp_path, cpu=AMX_XEON) as engine:
        assert engine.path.name == INT8.file_name
        assert engine.choice.endswith(f"but the folder has no {BF16.file_name} (clay-export --bf16-cpu), so int8 on ONNX Runtime")


def test_export_without_openvino_keeps_the_others_and_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setattr("clay.export.openvino.openvino_unavailable_reason", lambda: "OpenVINO is not installed (test)")
    report = export_artifacts(ExportOptions(out=tmp_path, bf16_cpu=True, check=False), log=lambda _: None)
    assert [p.name for p in report.artifacts] == [FP32.file_name]
    (note,) = report.notes
    assert note == f"no {BF16.file_name}: OpenVINO is not installed (test); the other artifacts are kept"


def test_clay_run_engine_line_says_what_ran_and_why(demo_export, tmp_path):
    from clay.runtime.cli import DEMO_SCENE

    from .conftest import run_module

    out, _ = demo_export
    result = run_module("clay.runtime.cli", DEMO_SCENE, "--engine", out, "--out", tmp_path / "run", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(x for x in result.stderr.splitlines() if x.startswith("clay-run: engine "))
    cpu = cpu_info()
    if cpu.amx_bf16:
        assert line.startswith(f"clay-run: engine {BF16.file_name} on openvino-cpu (tiny, bf16") and "has AMX" in line
    else:
        assert line.startswith(f"clay-run: engine {INT8.file_name} on onnx-cpu (tiny, int8")
        # then how bands off the grid are resampled: the demo weights' bilinear, as their engine records
        why = ("has neither AMX nor VNNI" if not cpu.vnni else
               "has VNNI but no AMX, and the folder has no clay.int8.xml (clay-export --int8-openvino)")  # fmt: skip
        assert line.endswith(f"; auto: {cpu.model} {why}, so int8 on ONNX Runtime; resampling: bilinear "
                             "(as the engine's metadata records for its weights)")  # fmt: skip


def test_the_openvino_engine_imports_no_torch(demo_export):
    from .test_architecture import BLOCKER, run_python

    out, _ = demo_export
    code = BLOCKER.format(blocked=("torch", "clay.training", "clay.export")) + (
        "import numpy as np\nfrom clay.runtime.engines.choice import open_engine\n"
        f"engine = open_engine({str(out / BF16.file_name)!r}, 'openvino-cpu', threads=2)\n"
        "out = engine.infer(np.full((1, 10, 512, 512), 1500, np.float32), np.float32([[103.7, 17.9]]), np.float32([[2020, 2, 23]]))\n"
        "assert np.isfinite(out['embedding']).all() and out['embedding'].shape == (1, 256)\n"
        "assert not any(m.split('.')[0] == 'torch' for m in sys.modules)\nprint('ran without torch')\n"
    )
    result = run_python(code)
    assert result.returncode == 0 and "ran without torch" in result.stdout, result.stderr[-3000:]


def test_metadata_and_pins_of_a_foreign_ir_are_one_line_errors(tmp_path, demo_export):
    out, _ = demo_export
    broken = tmp_path / "broken.xml"
    broken.write_text("<net><layers>")
    with pytest.raises(EngineError, match="not an OpenVINO IR"):
        engines.read_engine_metadata(broken)
    foreign = tmp_path / "foreign.xml"
    foreign.write_text((out / BF16.file_name).read_text().replace("<clay>", "<other>").replace("</clay>", "</other>"))
    with pytest.raises(EngineError, match="not a Clay artifact"):
        engines.read_engine_metadata(foreign)
    assert replace(EPYC, flags=frozenset()).describe() == "AMD EPYC (AMX-BF16 no, AVX512-BF16 no, VNNI no)"
