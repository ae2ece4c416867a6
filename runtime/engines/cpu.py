"""What this machine's CPU is, from ``/proc/cpuinfo``: its model name and the instruction-set flags
that decide which CPU path is fastest. Torch-free on purpose; one reader for the runtime's backend
choice, training's precision default and ``clay-bench``'s report.

The flags are the Linux kernel's names (``arch/x86/include/asm/cpufeatures.h``): ``amx_bf16`` (Intel
AMX tiles with bf16 dot products: Sapphire Rapids and later Xeons), ``avx512_bf16`` (AVX-512 bf16
dot products: Cooper Lake, AMD Zen 4/5), ``avx512_vnni`` / ``avx_vnni`` (int8 dot products).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuInfo:
    """The first logical CPU's model name, vendor and flags (every core of one machine has the same)."""

    model: str
    vendor: str
    flags: frozenset[str]
    mhz: float = 0.0  # the nominal clock the kernel reports ("cpu MHz"), not the running one

    @property
    def amx_bf16(self) -> bool:
        """AMX with bf16: where bf16 matmuls on OpenVINO beat the int8 ONNX Runtime path (issue 27)."""
        return "amx_bf16" in self.flags

    @property
    def native_bf16(self) -> bool:
        """bf16 dot products in hardware (AMX or AVX-512 BF16): bf16 runs natively, not emulated."""
        return self.amx_bf16 or "avx512_bf16" in self.flags

    @property
    def vnni(self) -> bool:
        return "avx512_vnni" in self.flags or "avx_vnni" in self.flags

    @property
    def cpu_class(self) -> str:
        """What decides the CPU engine (issue 35): ``amx`` (AMX tiles: OpenVINO's bf16 or int8),
        ``vnni`` (int8 dot products without AMX: int8, on OpenVINO where its artifact is offered) or
        ``neither`` (no int8 or AMX dot products: ONNX Runtime as before; not measured)."""
        return "amx" if self.amx_bf16 else "vnni" if self.vnni else "neither"

    def describe(self) -> str:
        """``Intel(R) Xeon(R) Platinum 8488C (AMX-BF16 yes, AVX512-BF16 yes, VNNI yes)``."""
        def yes(flag: bool) -> str:
            return "yes" if flag else "no"

        return (f"{self.model} (AMX-BF16 {yes(self.amx_bf16)}, AVX512-BF16 {yes('avx512_bf16' in self.flags)}, "
                f"VNNI {yes(self.vnni)})")  # fmt: skip


def parse_cpuinfo(text: str) -> CpuInfo:
    """A :class:`CpuInfo` from the text of ``/proc/cpuinfo`` (tests pass their own)."""
    model = vendor = ""
    mhz = 0.0
    flags: frozenset[str] | None = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags" and flags is None:
            flags = frozenset(value.split())
        elif key == "cpu MHz" and not mhz:
            mhz = float(value)
    return CpuInfo(model or platform.processor() or "unknown CPU", vendor, flags or frozenset(), mhz)


def cpu_info() -> CpuInfo:
    """This machine's CPU; an unknown one with no flags where ``/proc/cpuinfo`` cannot be read."""
    try:
        return parse_cpuinfo(CPUINFO.read_text())
    except OSError:
        return parse_cpuinfo("")
