"""Which backend runs an engine, and opening it: :func:`open_engine` takes a file or an export folder,
picks the artifact and backend (``auto``: the fastest present that the artifact is made for, by the
format table and this machine's GPU and CPU) and returns the backend's :class:`~.base.Engine`.

On top of every backend module; none of them imports it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from ..formats import RUNTIME_BACKENDS, format_named, format_of_file, pick_artifact, plan_sidecar
from ..metadata import EngineMetadata, MetadataError
from ..sensors import SENSORS
from .base import Engine, EngineError, EngineUnavailable
from .cpu import CpuInfo, cpu_info
from .onnxruntime_engine import OnnxEngine, onnx_metadata_props
from .openvino_engine import OpenVinoEngine, read_ir
from .tensorrt_engine import TensorRTEngine
from .tensorrt_plan import (
    FLAVOURS,
    TENSORRT_EXTRA,
    PlanBuild,
    flavour_installed,
    plan_unusable_reason,
    probe_gpu,
)

BACKENDS = ("auto", *RUNTIME_BACKENDS)
OPENVINO_INT8 = format_named("openvino-int8")


def read_engine_metadata(path: Path) -> EngineMetadata:
    """The Clay metadata of an ``.onnx`` file (``metadata_props``), a ``.plan`` (its JSON sidecar) or
    an OpenVINO IR ``.xml`` (its runtime info)."""
    if not path.is_file():
        raise EngineError(f"{path}: no such engine file")
    try:
        if path.suffix == ".plan":
            sidecar = plan_sidecar(path)
            if not sidecar.is_file():
                raise EngineError(f"{path}: no metadata sidecar {sidecar.name} next to the plan")
            metadata = EngineMetadata.from_dict(json.loads(sidecar.read_text()))
            PlanBuild.of(metadata)  # which TensorRT built it: needed to open it
            return metadata
        if path.suffix == ".xml":
            return EngineMetadata.from_props(read_ir(path)[0])
        return EngineMetadata.from_props(onnx_metadata_props(path))
    except (MetadataError, json.JSONDecodeError) as exc:
        raise EngineError(f"{path}: {exc}") from None


def available_backends() -> list[str]:
    """Backends usable on this machine, fastest first (``tensorrt``: a TensorRT flavour and a CUDA GPU)."""
    found = []
    if any(flavour_installed(name) for name in FLAVOURS) and not isinstance(probe_gpu(), str):
        found.append("tensorrt")
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
        if "CUDAExecutionProvider" in providers:
            found.append("onnx-cuda")
        found.append("onnx-cpu")
    except ImportError:
        pass
    if importlib.util.find_spec("openvino") is not None:  # imported only when an engine is opened
        found.insert(found.index("onnx-cpu") if "onnx-cpu" in found else len(found), "openvino-cpu")
    return found


def auto_order(present: list[str], cpu: CpuInfo, openvino_int8: bool = False) -> list[str]:
    """The backends ``auto`` tries, in order: GPUs first; on the CPU, OpenVINO before ONNX Runtime
    where the CPU has AMX (issue 27: on a 2-core AMX Xeon, bf16 on OpenVINO ran ~1.5x the int8
    artifact on ONNX Runtime; on this project's AVX-512 BF16 EPYC without AMX, 1.10x, 0.91-1.22x over
    rounds: README, "bf16 on OpenVINO"), or where it has VNNI and OpenVINO is offered its int8
    artifact (``openvino_int8``; issue 35: README, "int8 on OpenVINO"); else after it."""
    order = [b for b in RUNTIME_BACKENDS if b in present]
    openvino_first = cpu.amx_bf16 or (cpu.vnni and openvino_int8)
    if not openvino_first and "openvino-cpu" in order and "onnx-cpu" in order:
        order.remove("openvino-cpu")
        order.insert(order.index("onnx-cpu") + 1, "openvino-cpu")
    return order


def offers_openvino_int8(folder: Path) -> bool:
    """Whether an export folder gives OpenVINO its int8 artifact (``clay-export --int8-openvino``)."""
    artifact = pick_artifact(folder, "openvino-cpu")
    return artifact is not None and artifact.name == OPENVINO_INT8.file_name


def open_engine(path: str | Path, backend: str = "auto", threads: int | None = None,
                runtime_cache: str | Path | None = None, cpu: CpuInfo | None = None,
                sensor: str | None = None) -> Engine:  # fmt: skip
    """Load an engine: a file, or an export folder (the artifact the backend should run, by the
    format table). ``auto`` takes the fastest backend present that the artifact is made for; from a
    folder, it passes over a plan that cannot run here and says why in the engine's ``fallback``, and
    on the CPU decides by ``cpu`` (default: this machine's, from ``/proc/cpuinfo``) between OpenVINO's
    bf16 and ONNX Runtime's int8 artifacts (:func:`auto_order`); the engine's ``choice`` says why.
    ``runtime_cache``: the file a TensorRT-RTX plan keeps its runtime cache in (default: beside it).
    ``sensor``: for a Clay v1.5 folder of several sensors, whose artifacts (:func:`sensor_folder`).

    Raises :class:`EngineUnavailable` (one line) when the engine cannot run on this machine, and
    :class:`EngineError` when the file itself is unusable.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    present = available_backends()
    cpu = cpu or cpu_info()
    order = auto_order(present, cpu)
    fallback = None
    folder = sensor_folder(path, sensor) if path.is_dir() else None
    if folder is not None:
        path, fallback = _artifact_in_folder(folder, backend, present, cpu)
    metadata = read_engine_metadata(path)
    fmt = format_of_file(path, metadata.precision)
    made_for = fmt.runs_on if fmt and fmt.runs_on else ("tensorrt",) if path.suffix == ".plan" else ("onnx-cuda", "onnx-cpu")
    if made_for == ("tensorrt",) and backend in ("auto", "tensorrt"):
        reason = plan_unusable_reason(path, metadata)
        if reason:
            raise EngineUnavailable(f"{path}: cannot run here: {reason}")
        return TensorRTEngine(path, metadata, Path(runtime_cache) if runtime_cache else None)
    choice = ""
    if backend == "auto":
        usable = [b for b in order if b in made_for]
        if not usable:
            raise EngineUnavailable(f"{path}: runs on {' or '.join(made_for)}, and {_missing_reason(made_for[0])}")
        backend = usable[0]
        if folder is not None:
            choice = cpu_choice(backend, metadata.precision, cpu, present, folder)
    elif backend not in made_for:
        raise EngineError(f"{path}: {'an' if fmt is None else f'the {fmt.name}'} artifact runs on "
                          f"{' or '.join(made_for)}, not on backend {backend}")  # fmt: skip
    elif backend not in present:
        raise EngineUnavailable(f"backend {backend}: {_missing_reason(backend)}")
    if backend == "openvino-cpu":
        engine: Engine = OpenVinoEngine(path, metadata, threads)
    else:
        engine = OnnxEngine(path, metadata, cuda=backend == "onnx-cuda", threads=threads)
    engine.fallback = fallback
    engine.choice = choice
    return engine


def cpu_choice(backend: str, precision: str, cpu: CpuInfo, present: list[str], folder: Path) -> str:
    """Why ``auto`` took a CPU backend for an export folder, in one line for the engine line (empty
    for GPUs): the CPU's class (AMX, VNNI without AMX, neither; :attr:`CpuInfo.cpu_class`) and what
    the folder offers."""
    if backend == "openvino-cpu":
        if cpu.amx_bf16:
            return f"auto: {cpu.model} has AMX (amx_bf16), so {precision} on OpenVINO"
        return (f"auto: {cpu.model} has int8 dot products (VNNI) but no AMX, and the folder has "
                f"{OPENVINO_INT8.file_name}, so int8 on OpenVINO")  # fmt: skip
    if backend != "onnx-cpu":
        return ""
    if cpu.cpu_class == "neither":
        return f"auto: {cpu.model} has neither AMX nor VNNI, so {precision} on ONNX Runtime"
    if "openvino-cpu" not in present:
        why = 'OpenVINO is not installed (pip install "clay-runtime[openvino]")'
    elif cpu.amx_bf16:
        why = f"the folder has no {format_named('bf16').file_name} (clay-export --bf16-cpu)"
    else:
        why = f"the folder has no {OPENVINO_INT8.file_name} (clay-export --int8-openvino)"
    if cpu.amx_bf16:
        return f"auto: {cpu.model} has AMX (amx_bf16) but {why}, so {precision} on ONNX Runtime"
    return f"auto: {cpu.model} has VNNI but no AMX, and {why}, so {precision} on ONNX Runtime"


#: The sensor whose artifacts a Clay v1.5 engine folder offers where one artifact is opened for chips
#: (``ClayEmbedder.embed``, ``clay-serve``) and no sensor is named: Sentinel-2 L2A where the folder has
#: it. Scenes pick their own (:mod:`clay.runtime.scenes.sensing`).
SCENE_SENSOR = "sentinel-2-l2a"


def sensor_keys(folder: Path) -> list[str]:
    """The artifact sets of a Clay v1.5 engine folder (one sub-folder per sensor or band subset,
    ``clay-export --sensor``), by folder name (:attr:`clay.runtime.sensors.Sensor.key`), sorted; empty
    for any other folder (a folder of artifacts itself, a Clay v0 export)."""
    if not folder.is_dir() or any(pick_artifact(folder, b) for b in RUNTIME_BACKENDS):
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.split("+")[0] in SENSORS)


