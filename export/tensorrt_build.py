"""FP16 TensorRT plans from the fp16 ONNX graph: TensorRT-RTX on any machine, standard TensorRT on a GPU.

The fp16 graph already carries its precision (float16 weights and matmuls, float32 where float16
would overflow), so the network is parsed strongly typed and no precision flag is set: TensorRT-RTX
has none, and TensorRT 11 dropped ``BuilderFlag.FP16``.

Which flavour builds (:func:`choose_flavour`): standard TensorRT where it is installed and a CUDA GPU
is present (it builds only on a GPU, and Triton's TensorRT backend loads only its plans), else
TensorRT-RTX, which builds ahead of time without a GPU. The two share the builder API used here
(strongly typed network, ONNX parser, one optimisation profile); they differ in the targets:
TensorRT-RTX takes a list of compute capabilities, standard TensorRT builds for the GPU present or,
hardware-compatible, for every Ampere-or-later GPU.

TensorRT's own API rather than Polygraphy's loaders: Polygraphy 0.53 reaches TensorRT-RTX only
through a process-wide switch (``POLYGRAPHY_USE_TENSORRT_RTX=1`` plus a module named
``tensorrt_rtx``) and refuses its precision flags; the builder calls below are the same for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clay.runtime.engines.tensorrt_plan import (
    FLAVOURS,
    RTX,
    STANDARD,
    TENSORRT_EXTRA,
    PlanBuild,
    capturing_logger,
    flavour_installed,
    import_flavour,
    probe_gpu,
)
from clay.runtime.metadata import EngineMetadata

WORKSPACE_BYTES = 4 << 30  # standard TensorRT's tactic workspace; TensorRT-RTX sizes its own

#: ``--compute-capability ampere+`` for TensorRT-RTX: every Ampere-or-later target it offers
#: (its ``ComputeCapability`` enum: SM80, SM86, SM89, SM120, SM121; it has no SM90, so no plan of
#: it runs on H100/H200). SM75 (Turing) is left out: TensorRT-RTX 1.7 refuses this graph's float32
#: GEMMs for it ("FP32 GEMM is not supported", measured).
AMPERE_PLUS = ("8.0", "8.6", "8.9", "12.0", "12.1")
TARGET_HELP = ("ampere+ (TensorRT-RTX: " + ", ".join(AMPERE_PLUS) + "; standard TensorRT: hardware-compatible), "
               "current (the GPU here), or a list such as 8.6,8.9 (TensorRT-RTX)")  # fmt: skip


class PlanBuildError(RuntimeError):
    """TensorRT could not build the plan, or the options ask for targets this flavour cannot build."""


class PlanUnbuildable(RuntimeError):
    """No TensorRT flavour can build a plan on this machine; the message says what to install."""


@dataclass(frozen=True)
class BatchProfile:
    """``--batch MIN:OPT:MAX`` of the engine's optimisation profile."""

    min: int
    opt: int
    max: int

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        parts = text.split(":")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 3 or values[0] < 1 or not values[0] <= values[1] <= values[2]:
            raise ValueError(f"--batch {text}: expected MIN:OPT:MAX with 1 ≤ MIN ≤ OPT ≤ MAX, e.g. 1:8:32")
        return cls(*values)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


def parse_targets(text: str) -> str:
    """Validate ``--compute-capability``: ``ampere+``, ``current`` or a comma list of
    :data:`AMPERE_PLUS` members; returns it normalised (``"8.6,8.9"``). Raises ``ValueError``."""
    if text in ("ampere+", "current"):
        return text
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in AMPERE_PLUS]
    if not items or unknown:
        raise ValueError(
            f"--compute-capability {text}: expected ampere+, current or a list of {', '.join(AMPERE_PLUS)}"
        )
    return ",".join(dict.fromkeys(items))


