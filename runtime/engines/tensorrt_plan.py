"""What a TensorRT plan needs to run on this machine, checked before anything is deserialised.

A plan is built by one of two flavours of TensorRT, and its metadata sidecar says which
(:class:`PlanBuild`):

- **TensorRT-RTX** (module ``tensorrt_rtx_bindings``, the ``tensorrt`` extra's wheels) builds ahead
  of time on any x86-64 machine, with or without a GPU, for a list of compute capabilities; kernels
  are specialised for the GPU at first run and kept in a runtime cache (:class:`RuntimeCacheFile`).
- **standard TensorRT** (module ``tensorrt``, from an NVIDIA install) builds on a GPU, for that GPU
  or, hardware-compatible, for every Ampere-or-later GPU.

A plan runs only with the flavour and the version that built it, on a GPU it was built for.
:func:`plan_unusable_reason` says in one line what is missing, in the order a user fixes it.
Torch-free on purpose; the CUDA runtime is reached through cuda-python (``cuda.bindings``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..formats import format_named
from ..metadata import EngineMetadata, MetadataError

log = logging.getLogger(__name__)

RTX = "tensorrt-rtx"
STANDARD = "tensorrt"
TENSORRT_EXTRA = 'pip install "clay-runtime[tensorrt]"'


@dataclass(frozen=True)
class Flavour:
    """One flavour of TensorRT: its name in the sidecar, how users call it, its module, how to get it."""

    name: str
    label: str
    module: str
    install: str


FLAVOURS: dict[str, Flavour] = {
    RTX: Flavour(RTX, "TensorRT-RTX", "tensorrt_rtx_bindings", TENSORRT_EXTRA),
    STANDARD: Flavour(
        STANDARD, "TensorRT", "tensorrt", "install it from NVIDIA (an NGC container or NVIDIA's pip index)"
    ),
}


def flavour_installed(name: str) -> bool:
    """Whether the flavour's module can be found (nothing is imported)."""
    try:
        return importlib.util.find_spec(FLAVOURS[name].module) is not None
    except (ImportError, ValueError):
        return False


def import_flavour(name: str) -> ModuleType:
    """The flavour's TensorRT module (``ImportError`` when it is not installed)."""
    return importlib.import_module(FLAVOURS[name].module)


@dataclass(frozen=True)
class PlanBuild:
    """How a plan was built: the sidecar's ``extra["tensorrt"]`` record.

    ``compute_capabilities`` are the GPUs it runs on, as ``"8.6"`` strings; a trailing ``+`` means
    "and every later one" (a hardware-compatible standard TensorRT plan: ``("8.0+",)``).
    ``gpu`` names the GPU a standard TensorRT plan was built on (``None`` for TensorRT-RTX, which
    builds ahead of time whatever GPU is present). Only what the build's inputs decide is recorded,
    so the same graph and options give the same record (no times, no host names).
    """

    flavour: str
    version: str
    compute_capabilities: tuple[str, ...]
    batch_profile: str
    gpu: str | None = None

    @property
    def label(self) -> str:
        return f"{FLAVOURS[self.flavour].label} {self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"flavour": self.flavour, "version": self.version, "compute_capabilities": list(self.compute_capabilities),
                "batch_profile": self.batch_profile, "gpu": self.gpu}  # fmt: skip

    @classmethod
    def of(cls, metadata: EngineMetadata) -> PlanBuild:
        """The record in a plan's metadata; :class:`MetadataError` when it is missing or foreign."""
        record = metadata.extra.get("tensorrt")
        if not isinstance(record, dict) or record.get("flavour") not in FLAVOURS:
            raise MetadataError(
                "the sidecar does not say which TensorRT built the plan (extra.tensorrt.flavour)"
            )
        try:
            return cls(record["flavour"], str(record["version"]), tuple(record["compute_capabilities"]),
                       str(record["batch_profile"]), record.get("gpu"))  # fmt: skip
        except (KeyError, TypeError) as exc:
            raise MetadataError(f"incomplete TensorRT build record in the sidecar ({exc})") from None

    def covers(self, compute_capability: str) -> bool:
        """Whether a GPU of this compute capability (``"8.6"``) is one the plan was built for."""
        for target in self.compute_capabilities:
            if target == compute_capability:
                return True
            if target.endswith("+") and _as_tuple(compute_capability) >= _as_tuple(target[:-1]):
                return True
        return False