def sensor_folder(folder: Path, prefer: str | None = None) -> Path:
    """The folder whose artifacts to run: ``folder`` itself, or, for a Clay v1.5 export folder, the
    sub-folder of ``prefer`` (a sensor name or key) where it has it, else :data:`SCENE_SENSOR`'s, else
    its only one; several and none of these: :class:`EngineError` naming them."""
    keys = sensor_keys(folder)
    if not keys:
        return folder
    for wanted in (prefer, SCENE_SENSOR):
        if wanted in keys:
            return folder / wanted
    if len(keys) == 1:
        return folder / keys[0]
    raise EngineError(f"{folder}: a Clay v1.5 engine folder for {', '.join(keys)}; name the sensor (--sensor, "
                      f"RunOptions(sensor=...)) or one sensor's folder, e.g. {folder / keys[0]}")  # fmt: skip


def sensor_artifacts(folder: Path, backend: str = "auto") -> dict[str, EngineMetadata]:
    """Each artifact set of a Clay v1.5 engine folder (key → the metadata of the artifact ``backend``
    would run, or of its fp32 one), for choosing per scene; empty for any other folder."""
    found = {}
    for key in sensor_keys(folder):
        sub = folder / key
        artifact = next((pick_artifact(sub, b) for b in ([backend] if backend != "auto" else RUNTIME_BACKENDS)
                         if pick_artifact(sub, b)), None)  # fmt: skip
        if artifact is None:
            raise EngineError(f"{sub}: no artifact in this folder (see clay-export --help)")
        found[key] = read_engine_metadata(artifact)
    return found


