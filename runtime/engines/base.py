"""The interface every backend implements (:class:`Engine`) and the errors engines raise.

Every backend takes the exported graph's inputs as numpy arrays and returns numpy outputs, so the
scene pipeline and services embedding us never see which one runs. Torch-free on purpose.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..metadata import EngineMetadata
from ..timing import NullClock, StageClock

NULL_CLOCK = NullClock()


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
        model = m.model_size if m.model == "clay-v0" else f"{m.model} {m.model_size}, {m.sensor}, conventions {m.preprocessing.get('conventions')}"
        text = f"{self.backend} ({model}, {self.runs_in()}, {len(m.bands)} bands, {m.weights})"
        return f"{text}; {self.choice}" if self.choice else text

    def runs_in(self) -> str:
        """The precision the engine computes in: the artifact's, unless its backend says otherwise."""
        return self.metadata.precision
