"""What this machine's CPU is and which fast paths it has: model name and the instruction-set flags that decide
whether bfloat16 and INT8 kernels are native (read from ``/proc/cpuinfo``)."""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["BF16_FLAGS", "CPU_FLAGS", "INT8_FLAGS", "cpu_flags", "cpu_model", "cpu_signature"]

#: CPU features that decide which fast paths exist (/proc/cpuinfo flag names)
CPU_FLAGS: tuple[str, ...] = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
)
#: any of these makes bfloat16 arithmetic native (AVX512-BF16 or AMX-BF16)
BF16_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")
#: any of these makes INT8 dot products native (VNNI on AVX-512 or AVX2, AMX-INT8)
INT8_FLAGS: tuple[str, ...] = ("avx512_vnni", "avx_vnni", "amx_int8")

_CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo() -> str:
    try:
        return _CPUINFO.read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """CPU model from ``/proc/cpuinfo`` ("model name"), else ``platform.processor()``."""
    for line in _cpuinfo().splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> list[str]:
    """The flags of :data:`CPU_FLAGS` this CPU reports (empty where /proc/cpuinfo is unreadable)."""
    present: set[str] = set()
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            present.update(line.split(":", 1)[1].split())
    return [f for f in CPU_FLAGS if f in present]


def cpu_signature() -> dict[str, object]:
    """``{"cpu_model": str, "cpu_flags": [...]}``: what must match for a speed measurement to hold here."""
    return {"cpu_model": cpu_model(), "cpu_flags": cpu_flags()}
