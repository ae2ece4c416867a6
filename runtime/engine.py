"""Inference backends behind one small interface: TensorRT plans, ONNX Runtime (CUDA or CPU) and
OpenVINO on the CPU (``openvino_engine.py``).

Every backend takes the exported graph's inputs as numpy arrays and returns numpy outputs, so the
scene pipeline and services embedding us never see which one runs. Torch-free on purpose.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cpu import CpuInfo, cpu_info
from .files import first_line
from .formats import (
    RUNTIME_BACKENDS,
    format_named,
    format_of_file,
    pick_artifact,
    plan_runtime_cache,
    plan_sidecar,
)
from .metadata import EngineMetadata, MetadataError
from .tensorrt_plan import (
    FLAVOURS,
    RTX,
    TENSORRT_EXTRA,
    PlanBuild,
    RuntimeCacheFile,
    capturing_logger,
    flavour_installed,
    import_cudart,
    import_flavour,
    plan_unusable_reason,
    probe_gpu,
)
from .timing import NullClock, StageClock

NULL_CLOCK = NullClock()

BACKENDS = ("auto", *RUNTIME_BACKENDS)


class EngineError(RuntimeError):
    """An engine file that cannot be used; the message names the file and the reason."""


class EngineUnavailable(EngineError):
    """An engine that cannot run on this machine (a backend, driver or GPU missing, or a plan built
    for other GPUs or another TensorRT version): one line saying why; ``clay-run`` exits with 2."""


@dataclass
class Staged:
    """A batch made ready to run: its host arrays, and where a backend put them on its device."""

    pixels: np.ndarray
    lonlat: np.ndarray
    date: np.ndarray
    slot: object = None


def all_finite(array: np.ndarray) -> bool:
    """Whether an input holds no NaN or infinity, checked before it reaches an engine (which would
    turn one into NaN embeddings). One pass and no temporary mask: a NaN or an infinity makes the
    sum non-finite (a finite sum of realistic values never overflows float32), then the full check
    confirms it."""
    return bool(np.isfinite(np.add.reduce(array, axis=None)) or np.isfinite(array).all())


class Engine(ABC):
    """A loaded Clay encoder. ``infer`` is thread-safe (calls are serialised by a lock); ``close``
    (or leaving a ``with`` block) frees what the backend holds (sessions, device and pinned memory)."""

    backend: str
    metadata: EngineMetadata
    preferred_batch: int
    path: Path
    #: Why :func:`open_engine` passed over a faster artifact of the folder (a plan that cannot run here).
    fallback: str | None = None
    choice: str = ""  # why ``auto`` chose this backend and artifact, where the CPU decided it

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._closed = False

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the backend's resources; idempotent, and later calls to ``infer`` fail."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._release()

    @abstractmethod
    def _release(self) -> None: ...

    def infer(self, pixels: np.ndarray, lonlat: np.ndarray, date: np.ndarray) -> dict[str, np.ndarray]:
        """``pixels [B, C, 512, 512]`` raw float32, ``lonlat [B, 2]`` degrees, ``date [B, 3]`` Y-M-D
        → ``{"embedding": [B, dim], "patch_embeddings": [B, G, 16, 16, dim] (if exported)}``."""
        with self._lock:
            if self._closed:
                raise EngineError(f"{self.path.name}: the engine was closed")
            return self._infer(
                np.ascontiguousarray(pixels, dtype=np.float32),
                np.ascontiguousarray(lonlat, dtype=np.float32),
                np.ascontiguousarray(date, dtype=np.float32),
            )

    @abstractmethod
    def _infer(self, pixels: np.ndarray, lonlat: np.ndarray, date: np.ndarray) -> dict[str, np.ndarray]: ...

    # Pipelined use: the scene pipeline stages the next batch (a backend with device memory copies
    # it in now, in the caller's thread) while the engine's own thread runs the current one.

    def stage(self, pixels: np.ndarray, lonlat: np.ndarray, date: np.ndarray, clock: StageClock = NULL_CLOCK) -> Staged:
        """Make a batch ready to run; the host arrays must stay untouched until :meth:`run` returns."""
        return Staged(np.ascontiguousarray(pixels, dtype=np.float32), np.ascontiguousarray(lonlat, dtype=np.float32),
                      np.ascontiguousarray(date, dtype=np.float32))  # fmt: skip

    def run(self, staged: Staged, clock: StageClock = NULL_CLOCK) -> dict[str, np.ndarray]:
        """Run a staged batch (compute, and the copy of its outputs back to the host)."""
        with clock.timed("compute"):
            return self.infer(staged.pixels, staged.lonlat, staged.date)

    def host_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 host array for batches (the scene pipeline's ring), pinned where the backend
        copies to a GPU."""
        return np.empty(shape, np.float32)

    def describe(self) -> str:
        """The engine line's ``<describe()>``: backend, model, precision, bands, weights, and why
        ``auto`` chose it (``clay-run: engine <file> on onnx-cpu (small, int8, ...); auto: ...``)."""
        m = self.metadata
        text = f"{self.backend} ({m.model_size}, {self.runs_in()}, {len(m.bands)} bands, {m.weights})"
        return f"{text}; {self.choice}" if self.choice else text

    def runs_in(self) -> str:
        """The precision the engine computes in: the artifact's, unless its backend says otherwise."""
        return self.metadata.precision


