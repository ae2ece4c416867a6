"""The physical limit next to each measurement: encoder FLOPs per chip and the CPU's peak rates.

FLOPs are counted from the model's shapes (multiply-adds × 2), so they follow the size and band
groups exactly. Peaks come from the CPU's own flags and reported clock; the per-core rates assume
two FMA pipes, which holds for current x86 server cores (Zen 4 runs 512-bit ops as two 256-bit halves).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# A chain of dependent register-to-register integer adds retires one add per cycle on every x86
# core since the P6, so adds / seconds is the clock the core actually runs at (boost included),
# which /proc/cpuinfo's nominal "cpu MHz" is not. The addend is a register, not an immediate: with
# add-immediate the first version of this probe read an impossible 12 GHz on a recent server core
# (some cores run such chains faster than one add per cycle), and any reading above a plausible
# clock is discarded for the nominal one.
_CLOCK_PROBE = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
    unsigned long x = 0, n = 400000000UL;
    volatile unsigned long one_source = 1;
    unsigned long one = one_source;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (unsigned long i = 0; i < n; i += 10) {
        __asm__ volatile("add %1, %0\n add %1, %0\n add %1, %0\n add %1, %0\n add %1, %0\n"
                         "add %1, %0\n add %1, %0\n add %1, %0\n add %1, %0\n add %1, %0" : "+r"(x) : "r"(one));
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%f\n", n / ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9) / 1e6);
    return x == 0;
}
"""


MAX_PLAUSIBLE_MHZ = 6500.0  # above any shipping x86 core's boost clock


def measured_clock_mhz() -> float | None:
    """The running clock from a dependent-add loop compiled with the system C compiler (x86 only);
    ``None`` where there is no compiler, no x86, or a reading no x86 core can give."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or platform.machine() not in ("x86_64", "AMD64"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        source, binary = Path(tmp) / "clock.c", Path(tmp) / "clock"
        source.write_text(_CLOCK_PROBE)
        try:
            subprocess.run([compiler, "-O1", "-o", str(binary), str(source)], check=True, capture_output=True)
            runs = [float(subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout)
                    for _ in range(3)]  # fmt: skip
        except (OSError, subprocess.CalledProcessError, ValueError):
            return None
    clock = max(runs)
    return clock if clock < MAX_PLAUSIBLE_MHZ else None  # a core that beats the chain: trust nothing

from clay.runtime.bands import BAND_GROUPS, GRID_SIZE, PATCH_SIZE
from clay.runtime.engines.cpu import cpu_info
from clay.training.sizes import ModelSize


def encoder_flops(size: ModelSize, groups=tuple(BAND_GROUPS)) -> int:
    """FLOPs of one chip through the inference encoder (patch embedding + transformer)."""
    tokens_per_group = GRID_SIZE * GRID_SIZE
    n = len(groups) * tokens_per_group + 2
    inner, hidden = size.heads * size.dim_head, size.dim * size.mlp_ratio
    channels = sum(len(BAND_GROUPS[g]) for g in groups)
    patch = 2 * channels * PATCH_SIZE * PATCH_SIZE * size.dim * tokens_per_group
    per_layer = (
        2 * n * size.dim * 3 * inner  # qkv projection
        + 2 * 2 * n * n * inner  # q·kᵀ and attention·v
        + 2 * n * inner * size.dim  # output projection
        + 2 * 2 * n * size.dim * hidden  # MLP up and down
    )
    return patch + size.depth * per_layer


@dataclass(frozen=True)
class CpuPeak:
    model: str
    cores: int
    mhz: float
    clock_source: str
    fp32_gflops: float
    bf16_gflops: float | None
    int8_gops: float | None
    assumption: str
    features: str = ""  # the flags that pick the CPU path: "AMX-BF16 no, AVX512-BF16 yes, VNNI yes"


def cpu_peak() -> CpuPeak:
    """Peak fp32 / bf16 / int8 rates of the CPUs this process may use."""
    cpu = cpu_info()
    cores = len(os.sched_getaffinity(0))
    measured = measured_clock_mhz()
    clock_source = "measured (dependent-add loop)" if measured else "reported by /proc/cpuinfo (nominal)"
    mhz = measured or cpu.mhz
    if "avx512f" in cpu.flags:
        lanes = 8 if cpu.vendor == "AuthenticAMD" else 16  # 32-bit lanes per FMA pipe
    elif "avx2" in cpu.flags:
        lanes = 8
    else:
        lanes = 4
    fp32_per_cycle = 2 * 2 * lanes  # 2 pipes × FMA (2 FLOPs) × lanes
    ghz = mhz / 1000
    fp32 = cores * ghz * fp32_per_cycle
    bf16 = fp32 * 2 if cpu.native_bf16 else None
    int8 = fp32 * 4 if cpu.vnni else None
    assumption = (f"{cores} cores × {ghz:.2f} GHz ({clock_source}) × {fp32_per_cycle} fp32 FLOP/cycle "
                  f"(2 FMA pipes × {lanes} lanes); bf16 ×2 with avx512_bf16, int8 ×4 with VNNI; AMX tiles not modelled")  # fmt: skip
    features = cpu.describe().removeprefix(cpu.model).strip(" ()")
    return CpuPeak(cpu.model, cores, mhz, clock_source, fp32, bf16, int8, assumption, features)


@dataclass(frozen=True)
class GpuPeak:
    name: str
    fp32_gflops: float
    fp16_gflops: float
    bf16_gflops: float
    assumption: str


def gpu_peak(side: int = 8192, repeats: int = 10) -> GpuPeak:
    """The GPU's attainable dense rates, measured: a ``side``³ matrix product per precision.

    Datasheet figures assume boost clocks and sparsity options a transformer never sees, and differ
    between SXM and PCIe boards of one name, so the reference is what this card does on the one
    operation that dominates the encoder. fp32 is true fp32 (TF32 off, PyTorch's default for matmul).
    """
    import torch

    rates = {}
    for label, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        a = torch.randn(side, side, device="cuda", dtype=dtype)
        b = torch.randn(side, side, device="cuda", dtype=dtype)
        for _ in range(3):
            torch.matmul(a, b)
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            torch.matmul(a, b)
        stop.record()
        torch.cuda.synchronize()
        rates[label] = 2 * side**3 * repeats / (start.elapsed_time(stop) / 1e3) / 1e9
        del a, b
    torch.cuda.empty_cache()
    assumption = f"measured: {side}³ torch.matmul per precision, mean of {repeats} after 3 warm-ups (TF32 off)"
    return GpuPeak(torch.cuda.get_device_name(0), rates["fp32"], rates["fp16"], rates["bf16"], assumption)