def _as_tuple(capability: str) -> tuple[int, ...]:
    return tuple(int(part) for part in capability.split("."))


@dataclass(frozen=True)
class Gpu:
    """The CUDA device the runtime would use (device 0 of those visible)."""

    name: str
    compute_capability: str  # "8.6"
    driver_cuda: str  # the CUDA version the driver supports, "13.0"


def import_cudart() -> ModuleType:
    """cuda-python's CUDA runtime module (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


def probe_gpu() -> Gpu | str:
    """The GPU here, or one line saying why there is none usable (no cuda-python, no driver, a
    driver older than the CUDA runtime, no device)."""
    try:
        cudart = import_cudart()
    except ImportError:
        return f"cuda-python is not installed ({TENSORRT_EXTRA})"
    _, driver = cudart.cudaDriverGetVersion()  # 0 when no driver is installed
    if not driver:
        return "no NVIDIA driver on this machine"
    error, count = cudart.cudaGetDeviceCount()
    if int(error) != 0:
        _, runtime = cudart.cudaRuntimeGetVersion()
        if error == cudart.cudaError_t.cudaErrorInsufficientDriver:
            return f"the NVIDIA driver supports CUDA {_cuda(driver)}, older than the CUDA runtime {_cuda(runtime)} here"
        return f"no CUDA GPU is visible ({_cuda_error(cudart, error)})"
    if count == 0:
        return "no CUDA GPU is visible"
    error, props = cudart.cudaGetDeviceProperties(0)
    if int(error) != 0:
        return f"cannot read the GPU's properties ({_cuda_error(cudart, error)})"
    name = (
        props.name.decode(errors="replace").strip("\x00")
        if isinstance(props.name, bytes)
        else str(props.name)
    )
    return Gpu(name, f"{props.major}.{props.minor}", _cuda(driver))


def _cuda(version: int) -> str:
    """CUDA's integer version (13040) as text (13.4)."""
    return f"{version // 1000}.{version % 1000 // 10}"


def _cuda_error(cudart: ModuleType, error) -> str:
    _, name = cudart.cudaGetErrorName(error)
    return name.decode() if isinstance(name, bytes) else str(name)


def capturing_logger(trt: ModuleType):
    """A TensorRT logger that keeps errors for our one-line messages instead of printing them
    (TensorRT's own logger prints multi-line internals, e.g. a fatal line for every probe of a
    machine without a driver)."""

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, message: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(message.strip().splitlines()[0] if message.strip() else message)
            elif severity == trt.ILogger.Severity.WARNING:
                log.debug("%s", message)

        def first_error(self) -> str:
            return self.errors[0] if self.errors else "no reason given"

    return CapturingLogger()


# TensorRT-RTX's EngineInvalidityDiagnostics bits, in words (the member names are the keys).
_DIAGNOSTICS = {
    "VERSION_MISMATCH": "it was built by another TensorRT-RTX version",
    "OLD_CUDA_DRIVER": "the NVIDIA driver (CUDA {driver}) is too old for TensorRT-RTX {version}: update the driver",
    "OLD_CUDA_RUNTIME": "the CUDA runtime is too old for TensorRT-RTX {version}",
    "INSUFFICIENT_GPU_MEMORY": "the GPU has too little free memory for it",
    "MALFORMED_ENGINE": "it is not a TensorRT-RTX plan this version can read (malformed or truncated)",
    "CUDA_ERROR": "CUDA is not installed correctly (driver or runtime)",
}