def _artifact_in_folder(folder: Path, backend: str, present: list[str], cpu: CpuInfo) -> tuple[Path, str | None]:
    """What an export folder offers the requested backend, or (``auto``) the first backend of
    :func:`auto_order` present; a plan that cannot run here is passed over, and the second value
    says why."""
    passed_over = None
    for candidate in [backend] if backend != "auto" else auto_order(list(RUNTIME_BACKENDS), cpu, offers_openvino_int8(folder)):
        artifact = pick_artifact(folder, candidate)
        if artifact is None:
            continue
        if backend == "auto" and candidate == "tensorrt":
            reason = plan_unusable_reason(artifact, read_engine_metadata(artifact))
            if reason:
                passed_over = f"{artifact.name} not used: {reason}"
                continue
        elif backend == "auto" and candidate not in present:
            continue
        runtime = "OpenVINO" if candidate == "openvino-cpu" else "ONNX Runtime"
        return artifact, passed_over and f"{passed_over}; falling back to {artifact.name} on {runtime}"
    wanted = backend if backend != "auto" else " or ".join(auto_order(present, cpu, offers_openvino_int8(folder)))
    if passed_over:
        raise EngineUnavailable(f"{folder}: {passed_over}, and no artifact for {wanted} is in this folder")
    raise EngineError(f"{folder}: no artifact for {wanted} in this folder (see clay-export --help)")


def _missing_reason(backend: str) -> str:
    return {
        "tensorrt": f"neither TensorRT-RTX nor TensorRT with a CUDA GPU is available here ({TENSORRT_EXTRA})",
        "onnx-cuda": "onnxruntime-gpu with a CUDA GPU is not available here",
        "onnx-cpu": "onnxruntime is not installed",
        "openvino-cpu": 'OpenVINO is not installed (pip install "clay-runtime[openvino]")',
    }[backend]
