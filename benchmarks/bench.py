"""Interleaved timing of every backend on the same chips, so machine drift cancels in the ratios.

Each round runs every backend once, in an order rotated from round to round; a backend's speed-up
in a round is its chips/s divided by the baseline's chips/s in that same round, and the reported
speed-up is the median over rounds. Warm-up calls are not timed. "Best eager" is whichever of the
strong PyTorch candidates (eager or compiled, SDPA + reduced-precision autocast) was fastest in
this very run among those as accurate as the artifacts must be (min cosine vs the baseline at least
:data:`BEST_EAGER_BOUND`, the int8 artifact's bound: a fast PyTorch variant that breaks the model is
no competitor), so the comparison is always against the best PyTorch measured, not a chosen one.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from clay.runtime.formats import format_named

from .backends import Backend

BASELINE = "eager-fp32-clay"
BEST_EAGER = ("eager-bf16-sdpa", "compiled-bf16-sdpa", "eager-fp16-sdpa", "compiled-fp16-sdpa", "eager-fp32-sdpa")
BEST_EAGER_BOUND = format_named("int8").cosine_bound  # the loosest bound an exported artifact must meet


@dataclass
class Result:
    backend: str
    batch: int
    seconds: list[float] = field(default_factory=list)  # one timed call per round
    chips_per_s: list[float] = field(default_factory=list)
    ratio_vs_baseline: list[float] = field(default_factory=list)
    ratio_vs_best_eager: list[float] = field(default_factory=list)
    best_eager: str = ""
    best_eager_excluded: list[str] = field(default_factory=list)  # strong PyTorch below the bound, with why
    peak_rss_mb: float = 0.0  # process RSS at the peak of this backend's warm-up call
    call_memory_mb: float = 0.0  # how much that call raised it
    cosine_min: float = float("nan")
    max_abs_error: float = float("nan")
    gflops: float = 0.0
    peak_gflops: float | None = None
    peak_fraction: float | None = None

    def summary(self) -> dict:
        record = asdict(self)
        for key in ("chips_per_s", "ratio_vs_baseline", "ratio_vs_best_eager"):
            values = getattr(self, key)
            record[f"{key}_median"] = float(np.median(values)) if values else None
            record[f"{key}_min"] = float(np.min(values)) if values else None
            record[f"{key}_max"] = float(np.max(values)) if values else None
        return record


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssSampler:
    """Peak resident memory of this process while a block runs, sampled every 5 ms: the process
    also holds the other backends, so the useful figure is the rise during this backend's call."""

    def __enter__(self) -> RssSampler:
        self.before = self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def measure(
    backends: list[Backend],
    chips: tuple[np.ndarray, np.ndarray, np.ndarray],
    batch: int,
    repeats: int,
    flops_per_chip: int,
    peaks: dict[str, float | None],
) -> list[Result]:
    """Time every present backend at ``batch`` over ``repeats`` interleaved rounds."""
    present = [b for b in backends if b.run is not None]
    if BASELINE not in [b.name for b in present]:
        raise ValueError(f"the baseline {BASELINE} must be among the measured backends")
    pixels, lonlat, date = (a[:batch] for a in chips)
    results = {b.name: Result(b.name, batch) for b in present}
    precision = {b.name: b.precision for b in present}
    outputs = {}
    for backend in present:  # warm-up, fidelity and memory, one backend at a time
        with RssSampler() as memory:
            outputs[backend.name] = backend.run(pixels, lonlat, date)
        results[backend.name].peak_rss_mb = memory.peak
        results[backend.name].call_memory_mb = memory.peak - memory.before
    reference = outputs[BASELINE]
    for backend in present:
        out = outputs[backend.name]
        results[backend.name].cosine_min = float(cosine_rows(out, reference).min())
        results[backend.name].max_abs_error = float(np.abs(out - reference).max())
    for round_index in range(repeats):
        shift = round_index % len(present)
        for backend in present[shift:] + present[:shift]:
            start = time.perf_counter()
            backend.run(pixels, lonlat, date)
            results[backend.name].seconds.append(time.perf_counter() - start)
    candidates = [n for n in BEST_EAGER if n in results]
    strong = [n for n in candidates if results[n].cosine_min >= BEST_EAGER_BOUND] or [BASELINE]
    excluded = [f"{n} (min cosine {results[n].cosine_min:.4f})" for n in candidates if n not in strong]
    best_eager = min(strong, key=lambda n: float(np.median(results[n].seconds)))
    for result in results.values():
        result.best_eager, result.best_eager_excluded = best_eager, excluded
        for k, seconds in enumerate(result.seconds):  # ratios within the same round only
            result.chips_per_s.append(batch / seconds)
            result.ratio_vs_baseline.append(results[BASELINE].seconds[k] / seconds)
            result.ratio_vs_best_eager.append(results[best_eager].seconds[k] / seconds)
        result.gflops = float(np.median(result.chips_per_s)) * flops_per_chip / 1e9
        result.peak_gflops = peaks.get(precision[result.backend])
        if result.peak_gflops:
            result.peak_fraction = result.gflops / result.peak_gflops
    return list(results.values())
