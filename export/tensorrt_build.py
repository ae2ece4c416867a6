"""FP16 TensorRT engines from the fp16 ONNX graph, through Polygraphy's loaders.

The fp16 graph already carries its precision (float16 weights and matmuls, float32 where float16
would overflow), so the network is parsed strongly typed: the same graph gives the same FP16 engine
on TensorRT 10 and on TensorRT 11, which dropped ``BuilderFlag.FP16``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

WORKSPACE_BYTES = 4 << 30


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


def tensorrt_unavailable_reason() -> str | None:
    """Why no plan can be built here, or ``None`` when TensorRT and a CUDA GPU are both present."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed"
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            return "cuda-python is not installed"
    error, count = cudart.cudaGetDeviceCount()
    if int(error) != 0 or count == 0:
        return "no CUDA GPU is visible"
    return None


def gpu_name() -> str:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    _, props = cudart.cudaGetDeviceProperties(0)
    return props.name.decode(errors="replace").strip("\x00")


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    channels: int,
    chip_size: int,
    batch: BatchProfile,
    timing_cache: Path | None = None,
    hardware_compat: str | None = None,
) -> str:
    """Build and save the engine; returns the TensorRT version that built it."""
    import tensorrt as trt
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineFromNetwork,
        NetworkFromOnnxPath,
        Profile,
        SaveEngine,
    )

    def shapes(b: int) -> dict[str, tuple[int, ...]]:
        return {"pixels": (b, channels, chip_size, chip_size), "lonlat": (b, 2), "date": (b, 3)}

    profile = Profile()
    for name in ("pixels", "lonlat", "date"):
        profile.add(name, min=shapes(batch.min)[name], opt=shapes(batch.opt)[name], max=shapes(batch.max)[name])
    compat = None
    if hardware_compat == "ampere+":
        compat = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    cache = str(timing_cache) if timing_cache else None
    config = CreateConfig(
        profiles=[profile],
        load_timing_cache=cache if timing_cache and timing_cache.exists() else None,
        hardware_compatibility_level=compat,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: WORKSPACE_BYTES},
    )
    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
    SaveEngine(EngineFromNetwork(network, config=config, save_timing_cache=cache), str(plan_path))()
    return trt.__version__