class OnnxEngine(Engine):
    """ONNX Runtime on the CPU, or on CUDA through I/O binding: batches are copied into device input
    buffers allocated once (two per batch size, so the next batch's copy in overlaps this batch's
    compute) and outputs are copied back once."""

    def __init__(self, path: Path, metadata: EngineMetadata, cuda: bool, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        # On CUDA every heavy operator runs on the GPU: one CPU thread for the rest leaves the cores
        # to clay-run's chip readers. Idle workers sleep instead of spinning: on the CPU the engine
        # alone is as fast (ablation: 1.090 vs 1.093 chips/s spinning), and the readers get the
        # cores between operators (+4 to 5 points of engine-only speed end to end on the demo scene).
        options.intra_op_num_threads = threads or (1 if cuda else len(os.sched_getaffinity(0)))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: they reach users as EngineError lines of our own
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception zoo
            raise EngineError(f"{path}: ONNX Runtime cannot load it ({first_line(exc)[:300]})") from None
        self.backend = "onnx-cuda" if cuda else "onnx-cpu"
        self.path, self.metadata = path, metadata
        self.preferred_batch = 16 if cuda else 2
        self.pinned = False
        self._outputs = [o.name for o in self.session.get_outputs()]
        self._slots = _DeviceSlots(self.session, self._outputs) if cuda else None

    def _infer(self, pixels, lonlat, date):
        if self._slots is None:
            feeds = {"pixels": pixels, "lonlat": lonlat, "date": date}
            return dict(zip(self._outputs, self.session.run(self._outputs, feeds)))
        return self.run(self.stage(pixels, lonlat, date))

    def stage(self, pixels, lonlat, date, clock: StageClock = NULL_CLOCK) -> Staged:
        staged = super().stage(pixels, lonlat, date)
        if self._slots is None:
            return staged
        staged.slot = slot = self._slots.acquire(len(pixels))
        with clock.timed("copy in"):
            for value, array in zip(slot.inputs, (staged.pixels, staged.lonlat, staged.date)):
                value.update_inplace(array)
        return staged

    def run(self, staged: Staged, clock: StageClock = NULL_CLOCK) -> dict[str, np.ndarray]:
        if staged.slot is None:
            return super().run(staged, clock)
        try:
            with self._lock:
                if self._closed:
                    raise EngineError(f"{self.path.name}: the engine was closed")
                with clock.timed("compute"):
                    self.session.run_with_iobinding(staged.slot.binding)
                with clock.timed("copy out"):
                    outputs = staged.slot.binding.copy_outputs_to_cpu()
        finally:
            self._slots.release(staged.slot)
        return dict(zip(self._outputs, outputs))

    def host_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        array = super().host_buffer(shape)
        if self._slots is not None:
            from .cuda_host import pin

            self.pinned = pin(array)
        return array

    def _release(self) -> None:
        self._slots = None
        del self.session


class _DeviceSlot:
    """Device input buffers for one batch size, bound to the session with outputs on the device."""

    def __init__(self, session, outputs: list[str], shapes: dict[str, tuple[int, ...]]) -> None:
        import onnxruntime as ort

        self.inputs = [ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, "cuda", 0) for shape in shapes.values()]
        self.binding = session.io_binding()
        for name, value in zip(shapes, self.inputs):
            self.binding.bind_ortvalue_input(name, value)
        for name in outputs:
            self.binding.bind_output(name, "cuda")


class _DeviceSlots:
    """Two device slots per batch size: one being computed, the next being copied in."""

    PER_SIZE = 2

    def __init__(self, session, outputs: list[str]) -> None:
        self._session, self._outputs = session, outputs
        inputs = {i.name: i.shape for i in session.get_inputs()}
        self._sample = inputs
        self._free: dict[int, list[_DeviceSlot]] = {}
        self._made: dict[int, int] = {}
        self._available = threading.Condition()

    def acquire(self, batch: int) -> _DeviceSlot:
        with self._available:
            while not self._free.get(batch) and self._made.get(batch, 0) >= self.PER_SIZE:
                self._available.wait()
            if self._free.get(batch):
                return self._free[batch].pop()
            self._made[batch] = self._made.get(batch, 0) + 1
        shapes = {name: (batch, *[int(d) for d in shape[1:]]) for name, shape in self._sample.items()}
        return _DeviceSlot(self._session, self._outputs, shapes)

    def release(self, slot: _DeviceSlot) -> None:
        batch = slot.inputs[0].shape()[0]
        with self._available:
            self._free.setdefault(batch, []).append(slot)
            self._available.notify_all()


