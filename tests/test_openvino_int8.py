"""The int8 CPU path on OpenVINO (issue 35): NNCF's static int8 IR built, checked against eager fp32,
run by the runtime on real chips, and ``auto``'s choice by CPU class (AMX, VNNI, neither), injected."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from clay.runtime.engines.choice import auto_order, open_engine, read_engine_metadata
from clay.runtime.engines.cpu import CpuInfo
from clay.runtime.formats import format_named, pick_artifact

from .conftest import SSL4EO

OV_INT8, FP32, BF16 = format_named("openvino-int8"), format_named("fp32"), format_named("bf16")
AMX_XEON = CpuInfo("Intel(R) Xeon(R) Platinum 8488C", "GenuineIntel",
                   frozenset({"avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"}))  # fmt: skip
EPYC = CpuInfo("AMD EPYC", "AuthenticAMD", frozenset({"avx512f", "avx512_bf16", "avx512_vnni"}))
OLD_XEON = CpuInfo("Intel(R) Xeon(R) CPU E5-2686 v4", "GenuineIntel", frozenset({"avx2", "fma"}))


def test_cpu_class_decides_whether_openvino_goes_before_onnx_runtime():
    assert (AMX_XEON.cpu_class, EPYC.cpu_class, OLD_XEON.cpu_class) == ("amx", "vnni", "neither")
    present = ["openvino-cpu", "onnx-cpu"]
    assert auto_order(present, EPYC, openvino_int8=True) == ["openvino-cpu", "onnx-cpu"]
    assert auto_order(present, EPYC, openvino_int8=False) == ["onnx-cpu", "openvino-cpu"]
    assert auto_order(present, OLD_XEON, openvino_int8=True) == ["onnx-cpu", "openvino-cpu"]
    assert auto_order(present, AMX_XEON, openvino_int8=False) == ["openvino-cpu", "onnx-cpu"]


def test_an_export_folder_offers_openvino_its_int8_ir_before_the_bf16_one(tmp_path):
    for fmt in (BF16, OV_INT8):
        (tmp_path / fmt.file_name).write_bytes(b"")
    assert pick_artifact(tmp_path, "openvino-cpu").name == OV_INT8.file_name


# --- the artifact ------------------------------------------------------------------------------------

pytest.importorskip("openvino", reason="the OpenVINO int8 path needs the [int8-openvino] extra")
pytest.importorskip("nncf", reason="the OpenVINO int8 path needs the [int8-openvino] extra")
torch = pytest.importorskip("torch", reason="the artifacts under test are exported with the [export] extra")

from clay.export.artifacts import ExportOptions, export_artifacts


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory):
    """The demo weights (tiny, S2 groups) as the OpenVINO int8 IR (and the fp32 graph, always
    written); the export's check (generated chips and the extreme chip against eager fp32, bound
    0.99) has passed or it would have raised."""
    out = tmp_path_factory.mktemp("ov-int8")
    lines: list[str] = []
    report = export_artifacts(ExportOptions(out=out, int8_openvino=True), log=lines.append)
    return out, report, lines


def test_export_builds_and_checks_the_int8_ir(int8_export):
    out, report, lines = int8_export
    scores = [s for s in report.scores if s.artifact.startswith(OV_INT8.file_name)]
    assert scores and all(s.passed and s.finite and s.bound == 0.99 for s in scores), [s.line() for s in scores]
    assert {p.name for p in report.artifacts} >= {OV_INT8.file_name, "clay.int8.bin"}
    meta = read_engine_metadata(out / OV_INT8.file_name)
    assert meta.precision == "int8" and meta.model_size == "tiny" and meta.groups == ("rgb", "rededge", "nir", "swir")
    # calibrated on the demo scene, which has every band of these groups: none generated
    assert any(line.startswith(f"{OV_INT8.file_name}: ") and "calibrated on 8 chips of the demo scene and a saturated copy of one;" in line
               for line in lines), lines  # fmt: skip
    # the blocks' matmuls are quantised, the pinned ends (patch embeddings on raw DNs) are not
    root = ET.parse(out / OV_INT8.file_name).getroot()
    layers = {layer.get("id"): layer for layer in root.iter("layer")}
    edges = [(e.get("from-layer"), e.get("to-layer")) for e in root.iter("edge")]
    quantised_inputs = {layers[dst].get("name") for src, dst in edges if layers[src].get("type") == "FakeQuantize"}
    pinned = {layer.get("name") for layer in layers.values() if layer.find("rt_info/attribute[@name='precise']") is not None}
    convs = {layer.get("name") for layer in layers.values() if layer.get("type") == "Convolution"}
    assert convs and convs <= pinned and not quantised_inputs & pinned
    assert sum(layers[dst].get("type") == "MatMul" for src, dst in edges if layers[src].get("type") == "FakeQuantize") >= 8


def _chips(scene_path: Path, metadata):
    from clay.benchmarks.real_scenes import real_chips
    from clay.runtime.scenes.discovery import discover_scenes

    return real_chips(discover_scenes([scene_path])[0], metadata)


def test_the_runtime_embeds_real_chips_within_the_bound_of_eager_fp32(int8_export, torch_threads):
    """The demo scene (the calibration's chips) and the SSL4EO S2 scene (not seen in calibration),
    through the runtime's reader and engine, against Clay's eager fp32 path on the same chips."""
    from clay.benchmarks.backends import eager_backend
    from clay.benchmarks.bench import cosine_rows
    from clay.runtime.demo import DEMO_SCENE
    from clay.training.checkpoint import DEMO_WEIGHTS, load_clay_mae

    out, _, _ = int8_export
    model = load_clay_mae(DEMO_WEIGHTS)
    with open_engine(out / OV_INT8.file_name, "openvino-cpu", threads=2) as engine:
        assert engine.runs_in().startswith("int8")
        reference = eager_backend(model, engine.metadata.groups, "explicit", None, "cpu")
        for scene, count in ((DEMO_SCENE, 9), (SSL4EO, 1)):
            pixels, lonlat, date = _chips(scene, engine.metadata)
            assert len(pixels) == count
            got = np.concatenate([engine.infer(pixels[i : i + 2], lonlat[i : i + 2], date[i : i + 2])["embedding"]
                                  for i in range(0, len(pixels), 2)])  # fmt: skip
            want = reference(pixels, lonlat, date)
            cosine = cosine_rows(got, want)
            assert np.isfinite(got).all() and cosine.min() >= OV_INT8.cosine_bound, (scene.name, cosine)
            assert cosine.min() < 0.999999  # quantised: not the float graph by mistake


def test_auto_says_why_it_runs_which_int8_artifact_per_cpu_class(int8_export):
    out, _, _ = int8_export
    with open_engine(out, cpu=EPYC) as engine:
        assert engine.backend == "openvino-cpu" and engine.path.name == OV_INT8.file_name
        assert engine.choice == ("auto: AMD EPYC has int8 dot products (VNNI) but no AMX, and the folder has "
                                 f"{OV_INT8.file_name}, so int8 on OpenVINO")  # fmt: skip
        assert engine.describe().endswith(engine.choice) and "\n" not in engine.describe()
    with open_engine(out, cpu=AMX_XEON) as engine:
        assert engine.path.name == OV_INT8.file_name
        assert engine.choice == "auto: Intel(R) Xeon(R) Platinum 8488C has AMX (amx_bf16), so int8 on OpenVINO"
    with open_engine(out, cpu=OLD_XEON) as engine:  # the folder has no clay.int8.onnx: its float32 graph
        assert engine.backend == "onnx-cpu" and engine.path.name == FP32.file_name
        assert engine.choice == "auto: Intel(R) Xeon(R) CPU E5-2686 v4 has neither AMX nor VNNI, so fp32 on ONNX Runtime"


def test_export_without_nncf_keeps_the_others_and_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setattr("clay.export.openvino.openvino_unavailable_reason",
                        lambda quantiser=False: "nncf is not installed (test)")  # fmt: skip
    report = export_artifacts(ExportOptions(out=tmp_path, int8_openvino=True, check=False), log=lambda _: None)
    assert [p.name for p in report.artifacts] == [FP32.file_name]
    assert report.notes == [f"no {OV_INT8.file_name}: nncf is not installed (test); the other artifacts are kept"]
