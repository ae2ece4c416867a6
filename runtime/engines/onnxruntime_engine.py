"""ONNX Runtime on the CPU or on CUDA (``onnx-cpu``, ``onnx-cuda``), and the Clay metadata of an
``.onnx`` file read through ONNX Runtime's own reader (so the runtime needs no ``onnx`` package)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from ..errors import first_line
from ..metadata import EngineMetadata
from ..timing import StageClock
from .base import NULL_CLOCK, Engine, EngineError, Staged
from .cuda_host import pin


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


def onnx_metadata_props(path: Path) -> dict[str, str]:
    """``metadata_props`` through ONNX Runtime's own reader, so the runtime needs no ``onnx`` package."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise EngineError(f"{path}: not an ONNX model ONNX Runtime can read ({first_line(exc)[:300]})") from None
    return dict(session.get_modelmeta().custom_metadata_map)