def choose_flavour() -> str:
    """The flavour that builds the plan here; :class:`PlanUnbuildable` when none can."""
    gpu = probe_gpu()
    if flavour_installed(STANDARD) and not isinstance(gpu, str):
        return STANDARD
    if flavour_installed(RTX):
        return RTX
    if flavour_installed(STANDARD):
        raise PlanUnbuildable(f"TensorRT is installed but builds only on a CUDA GPU ({gpu}); TensorRT-RTX builds "
                              f"without one: {TENSORRT_EXTRA}, then run this command again")  # fmt: skip
    raise PlanUnbuildable(f"neither TensorRT-RTX nor TensorRT is installed; TensorRT-RTX builds the plan on any x86-64 "
                          f"machine, GPU or not: {TENSORRT_EXTRA}, then run this command again")  # fmt: skip


def build_plan(onnx_path: Path, plan_path: Path, metadata: EngineMetadata, flavour: str, targets: str,
               batch: BatchProfile, timing_cache: Path | None = None) -> PlanBuild:  # fmt: skip
    """Build ``onnx_path`` (the fp16 graph) into ``plan_path`` for the ``targets`` of
    :func:`parse_targets`, with one optimisation profile over ``batch`` for every input (shapes from
    ``metadata``); returns the build record for the sidecar. Raises :class:`PlanBuildError`.

    ``timing_cache`` (standard TensorRT only: TensorRT-RTX has none) is read and updated.
    """
    trt = import_flavour(flavour)
    label = FLAVOURS[flavour].label
    logger = capturing_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        first = parser.get_error(0).desc() if parser.num_errors else logger.first_error()
        raise PlanBuildError(f"{onnx_path.name}: the {label} ONNX parser refused it ({first})")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, shape in metadata.input_shapes.items():
        profile.set_shape(name, (batch.min, *shape), (batch.opt, *shape), (batch.max, *shape))
    config.add_optimization_profile(profile)
    cache = None
    if flavour == RTX:
        capabilities = _rtx_targets(trt, config, targets)
        gpu_name = None
    else:
        capabilities, gpu_name = _standard_targets(trt, config, targets)
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        cache = _load_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise PlanBuildError(f"{label} could not build the plan ({logger.first_error()})")
    plan_path.write_bytes(memoryview(serialized))
    if cache is not None and timing_cache is not None:
        timing_cache.write_bytes(memoryview(cache.serialize()))
    return PlanBuild(flavour, trt.__version__, capabilities, str(batch), gpu_name)


def _rtx_targets(trt, config, targets: str) -> tuple[str, ...]:
    """Set TensorRT-RTX's target compute capabilities; returns them as ``"8.6"`` strings."""
    if targets == "current":
        gpu = probe_gpu()
        if isinstance(gpu, str):
            raise PlanBuildError(
                f"--compute-capability current: {gpu}; name the targets (e.g. 8.6,8.9) or use ampere+"
            )
        config.num_compute_capabilities = 1
        config.set_compute_capability(trt.ComputeCapability.CURRENT, 0)
        return (gpu.compute_capability,)
    capabilities = AMPERE_PLUS if targets == "ampere+" else tuple(targets.split(","))
    config.num_compute_capabilities = len(capabilities)
    for index, capability in enumerate(capabilities):
        config.set_compute_capability(
            getattr(trt.ComputeCapability, "SM" + capability.replace(".", "")), index
        )
    return capabilities


def _standard_targets(trt, config, targets: str) -> tuple[tuple[str, ...], str]:
    """Standard TensorRT builds on the GPU here: for it (``current``) or every Ampere-or-later GPU."""
    gpu = probe_gpu()
    if isinstance(gpu, str):  # choose_flavour picks standard TensorRT only with a GPU; kept for direct calls
        raise PlanBuildError(f"standard TensorRT builds only on a CUDA GPU ({gpu})")
    if targets == "current":
        return (gpu.compute_capability,), gpu.name
    if targets == "ampere+":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
        return ("8.0+",), gpu.name
    raise PlanBuildError(f"--compute-capability {targets}: standard TensorRT builds for the GPU here (current) or for "
                         "every Ampere-or-later GPU (ampere+), not a list; a list needs TensorRT-RTX")  # fmt: skip


def _load_timing_cache(config, path: Path | None):
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=True)
    return cache
