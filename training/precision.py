"""Which reduced precision this machine runs fast: shared by training (Lightning's precision
setting) and the benchmarks (which half-precision baselines are worth measuring), without either
importing the other's stack."""

from __future__ import annotations

from clay.runtime.engines.cpu import cpu_info


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: the CPU features that make bf16 autocast faster than fp32."""
    return cpu_info().native_bf16


def default_precision() -> str:
    """The release trained in bf16-mixed; use it wherever the hardware has bf16, else fp32."""
    import torch

    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_bf16() else "32-true"
