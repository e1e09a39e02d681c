"""The machine a measurement ran on: its CPU model, core count and the CPU features that decide
how fast it runs a ResNet (read from /proc/cpuinfo).

A speed means nothing without where it was measured: `bench`, `tune` and every script under
benchmarks/ record this. It imports nothing from the package, so anything can use it.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["CPU_FLAGS", "cpu_flags", "cpu_model", "describe_machine"]

# The CPU features that decide how fast a CPU runs a ResNet: AVX2 and AVX-512 for FP32, the VNNI
# dot products for INT8, AVX-512 BF16 and the AMX tiles for BF16 and INT8.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
_CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo() -> tuple[str, frozenset[str]]:
    """The first processor's model name and flags; without /proc/cpuinfo (not Linux), what
    ``platform`` knows and no flags."""
    model, flags = "", frozenset[str]()
    try:
        text = _CPUINFO.read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = frozenset(value.split())
    return model or platform.processor() or platform.machine(), flags


def cpu_model() -> str:
    """The CPU's model name, e.g. "AMD EPYC 7B13"."""
    return _cpuinfo()[0]


def cpu_flags() -> tuple[str, ...]:
    """Those of ``CPU_FLAGS`` this CPU has, in ``CPU_FLAGS``' order."""
    flags = _cpuinfo()[1]
    return tuple(flag for flag in CPU_FLAGS if flag in flags)


def describe_machine() -> str:
    """One line: the CPU model, its core count and the features of ``CPU_FLAGS`` it has."""
    present = cpu_flags()
    return f"{cpu_model()}, {os.cpu_count()} CPUs, flags: {' '.join(present) or 'none of ' + '/'.join(CPU_FLAGS)}"
