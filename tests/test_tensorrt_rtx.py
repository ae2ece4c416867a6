"""clay.plan built by TensorRT-RTX on any machine (a GPU is not needed to build), and every reason a
plan cannot run said in one line: no GPU, another TensorRT version or flavour, a GPU the plan was not
built for. On a machine with a supported GPU the plan is also run and compared."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from clay.runtime.engines.base import EngineError, EngineUnavailable
from clay.runtime.engines.choice import available_backends, open_engine, read_engine_metadata
from clay.runtime.formats import format_named, pick_artifact, plan_runtime_cache, plan_sidecar
from clay.runtime.engines.tensorrt_plan import (
    Gpu,
    PlanBuild,
    RTX,
    STANDARD,
    flavour_installed,
    plan_unusable_reason,
    probe_gpu,
)

from .test_architecture import BLOCKER, run_python

pytest.importorskip("torch", reason="exporting needs the [export] extra")

GPU = probe_gpu()
NO_GPU = isinstance(GPU, str)
needs_rtx = pytest.mark.skipif(
    not flavour_installed(RTX), reason='TensorRT-RTX is not installed (pip install "clay-runtime[tensorrt]")'
)
PLAN = format_named("plan").file_name


def clay(module: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """``clay-export --random-weights --size tiny --fp16`` with a Triton repository, as a user runs it."""
    if not flavour_installed(RTX):
        pytest.skip('TensorRT-RTX is not installed (pip install "clay-runtime[tensorrt]")')
    root = tmp_path_factory.mktemp("rtx")
    out, repository = root / "engine", root / "repo"
    result = clay("clay.export.cli", "--random-weights", "--size", "tiny", "--fp16", "--out", out,
                  "--triton-repository", repository)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out, repository, result


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from clay.training.synthetic import write_scene

    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    write_scene(path, 600, 520, seed=3)
    return path


def test_fp16_export_builds_a_plan_here_and_its_sidecar_says_how(exported):
    import tensorrt_rtx_bindings as trt
    from clay.export.tensorrt_build import AMPERE_PLUS

    out, _, result = exported
    plan, graph = out / PLAN, out / format_named("fp16").file_name
    # The plan holds the fp16 weights plus kernels specialised at first run: measured 23.3 MB from a 19.5 MB graph.
    assert 0.9 * graph.stat().st_size < plan.stat().st_size < 2 * graph.stat().st_size
    metadata = read_engine_metadata(plan)
    assert (metadata.precision, metadata.model_size, metadata.dim) == ("fp16", "tiny", 256)
    assert metadata.extra == {"tensorrt": {"flavour": RTX, "version": trt.__version__, "compute_capabilities": list(AMPERE_PLUS),
                                           "batch_profile": "1:8:32", "gpu": None}}  # fmt: skip
    assert (
        f"{PLAN}: TensorRT-RTX {trt.__version__}, compute capabilities 8.0, 8.6, 8.9, 12.0, 12.1"
        in result.stderr
    )
    if NO_GPU:
        assert (f"clay-export: {PLAN} is not checked against eager fp32 here: a TensorRT plan runs only on an NVIDIA "
                f"GPU: {GPU} (the plan is kept;") in result.stderr  # fmt: skip
    assert "Traceback" not in result.stderr


def test_the_triton_repository_leaves_a_tensorrt_rtx_plan_out_and_says_why(exported):
    _, repository, result = exported
    assert sorted(p.name for p in repository.iterdir()) == ["clay_onnx"]
    assert "clay-export: Triton repository: no clay_trt: clay.plan was built by TensorRT-RTX" in result.stderr


def test_the_same_graph_gives_the_same_plan_and_the_same_metadata(exported, tmp_path):
    """A second export of the same weights: byte-identical graph, plan and sidecar (measured so with
    TensorRT-RTX 1.7; the sidecar records only what the inputs decide)."""
    from clay.export.artifacts import ExportOptions, export_artifacts

    out, _, _ = exported
    export_artifacts(
        ExportOptions(out=tmp_path, random_weights=True, size="tiny", fp16=True, check=False),
        log=lambda _: None,
    )
    for name in (format_named("fp16").file_name, PLAN, plan_sidecar(Path(PLAN)).name):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


@needs_rtx
def test_compute_capabilities_are_chosen_and_checked(exported, tmp_path):
    from clay.export.tensorrt_build import BatchProfile, PlanBuildError, build_plan, parse_targets

    assert parse_targets("8.6, 8.9,8.6") == "8.6,8.9"
    for wrong in ("9.0", "7.5", "86", ""):
        with pytest.raises(
            ValueError, match="expected ampere\\+, current or a list of 8.0, 8.6, 8.9, 12.0, 12.1"
        ):
            parse_targets(wrong)
    out, _, _ = exported
    metadata = read_engine_metadata(out / PLAN)
    build = build_plan(
        out / format_named("fp16").file_name, tmp_path / PLAN, metadata, RTX, "8.6", BatchProfile(1, 2, 4)
    )
    assert (build.compute_capabilities, build.batch_profile) == (("8.6",), "1:2:4")
    if NO_GPU:
        with pytest.raises(PlanBuildError, match=f"--compute-capability current: {GPU}"):
            build_plan(
                out / format_named("fp16").file_name,
                tmp_path / "b.plan",
                metadata,
                RTX,
                "current",
                BatchProfile(1, 2, 4),
            )
    result = clay(
        "clay.export.cli",
        "--random-weights",
        "--fp16",
        "--compute-capability",
        "9.0",
        "--out",
        tmp_path / "x",
    )
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        "clay-export: --compute-capability 9.0: expected ampere+, current or a list of 8.0, 8.6, 8.9, 12.0, 12.1"]  # fmt: skip


@pytest.mark.skipif(not NO_GPU, reason="a GPU is present here: the plan may run")
def test_clay_run_on_a_plan_without_a_gpu_is_one_line_and_exit_2(exported, scene, tmp_path):
    out, _, _ = exported
    for backend in ("auto", "tensorrt"):
        result = clay(
            "clay.runtime.cli", scene, "--engine", out / PLAN, "--backend", backend, "--out", tmp_path
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().splitlines() == [
            f"clay-run: {out / PLAN}: cannot run here: a TensorRT plan runs only on an NVIDIA GPU: {GPU}"]  # fmt: skip
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not NO_GPU, reason="a GPU is present here: the plan may run")
def test_backend_auto_on_the_export_folder_falls_back_to_onnx_runtime_and_says_why(exported, scene, tmp_path):
    out, _, _ = exported
    result = clay("clay.runtime.cli", scene, "--engine", out, "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    fallback = next(pick_artifact(out, b) for b in ("onnx-cuda", "onnx-cpu") if b in available_backends())
    lines = result.stderr.strip().splitlines()
    assert lines[0] == (f"clay-run: {PLAN} not used: a TensorRT plan runs only on an NVIDIA GPU: {GPU}; falling back to "
                        f"{fallback.name} on ONNX Runtime")  # fmt: skip
    assert lines[1].startswith(f"clay-run: engine {fallback.name} on onnx-")
    assert (tmp_path / "scene.parquet").is_file()


@needs_rtx
def test_a_plan_of_another_version_or_flavour_is_refused_in_one_line(exported, tmp_path):
    import tensorrt_rtx_bindings as trt

    out, _, _ = exported
    plan = tmp_path / PLAN
    shutil.copyfile(out / PLAN, plan)
    record = json.loads(plan_sidecar(out / PLAN).read_text())

    def refused(**changes) -> str:
        edited = json.loads(json.dumps(record))
        edited["extra"]["tensorrt"].update(changes)
        plan_sidecar(plan).write_text(json.dumps(edited))
        with pytest.raises(EngineUnavailable) as caught:
            open_engine(plan)
        assert "\n" not in str(caught.value)
        return str(caught.value)

    assert refused(version="1.6.0.0") == (
        f"{plan}: cannot run here: it was built by TensorRT-RTX 1.6.0.0 and TensorRT-RTX {trt.__version__} is installed "
        "here; a plan runs only on the version that built it: rebuild it here (clay-export --fp16) or install "
        "TensorRT-RTX 1.6.0.0")  # fmt: skip
    if not flavour_installed(STANDARD):
        assert refused(flavour=STANDARD, version="10.13.0.35") == (
            f"{plan}: cannot run here: it was built by TensorRT 10.13.0.35, which is not installed here: install it "
            "from NVIDIA (an NGC container or NVIDIA's pip index)")  # fmt: skip
    edited = json.loads(json.dumps(record))
    del edited["extra"]["tensorrt"]
    plan_sidecar(plan).write_text(json.dumps(edited))
    with pytest.raises(EngineError, match="the sidecar does not say which TensorRT built the plan") as caught:
        open_engine(plan)
    assert not isinstance(caught.value, EngineUnavailable)  # a broken file, not a missing GPU


@needs_rtx
def test_the_validity_check_of_a_gpu_reads_as_one_line():
    import tensorrt_rtx_bindings as trt
    from clay.runtime.engines.tensorrt_plan import describe_invalidity

    build = PlanBuild(RTX, trt.__version__, ("8.0", "8.6", "8.9", "12.0", "12.1"), "1:8:32")
    cc = int(trt.EngineInvalidityDiagnostics.UNSUPPORTED_CC)
    h200 = Gpu("NVIDIA H200", "9.0", "13.0")
    assert describe_invalidity(trt, cc, h200, build) == (
        "this GPU (NVIDIA H200, compute capability 9.0) is not one it was built for (8.0, 8.6, 8.9, 12.0, 12.1): "
        f"TensorRT-RTX {trt.__version__} supports no plan for it: run clay.cuda.onnx on ONNX Runtime instead")  # fmt: skip
    ada_only = PlanBuild(RTX, trt.__version__, ("8.9",), "1:8:32")
    assert describe_invalidity(trt, cc, Gpu("NVIDIA A10G", "8.6", "13.0"), ada_only).endswith(
        "(8.9): rebuild it with clay-export --fp16 --compute-capability 8.6")  # fmt: skip
    old_driver = int(trt.EngineInvalidityDiagnostics.OLD_CUDA_DRIVER)
    assert describe_invalidity(trt, old_driver, Gpu("NVIDIA L4", "8.9", "12.4"), build) == (
        f"the NVIDIA driver (CUDA 12.4) is too old for TensorRT-RTX {trt.__version__}: update the driver"
    )
    assert describe_invalidity(trt, 0, h200, build) == ""


def test_a_plan_build_record_covers_the_gpus_it_names():
    rtx = PlanBuild(RTX, "1.7.1.116", ("8.0", "8.6"), "1:8:32")
    assert rtx.covers("8.6") and not rtx.covers("8.9") and not rtx.covers("9.0")
    hardware_compatible = PlanBuild(STANDARD, "10.13", ("8.0+",), "1:8:32", "NVIDIA H100")
    assert (
        hardware_compatible.covers("9.0")
        and hardware_compatible.covers("12.0")
        and not hardware_compatible.covers("7.5")
    )


def test_without_any_tensorrt_the_export_says_what_to_install(tmp_path):
    """The note names the extra and asks for the same command again: no path of this machine's
    site-packages, nothing of the command dropped (issue 25, item 10)."""
    code = BLOCKER.format(blocked=("tensorrt_rtx_bindings", "tensorrt_rtx_libs", "tensorrt")) + (
        "from clay.export.cli import main\n"
        f"main(['--random-weights', '--fp16', '--no-check', '--out', {str(tmp_path)!r}])\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clay.cuda.onnx", "clay.fp16.onnx", "clay.onnx"]
    notes = [line for line in result.stderr.splitlines() if line.startswith("clay-export: no ")]
    assert notes == [
        (
            "clay-export: no clay.plan: neither TensorRT-RTX nor TensorRT is installed; TensorRT-RTX builds the plan "
            'on any x86-64 machine, GPU or not: pip install "clay-runtime[tensorrt]", then run this command again; '
            "the other artifacts are kept"
        )
    ]


@pytest.mark.skipif(NO_GPU, reason=f"no GPU here ({GPU}): a TensorRT plan runs only on an NVIDIA GPU")
def test_on_a_supported_gpu_the_plan_matches_onnx_runtime_and_keeps_its_runtime_cache(exported):
    from clay.training.synthetic import make_chips

    out, _, _ = exported
    reason = plan_unusable_reason(out / PLAN, read_engine_metadata(out / PLAN))
    if reason:
        pytest.skip(f"{GPU.name}: {reason}")
    pixels, lonlat, date = make_chips(4, seed=5)
    with open_engine(out / PLAN, "tensorrt") as engine:
        got = engine.infer(pixels, lonlat, date)["embedding"]
    with open_engine(out / format_named("fp32").file_name, "onnx-cpu") as reference:
        want = reference.infer(pixels, lonlat, date)["embedding"]
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.999
    assert plan_runtime_cache(out / PLAN).is_file()  # written on close
    with open_engine(out / PLAN, "tensorrt") as engine:
        assert engine.runtime_cache.loaded