class TensorRTEngine(Engine):
    """A serialized TensorRT plan (+ its ``.json`` metadata sidecar), opened with the flavour that
    built it (TensorRT-RTX, or standard TensorRT 10/11: the same runtime API).

    Device buffers for the profile's largest batch and page-locked host buffers are allocated once;
    every call copies in, runs and copies out asynchronously on one CUDA stream. A TensorRT-RTX
    plan's runtime cache (kernels specialised for this GPU at first run) is read from
    ``runtime_cache`` and written back on :meth:`close`. Call :func:`open_engine`, which first checks
    that the plan can run here (:func:`~clay.runtime.tensorrt_plan.plan_unusable_reason`).
    """

    def __init__(self, path: Path, metadata: EngineMetadata, runtime_cache: Path | None = None) -> None:
        super().__init__()
        build = PlanBuild.of(metadata)
        try:
            trt, self._cudart = import_flavour(build.flavour), import_cudart()
        except ImportError as exc:
            raise EngineUnavailable(f"{path}: {exc} ({FLAVOURS[build.flavour].install})") from None
        self.backend, self.path, self.metadata, self.build = "tensorrt", path, metadata, build
        self._logger = capturing_logger(trt)
        self._runtime = trt.Runtime(self._logger)  # kept: the engine is used while its runtime lives
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise EngineUnavailable(f"{path}: {build.label} cannot deserialize it ({self._logger.first_error()})")
        self.runtime_cache = None
        if build.flavour == RTX:
            self.runtime_cache = RuntimeCacheFile(self._engine, runtime_cache or plan_runtime_cache(path))
            self._context = self._engine.create_execution_context(self.runtime_cache.config)
        else:
            self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EngineUnavailable(f"{path}: {build.label} cannot create an execution context ({self._logger.first_error()})")
        self._stream = _cuda_check(self._cudart.cudaStreamCreate())
        _, opt, max_shape = self._engine.get_tensor_profile_shape("pixels", 0)
        self.preferred_batch, self._max_batch = int(opt[0]), int(max_shape[0])
        self._names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._outputs = [n for n in self._names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._host, self._device = {}, {}
        shapes = self._max_shapes()
        for name in self._names:
            nbytes = int(np.prod(shapes[name])) * 4
            self._device[name] = _cuda_check(self._cudart.cudaMalloc(nbytes))
            pointer = _cuda_check(self._cudart.cudaMallocHost(nbytes))
            self._host[name] = np.ctypeslib.as_array(
                (np.ctypeslib.ctypes.c_float * (nbytes // 4)).from_address(pointer)
            )
            self._context.set_tensor_address(name, self._device[name])

    def describe(self) -> str:
        return f"{super().describe()}, {self.build.label}"

    def _max_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {**self.metadata.input_shapes, **self.metadata.output_shapes}
        return {name: (self._max_batch, *shape) for name, shape in shapes.items()}

    def _infer(self, pixels, lonlat, date):
        cudart, batch = self._cudart, pixels.shape[0]
        if batch > self._max_batch:
            raise EngineError(f"batch {batch} exceeds the plan's optimisation profile maximum {self._max_batch}")
        kind = cudart.cudaMemcpyKind
        for name, array in (("pixels", pixels), ("lonlat", lonlat), ("date", date)):
            self._context.set_input_shape(name, array.shape)
            host = self._host[name][: array.size]
            host[:] = array.ravel()
            _cuda_check(cudart.cudaMemcpyAsync(self._device[name], host.ctypes.data, array.nbytes,
                                               kind.cudaMemcpyHostToDevice, self._stream))  # fmt: skip
        if not self._context.execute_async_v3(int(self._stream)):
            raise EngineError(f"TensorRT execution failed ({self._logger.first_error()})")
        results = {}
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            host = self._host[name][: int(np.prod(shape))]
            _cuda_check(cudart.cudaMemcpyAsync(host.ctypes.data, self._device[name], host.nbytes,
                                               kind.cudaMemcpyDeviceToHost, self._stream))  # fmt: skip
            results[name] = host.reshape(shape)
        _cuda_check(cudart.cudaStreamSynchronize(self._stream))
        return {name: array.copy() for name, array in results.items()}

    def _release(self) -> None:
        if self.runtime_cache is not None:
            self.runtime_cache.save()
        for pointer in self._device.values():
            self._cudart.cudaFree(pointer)
        for array in self._host.values():
            self._cudart.cudaFreeHost(array.ctypes.data)
        self._cudart.cudaStreamDestroy(self._stream)
        self._host, self._device = {}, {}
        del self._context, self._engine


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
            from .openvino_engine import read_ir

            return EngineMetadata.from_props(read_ir(path)[0])
        return EngineMetadata.from_props(_onnx_metadata_props(path))
    except (MetadataError, json.JSONDecodeError) as exc:
        raise EngineError(f"{path}: {exc}") from None


def _onnx_metadata_props(path: Path) -> dict[str, str]:
    """``metadata_props`` through ONNX Runtime's own reader, so the runtime needs no ``onnx`` package."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise EngineError(f"{path}: not an ONNX model ONNX Runtime can read ({first_line(exc)[:300]})") from None
    return dict(session.get_modelmeta().custom_metadata_map)


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


def auto_order(present: list[str], cpu: CpuInfo) -> list[str]:
    """The backends ``auto`` tries, in order: GPUs first; on the CPU, OpenVINO's bf16 artifact before
    ONNX Runtime's int8 one only where the CPU has AMX (issue 27: on a 2-core AMX Xeon, bf16 on
    OpenVINO ran ~1.5x the int8 artifact; on this project's AVX-512 BF16 EPYC without AMX, 1.10x,
    0.91-1.22x over rounds: README, "bf16 on OpenVINO"), else after it."""
    order = [b for b in RUNTIME_BACKENDS if b in present]
    if not cpu.amx_bf16 and "openvino-cpu" in order and "onnx-cpu" in order:
        order.remove("openvino-cpu")
        order.insert(order.index("onnx-cpu") + 1, "openvino-cpu")
    return order


def open_engine(path: str | Path, backend: str = "auto", threads: int | None = None,
                runtime_cache: str | Path | None = None, cpu: CpuInfo | None = None) -> Engine:  # fmt: skip
    """Load an engine: a file, or an export folder (the artifact the backend should run, by the
    format table). ``auto`` takes the fastest backend present that the artifact is made for; from a
    folder, it passes over a plan that cannot run here and says why in the engine's ``fallback``, and
    on the CPU decides by ``cpu`` (default: this machine's, from ``/proc/cpuinfo``) between OpenVINO's
    bf16 and ONNX Runtime's int8 artifacts (:func:`auto_order`); the engine's ``choice`` says why.
    ``runtime_cache``: the file a TensorRT-RTX plan keeps its runtime cache in (default: beside it).

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
    folder = path if path.is_dir() else None
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
        from .openvino_engine import OpenVinoEngine

        engine: Engine = OpenVinoEngine(path, metadata, threads)
    else:
        engine = OnnxEngine(path, metadata, cuda=backend == "onnx-cuda", threads=threads)
    engine.fallback = fallback
    engine.choice = choice
    return engine


def cpu_choice(backend: str, precision: str, cpu: CpuInfo, present: list[str], folder: Path) -> str:
    """Why ``auto`` took a CPU backend for an export folder, for the engine line (empty for GPUs)."""
    if backend == "openvino-cpu":
        return f"auto: {cpu.model} has AMX (amx_bf16), so {precision} on OpenVINO"
    if backend != "onnx-cpu":
        return ""
    if not cpu.amx_bf16:
        return f"auto: {cpu.model} has no AMX (amx_bf16), so {precision} on ONNX Runtime"
    if "openvino-cpu" not in present:
        why = 'OpenVINO is not installed (pip install "clay-runtime[openvino]")'
    else:
        why = f"the folder has no {format_named('bf16').file_name} (clay-export --bf16-cpu)"
    return f"auto: {cpu.model} has AMX (amx_bf16) but {why}, so {precision} on ONNX Runtime"


def _artifact_in_folder(folder: Path, backend: str, present: list[str], cpu: CpuInfo) -> tuple[Path, str | None]:
    """What an export folder offers the requested backend, or (``auto``) the first backend of
    :func:`auto_order` present; a plan that cannot run here is passed over, and the second value
    says why."""
    passed_over = None
    for candidate in [backend] if backend != "auto" else auto_order(list(RUNTIME_BACKENDS), cpu):
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
    wanted = backend if backend != "auto" else " or ".join(auto_order(present, cpu))
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


def _cuda_check(result):
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise EngineError(f"CUDA error {error}")
    return values[0] if values else None
