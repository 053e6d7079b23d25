"""What the CPU at hand can do, and the precision and memory layout `auto` picks for it.

bf16 autocast is a win on a CPU only where the CPU has bf16 arithmetic of its own (AVX-512 BF16 or AMX on x86,
the BF16 extension on ARM): oneDNN then runs bf16 convolutions and matrix products natively. Elsewhere every
bf16 operation is converted to float32 and back, and the `cifar` preset ran ten times slower in bf16 than in
fp32 on an AVX2-only CPU (docs/PERFORMANCE.md, "Precision and layout per CPU kind").

The memory layout does not follow it: channels_last stepped 1.1 to 1.3 times faster than NCHW for the paper and
`cifar` nets in fp32 and bf16 on an AVX-512 BF16 CPU, and 1.1 times faster with the kernels held to AVX2 (same
section), so `auto` keeps it on every CPU kind measured.

The features are plain booleans, read from torch (which knows the x86 ones) and /proc/cpuinfo (ARM's), so that
the choice can be tested for every kind of CPU by handing in the features of one.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class CpuFeatures:
    """The instruction-set features that decide precision and layout."""

    avx2: bool = False
    avx512: bool = False
    avx512_bf16: bool = False  # AVX-512 BF16: bf16 dot products (AMD Zen 4 and later, Intel Cooper Lake)
    amx: bool = False  # Intel AMX tiles (Sapphire Rapids and later): bf16 matrix products
    arm_bf16: bool = False  # the ARMv8.6 BF16 extension (Graviton 3, Apple M2, Neoverse V1/N2)

    @property
    def kind(self) -> str:
        """A short name for the CPU's class: AMX, AVX-512 BF16, AVX-512, AVX2, ARM BF16 or basic."""
        if self.amx:
            return "AMX"
        if self.avx512_bf16:
            return "AVX-512 BF16"
        if self.avx512:
            return "AVX-512"
        if self.avx2:
            return "AVX2"
        if self.arm_bf16:
            return "ARM BF16"
        return "basic"

    @property
    def native_bf16(self) -> bool:
        return self.amx or self.avx512_bf16 or self.arm_bf16


@functools.cache
def detect() -> CpuFeatures:
    """This machine's features (torch's own x86 checks; the ARM flag from /proc/cpuinfo), held to the instruction
    set oneDNN is limited to by ONEDNN_MAX_CPU_ISA where that is set (oneDNN then runs no kernel above it)."""
    cpu = torch.cpu
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")
    if x86:
        found = CpuFeatures(avx2=bool(cpu._is_avx2_supported()), avx512=bool(cpu._is_avx512_supported()),
                            avx512_bf16=bool(cpu._is_avx512_bf16_supported()),
                            amx=bool(cpu._is_amx_tile_supported()))
        return capped(found, os.environ.get("ONEDNN_MAX_CPU_ISA", ""))
    return CpuFeatures(arm_bf16="bf16" in _cpuinfo_flags())


def capped(features: CpuFeatures, max_isa: str) -> CpuFeatures:
    """The features left under oneDNN's ONEDNN_MAX_CPU_ISA (SSE41, AVX, AVX2, AVX2_VNNI, AVX512_CORE,
    AVX512_CORE_VNNI, AVX512_CORE_BF16, AVX512_CORE_FP16, AVX512_CORE_AMX, ALL; '' or unknown: no cap)."""
    isa = max_isa.strip().upper()
    if isa in ("SSE41", "AVX"):
        return CpuFeatures()
    if isa.startswith("AVX2"):
        return CpuFeatures(avx2=features.avx2)
    if isa in ("AVX512_CORE", "AVX512_CORE_VNNI"):
        return CpuFeatures(avx2=features.avx2, avx512=features.avx512)
    if isa in ("AVX512_CORE_BF16", "AVX512_CORE_FP16"):
        return CpuFeatures(avx2=features.avx2, avx512=features.avx512, avx512_bf16=features.avx512_bf16)
    return features


def _cpuinfo_flags() -> set[str]:
    """The words of /proc/cpuinfo's 'flags' (x86) or 'Features' (ARM) line; empty where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def auto_precision(device: torch.device, features: CpuFeatures | None = None) -> str:
    """train.precision=auto: bf16 on CUDA and on CPUs with bf16 arithmetic of their own, fp32 elsewhere."""
    if device.type == "cuda":
        return "bf16"
    if device.type != "cpu":
        return "fp32"
    return "bf16" if (features or detect()).native_bf16 else "fp32"


def auto_channels_last(device: torch.device, features: CpuFeatures | None = None) -> str:
    """train.channels_last=auto: on for CUDA and every CPU kind measured (AVX-512 BF16, and AVX2 kernels); a CPU
    kind found faster in NCHW gets its rule here, with its measurement in docs/PERFORMANCE.md."""
    del features  # the same choice for every kind measured so far
    return "on" if device.type in ("cpu", "cuda") else "off"


def emulated_bf16_warning(precision: str, device: torch.device, features: CpuFeatures | None = None) -> str:
    """The one-line warning for bf16 asked for on a CPU that only emulates it ('' when there is nothing to say)."""
    f = features or detect()
    if precision != "bf16" or device.type != "cpu" or f.native_bf16:
        return ""
    return (f"warning: train.precision=bf16 on a CPU without bf16 arithmetic ({f.kind}): it is emulated and "
            "several times slower than fp32; train.precision=auto picks fp32 here")
