"""Seconds per stage of a run (read, copy in, compute, copy out, write...), summed over threads."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager


class StageClock:
    """Seconds spent per stage. Stages run in several threads at once (chip reads in parallel, the
    engine beside the writer), so the stages can add up to more than the wall time. A stage timed
    inside another on the same thread (the patch raster inside the writes) counts once: as itself,
    and not in the stage around it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()
        self._open = threading.local()  # per thread: [seconds of inner stages] of each timed stage open

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextmanager
    def timed(self, stage: str):
        stack = self._open.__dict__.setdefault("stack", [])
        stack.append(0.0)
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            inner = stack.pop()
            if stack:
                stack[-1] += elapsed
            self.add(stage, elapsed - inner)

    def summary(self) -> str:
        with self._lock:
            return ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in self.seconds.items())


#: A clock that keeps nothing, for callers that do not ask where the time went.
class NullClock(StageClock):
    def add(self, stage: str, seconds: float) -> None:
        return None
