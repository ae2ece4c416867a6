"""The one table of artifact formats: what ``clay-export`` writes and what runs each file.

Every part that names an artifact reads this table: ``clay-export`` (which formats a flag asks
for, where each one is written), its fidelity check (the cosine bound per format), the runtime
(which backend runs a file, and which file of an export folder a backend picks) and ``clay-bench``
(one contender per format and backend). Adding a format is one row here plus its builder in
``clay.export.builders``. Torch-free on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Runtime backends, fastest first: what ``--backend auto`` tries in this order (on the CPU,
#: ``openvino-cpu`` first only where the CPU has AMX, or VNNI and an OpenVINO int8 artifact is
#: offered: ``clay.runtime.engines.choice.auto_order``).
RUNTIME_BACKENDS = ("tensorrt", "onnx-cuda", "openvino-cpu", "onnx-cpu")

#: The backends that compute on the CPU (the others on a GPU).
CPU_BACKENDS = ("openvino-cpu", "onnx-cpu")

#: Faster precisions first: an export folder offers a backend its lowest-precision artifact.
PRECISION_ORDER = ("int8", "bf16", "fp16", "fp32")


@dataclass(frozen=True)
class ArtifactFormat:
    """One kind of exported encoder.

    ``runs_on`` lists the runtime backends the file is made for (empty: a file another format is
    built from, which any ONNX Runtime backend can still run when asked to by name); ``flag`` is the ``clay-export`` option that asks for it
    (``None``: always written); ``cosine_bound`` is the least per-chip cosine similarity to eager
    fp32 PyTorch the export check accepts.
    """

    name: str
    file_name: str
    precision: str
    runs_on: tuple[str, ...]
    flag: str | None
    cosine_bound: float
    summary: str


FORMATS: tuple[ArtifactFormat, ...] = (
    ArtifactFormat("fp32", "clay.onnx", "fp32", ("onnx-cpu", "onnx-cuda"), None, 0.99999,
                   "portable float32 ONNX graph"),
    ArtifactFormat("fp16", "clay.fp16.onnx", "fp16", (), "--fp16", 0.999,
                   "portable float16 graph, float32 where float16 would overflow: what TensorRT's strongly typed "
                   "mode builds the plan from"),
    ArtifactFormat("int8", "clay.int8.onnx", "int8", ("onnx-cpu",), "--int8-cpu", 0.99,
                   "dynamic int8 MatMuls around ONNX Runtime's fused attention, for CPUs"),
    ArtifactFormat("cuda", "clay.cuda.onnx", "fp16", ("onnx-cuda",), "--fp16", 0.999,
                   "float16 with ONNX Runtime's fused attention, SkipLayerNorm and GELU kernels, for ONNX Runtime "
                   "on CUDA GPUs"),
    ArtifactFormat("plan", "clay.plan", "fp16", ("tensorrt",), "--fp16", 0.999,
                   "FP16 TensorRT engine built from the fp16 graph: by TensorRT-RTX on any machine (for Ampere-and-later "
                   "GPUs), or by standard TensorRT on a GPU"),
    ArtifactFormat("bf16", "clay.bf16.xml", "bf16", ("openvino-cpu",), "--bf16-cpu", 0.99,
                   "OpenVINO IR (+ clay.bf16.bin) for CPUs with AMX: bf16 transformer blocks, the patch embedding, "
                   "encodings and final norm pinned to float32"),
    ArtifactFormat("openvino-int8", "clay.int8.xml", "int8", ("openvino-cpu",), "--int8-openvino", 0.99,
                   "OpenVINO IR (+ clay.int8.bin) for CPUs with int8 dot products (VNNI, AMX): NNCF post-training "
                   "static int8 of the transformer blocks, calibrated on the bundled demo scene's chips; the same "
                   "float32 ends as clay.bf16.xml"),
)  # fmt: skip


class FormatError(ValueError):
    """No artifact of a known format where one was looked for."""


def format_named(name: str) -> ArtifactFormat:
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise FormatError(f"unknown artifact format {name!r}; known: {', '.join(f.name for f in FORMATS)}")


def format_of_file(path: Path, precision: str | None = None) -> ArtifactFormat | None:
    """The format of an artifact file: by its file name, else (a renamed file, such as the bundled
    demo engine) by its suffix and the precision its metadata declares."""
    for fmt in FORMATS:
        if fmt.file_name == path.name:
            return fmt
    for fmt in FORMATS:
        if Path(fmt.file_name).suffix == path.suffix and fmt.precision == precision:
            return fmt
    return None


def formats_for_flags(flags: set[str]) -> tuple[ArtifactFormat, ...]:
    """The formats an export writes for the given options (``{"--fp16", ...}``), in table order."""
    return tuple(f for f in FORMATS if f.flag is None or f.flag in flags)


def pick_artifact(folder: Path, backend: str) -> Path | None:
    """The artifact in an export folder that ``backend`` should run: the lowest precision made for it."""
    present = [f for f in FORMATS if backend in f.runs_on and (folder / f.file_name).is_file()]
    present.sort(key=lambda f: PRECISION_ORDER.index(f.precision))
    return folder / present[0].file_name if present else None


def ir_weights(xml: Path) -> Path:
    """An OpenVINO IR keeps its weights in ``<name>.bin`` beside its ``<name>.xml``."""
    return xml.with_suffix(".bin")


def plan_sidecar(plan: Path) -> Path:
    """A TensorRT plan carries its Clay metadata in ``<plan>.json`` beside it (a plan has no metadata field)."""
    return plan.with_name(plan.name + ".json")


def plan_runtime_cache(plan: Path) -> Path:
    """Where a TensorRT-RTX plan's runtime cache (the kernels specialised for the GPU at first run)
    is kept unless the caller names another file: ``<plan>.runtime-cache`` beside it."""
    return plan.with_name(plan.name + ".runtime-cache")


def describe_formats() -> str:
    """One line per format, for ``--help`` texts."""
    return "; ".join(f"{f.file_name} ({f.summary})" for f in FORMATS)
