"""One builder per row of the format table (``clay.runtime.formats``), registered by name.

A builder writes its format's file into the staging folder from the encoder and the export's
options; the :func:`builder` decorator times it and logs the result, the same for every format. A
format that cannot be built on this machine raises :class:`FormatUnavailable` with the reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from clay.runtime.formats import ArtifactFormat, format_named, ir_weights, plan_sidecar
from clay.runtime.metadata import EngineMetadata
from torch import nn

from .graph import InferenceEncoder
from .onnx_export import export_onnx
from .options import ExportOptions

if TYPE_CHECKING:
    from clay.training.model import Encoder


class FormatUnavailable(RuntimeError):
    """This format cannot be built here (e.g. no TensorRT); the other formats still are."""


@dataclass
class BuildJob:
    """What every builder needs: the encoder, the options, where to write, and the metadata to stamp."""

    encoder: Encoder
    options: ExportOptions
    stage: Path
    provenance: Callable[[ArtifactFormat], EngineMetadata]
    log: Callable[[str], None]
    seconds: dict[str, float]
    # The exportable module for ``module(half=..., attention=...)``; None: v0's InferenceEncoder
    # (Clay v1.5 passes its per-sensor graph, export/graph_v15.py).
    module_factory: Callable[..., nn.Module] | None = None

    def path(self, fmt: ArtifactFormat) -> Path:
        return self.stage / fmt.file_name

    def module(self, **kwargs) -> InferenceEncoder:
        if self.module_factory is not None:
            return self.module_factory(**kwargs)
        return InferenceEncoder(self.encoder, self.options.groups, self.options.patch_embeddings, **kwargs)


Builder = Callable[[BuildJob, ArtifactFormat], list[Path]]
BUILDERS: dict[str, Builder] = {}


def builder(name: str) -> Callable[[Builder], Builder]:
    """Register the builder of format ``name``; every build is timed and logged the same way."""

    def register(build: Builder) -> Builder:
        def timed(job: BuildJob, fmt: ArtifactFormat) -> list[Path]:
            start = time.perf_counter()
            written = build(job, fmt)
            job.seconds[fmt.file_name] = time.perf_counter() - start
            job.log(f"built {fmt.file_name}: {job.seconds[fmt.file_name]:.1f} s")
            return written

        BUILDERS[name] = timed
        return timed

    return register


@builder("fp32")
def build_fp32(job: BuildJob, fmt: ArtifactFormat) -> list[Path]:
    export_onnx(job.module(), job.path(fmt), job.provenance(fmt))
    return [job.path(fmt)]


@builder("fp16")
def build_fp16(job: BuildJob, fmt: ArtifactFormat) -> list[Path]:
    export_onnx(job.module(half=True), job.path(fmt), job.provenance(fmt))
    return [job.path(fmt)]


@builder("int8")
def build_int8(job: BuildJob, fmt: ArtifactFormat) -> list[Path]:
    from .int8 import quantize_int8

    # The CPU artifact starts from a graph whose attention is ONNX Runtime's fused kernel.
    fused = job.stage / "int8-source.onnx"
    export_onnx(job.module(attention="onnxruntime"), fused, job.provenance(fmt))
    quantize_int8(fused, job.path(fmt), job.provenance(fmt))
    fused.unlink()
    return [job.path(fmt)]


@builder("cuda")
def build_cuda(job: BuildJob, fmt: ArtifactFormat) -> list[Path]:
    from .cuda import optimise_for_cuda

    source = job.stage / "cuda-source.onnx"
    export_onnx(job.module(attention="onnxruntime"), source, job.provenance(fmt))
    dim, _, heads, _, _ = job.encoder.shape
    fused = optimise_for_cuda(source, job.path(fmt), heads, dim, job.provenance(fmt))
    job.log(f"{fmt.file_name}: fused {', '.join(f'{k} x{v}' for k, v in fused.items())}")
    source.unlink()
    return [job.path(fmt)]


@builder("plan")
def build_plan(job: BuildJob, fmt: ArtifactFormat) -> list[Path]:
    from .tensorrt_build import PlanUnbuildable, choose_flavour
    from .tensorrt_build import build_plan as build_tensorrt_plan

    try:
        flavour = choose_flavour()
    except PlanUnbuildable as reason:
        raise FormatUnavailable(str(reason)) from None
    options = job.options
    metadata = job.provenance(fmt)
    source = job.path(format_named("fp16"))  # built before the plan: table order
    build = build_tensorrt_plan(source, job.path(fmt), metadata, flavour, options.compute_capability, options.batch,
                                options.timing_cache)  # fmt: skip
    job.log(f"{fmt.file_name}: {build.label}, compute capabilities {', '.join(build.compute_capabilities)}, "
            f"{job.path(fmt).stat().st_size / 1e6:.1f} MB")  # fmt: skip
    sidecar = plan_sidecar(job.path(fmt))
    sidecar.write_text(json.dumps(replace(metadata, extra={"tensorrt": build.to_dict()}).to_dict(), indent=2))
    return [job.path(fmt), sidecar]


@builder("bf16")
def build_bf16(job: BuildJob, fmt: ArtifactFormat) -> list[Path]:
    from .openvino import build_bf16_ir, openvino_unavailable_reason

    reason = openvino_unavailable_reason()
    if reason:
        raise FormatUnavailable(reason)
    source = job.path(format_named("fp32"))  # built first (table order): the explicit-attention graph
    pinned = build_bf16_ir(source, job.path(fmt), job.provenance(fmt))
    job.log(f"{fmt.file_name}: {pinned} layers pinned to float32 (patch embedding, encodings, final norm)")
    return [job.path(fmt), ir_weights(job.path(fmt))]


@builder("openvino-int8")
def build_openvino_int8(job: BuildJob, fmt: ArtifactFormat) -> list[Path]:
    from .calibration import NoCalibrationChips, calibration_feeds
    from .openvino import build_int8_ir, openvino_unavailable_reason

    reason = openvino_unavailable_reason(quantiser=True)
    if reason:
        raise FormatUnavailable(reason)
    metadata = job.provenance(fmt)
    try:
        feeds, generated = calibration_feeds(metadata)
    except NoCalibrationChips as exc:
        raise FormatUnavailable(str(exc)) from None
    source = job.path(format_named("fp32"))  # built first (table order): the explicit-attention graph
    pinned, quantised = build_int8_ir(source, job.path(fmt), metadata, feeds)
    synthetic = f"; bands {', '.join(generated)} generated (the demo scene has none)" if generated else ""
    job.log(f"{fmt.file_name}: {quantised} int8 quantisers, calibrated on {len(feeds) - 1} chips of the demo scene and "
            f"a saturated copy of one{synthetic}; {pinned} layers pinned to float32")  # fmt: skip
    return [job.path(fmt), ir_weights(job.path(fmt))]
