"""The contenders, each a callable ``run(pixels, lonlat, date) -> embeddings`` on the same chips.

Eager PyTorch as Clay users run it today (explicit softmax attention, fp32) is the baseline; the
best PyTorch a user could write is the project's SDPA encoder under bf16 autocast (fp16 and bf16 on a GPU),
eager and through ``torch.compile`` with Inductor's weight freezing (its documented setting for
inference; +10 % on the reference CPU); then every exported artifact on ONNX Runtime, TensorRT and
OpenVINO, and the float32 graph as OpenVINO runs it without the bf16 artifact's float32 pins (the
naive bf16 path issue 27 measured, and float32), so the pins' effect is measured, not assumed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from clay.runtime.bands import bands_of_groups
from clay.runtime.engines.base import EngineError
from clay.runtime.engines.choice import available_backends, open_engine
from clay.runtime.formats import ArtifactFormat, FORMATS, format_named
from clay.training.model import ClayMAE, normalise
from clay.training.precision import cpu_has_bf16

Runner = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Backend:
    name: str
    description: str
    precision: str  # which peak applies: fp32 | bf16 | fp16 | int8
    run: Runner | None = None
    absent: str | None = None  # why it could not run here


def eager_backend(
    model: ClayMAE,
    groups,
    attention: str,
    autocast: torch.dtype | None,
    device: str,
    compiled: bool = False,
    patch_embeddings: bool = False,
) -> Runner:
    """``patch_embeddings`` makes the runner return ``(chip, grid)``: the reference for per-patch fidelity."""
    encoder = model.encoder.with_attention(attention).eval().to(device)
    bands = bands_of_groups(groups)
    embed = torch.compile(encoder.embed, dynamic=False) if compiled else encoder.embed

    def run(pixels, lonlat, date):
        cube = normalise(torch.from_numpy(pixels).to(device), bands)
        context = torch.autocast(device, dtype=autocast) if autocast else contextlib.nullcontext()
        # freezing folds the weights into the compiled graph; it applies when a batch size first compiles
        frozen = torch._inductor.config.patch(freezing=True) if compiled else contextlib.nullcontext()
        with torch.inference_mode(), context, frozen:
            chip, grid = embed(cube, torch.from_numpy(lonlat).to(device), torch.from_numpy(date).to(device), groups,
                               patch_embeddings)  # fmt: skip
        if device == "cuda":
            torch.cuda.synchronize()
        if patch_embeddings:
            return chip.float().cpu().numpy(), grid.float().cpu().numpy()
        return chip.float().cpu().numpy()

    return run


def eager_backends(model: ClayMAE, groups, device: str) -> list[Backend]:
    backends = [
        Backend("eager-fp32-clay", "PyTorch eager fp32, explicit softmax attention (Clay's own code path)", "fp32",
                eager_backend(model, groups, "explicit", None, device)),
        Backend("eager-fp32-sdpa", "PyTorch eager fp32, scaled_dot_product_attention", "fp32",
                eager_backend(model, groups, "sdpa", None, device)),
    ]  # fmt: skip
    # CPUs: bf16 only (no fp16 matmul kernels worth measuring); GPUs: both half precisions
    reduced = [("bf16", torch.bfloat16)] if device == "cpu" else [("fp16", torch.float16), ("bf16", torch.bfloat16)]
    emulated = device == "cpu" and not cpu_has_bf16()
    for precision, dtype in reduced:
        for compiled in (False, True):
            how = "torch.compile (Inductor, freezing)" if compiled else "PyTorch eager"
            name = f"{'compiled' if compiled else 'eager'}-{precision}-sdpa"
            backend = Backend(name, f"{how}, SDPA + {precision} autocast", precision)
            if emulated:
                backend.absent = "this CPU has no avx512_bf16/AMX: bf16 autocast would be emulated"
            else:
                backend.run = eager_backend(model, groups, "sdpa", dtype, device, compiled)
            backends.append(backend)
    return backends


def contender_name(fmt: ArtifactFormat, backend: str) -> str:
    """``onnx-cpu-int8``, ``tensorrt-fp16``...: one contender per format of the table and backend it runs on."""
    return f"{backend}-{fmt.precision}"


ARTIFACT_CONTENDERS = tuple(contender_name(f, b) for f in FORMATS for b in f.runs_on)


def contender_format(name: str) -> ArtifactFormat:
    """The format a contender of :data:`ARTIFACT_CONTENDERS` runs."""
    return next(f for f in FORMATS for b in f.runs_on if contender_name(f, b) == name)


def engine_backend(name: str, description: str, precision: str, artifact: Path, backend: str, threads: int) -> Backend:
    if not artifact.exists():
        return Backend(name, description, precision, absent=f"{artifact.name} was not built here")
    present = available_backends()
    if backend not in present:
        return Backend(name, description, precision, absent=f"{backend} is not available on this machine")
    try:
        engine = open_engine(artifact, backend, threads)
    except EngineError as exc:
        return Backend(name, description, precision, absent=str(exc))
    return Backend(name, description, precision, lambda p, ll, d: engine.infer(p, ll, d)["embedding"])


def artifact_backends(folder: Path, threads: int, wanted: set[str] | None = None) -> list[Backend]:
    """Every format of the table on every backend it is made for (only the ``wanted`` contenders are loaded)."""
    return [engine_backend(contender_name(f, b), f"{b}: {f.file_name}, {f.summary}", f.precision, folder / f.file_name, b, threads)
            for f in FORMATS for b in f.runs_on if wanted is None or contender_name(f, b) in wanted]  # fmt: skip


#: The float32 graph on OpenVINO with a precision hint and no pins: what the bf16 artifact improves on.
OPENVINO_GRAPH_CONTENDERS = {"openvino-onnx-bf16": "bf16", "openvino-onnx-fp32": "f32"}


def openvino_graph_backend(name: str, folder: Path, threads: int) -> Backend:
    """The float32 graph compiled by OpenVINO with ``INFERENCE_PRECISION_HINT`` bf16 (every node bf16 but
    OpenVINO's own float32 tail) or f32: benchmark rows only, no runtime path runs them."""
    hint = OPENVINO_GRAPH_CONTENDERS[name]
    graph = folder / format_named("fp32").file_name
    description = f"OpenVINO: {graph.name} with INFERENCE_PRECISION_HINT {hint}, no float32 pins"
    precision = "bf16" if hint == "bf16" else "fp32"
    if "openvino-cpu" not in available_backends():
        return Backend(name, description, precision, absent="OpenVINO is not installed")
    if not graph.exists():
        return Backend(name, description, precision, absent=f"{graph.name} was not built here")
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    request = core.compile_model(core.read_model(str(graph)), "CPU", config).create_infer_request()
    return Backend(name, description, precision, lambda p, ll, d: np.array(request.infer([p, ll, d])[0], copy=True))