def plan_unusable_reason(plan: Path, metadata: EngineMetadata) -> str | None:
    """Why ``plan`` cannot run here, in one line, or ``None`` when it can; checked in the order a
    user fixes things: the flavour and version that built it, cuda-python, the driver and the GPU,
    then (TensorRT-RTX) the plan's own validity check for this GPU, which reads only its header.
    ``metadata`` must hold a build record (:meth:`PlanBuild.of`; MetadataError otherwise)."""
    build = PlanBuild.of(metadata)
    flavour = FLAVOURS[build.flavour]
    try:
        trt = import_flavour(build.flavour)
    except ImportError:
        return f"it was built by {build.label}, which is not installed here: {flavour.install}"
    installed = getattr(trt, "__version__", "?")
    if installed != build.version:
        return (f"it was built by {build.label} and {flavour.label} {installed} is installed here; a plan runs only "
                f"on the version that built it: rebuild it here (clay-export --fp16) or install {build.label}")  # fmt: skip
    gpu = probe_gpu()
    if isinstance(gpu, str):
        return f"a TensorRT plan runs only on an NVIDIA GPU: {gpu}"
    if build.flavour == RTX:
        return _rtx_validity(trt, plan, build, gpu)
    if not build.covers(gpu.compute_capability):
        return _not_a_target(gpu, build, "rebuild it on this GPU (clay-export --fp16)")
    return None


def _rtx_validity(trt: ModuleType, plan: Path, build: PlanBuild, gpu: Gpu) -> str | None:
    logger = capturing_logger(trt)
    runtime = trt.Runtime(logger)
    with plan.open("rb") as f:
        header = f.read(runtime.engine_header_size)
    validity, bits = runtime.get_engine_validity(header)
    if validity != trt.EngineValidity.INVALID:
        return None  # VALID, or SUBOPTIMAL (runs, e.g. without the fastest kernels)
    return describe_invalidity(trt, int(bits), gpu, build) or f"{build.label} says it cannot run on {gpu.name} ({logger.first_error()})"


def describe_invalidity(trt: ModuleType, bits: int, gpu: Gpu, build: PlanBuild) -> str:
    """TensorRT-RTX's ``EngineInvalidityDiagnostics`` bits as one line ("" when none is set)."""
    reasons = []
    for name, member in trt.EngineInvalidityDiagnostics.__members__.items():
        if not bits & int(member):
            continue
        if name == "UNSUPPORTED_CC":
            supported = f"SM{gpu.compute_capability.replace('.', '')}" in trt.ComputeCapability.__members__
            advice = (f"rebuild it with clay-export --fp16 --compute-capability {gpu.compute_capability}" if supported else
                      f"{build.label} supports no plan for it: run {format_named('cuda').file_name} on ONNX Runtime instead")  # fmt: skip
            reasons.append(_not_a_target(gpu, build, advice))
        else:
            reasons.append(_DIAGNOSTICS.get(name, name).format(driver=gpu.driver_cuda, version=build.version))
    return "; ".join(reasons)


def _not_a_target(gpu: Gpu, build: PlanBuild, advice: str) -> str:
    return (f"this GPU ({gpu.name}, compute capability {gpu.compute_capability}) is not one it was built for "
            f"({', '.join(build.compute_capabilities)}): {advice}")  # fmt: skip


class RuntimeCacheFile:
    """TensorRT-RTX's runtime cache kept in a file: the kernels it specialises for this GPU on first
    run are loaded from ``path`` when it holds a cache compatible with this GPU, driver and version
    (otherwise TensorRT-RTX refuses it and starts afresh), and written back by :meth:`save`.

    ``config`` is the ``IRuntimeConfig`` an execution context is created with.
    """

    def __init__(self, trt_engine, path: Path) -> None:
        self.path = path
        self.config = trt_engine.create_runtime_config()
        self._cache = self.config.create_runtime_cache()
        self.loaded = False
        try:
            self.loaded = path.is_file() and bool(self._cache.deserialize(path.read_bytes()))
        except OSError:
            self.loaded = False
        self.config.set_runtime_cache(self._cache)

    def save(self) -> None:
        """Write the cache (atomically: a reader never sees half a file); a folder that cannot be
        written to costs the next run its specialisation again, and says so once."""
        data = self._cache.serialize()
        if data is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            with os.fdopen(handle, "wb") as f:
                f.write(memoryview(data))
            os.replace(temporary, self.path)
        except OSError as exc:
            log.warning("TensorRT-RTX runtime cache not saved to %s (%s): the next run specialises kernels again",
                        self.path, exc.strerror or exc)  # fmt: skip
