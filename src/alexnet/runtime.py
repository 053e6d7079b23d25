"""The process's runtime, set once when a command starts: device, precision, memory layout, CPU threads,
host memory (the CPU-dependent choices of `auto`: alexnet.hardware). Nothing in the model or the training loop
changes these.

Threads: `train.threads=-1` takes the cores idle when training starts (counted from /proc/stat over a short
window: the load average trails the last minute, so a process that has just ended would still count). On a
small machine two threads beat one when the cores are idle and lose when another process holds one
(docs/PERFORMANCE.md), so counting the idle cores picks the better in both cases. The CPU count is the
process's affinity (a container's or `taskset`'s limit), not the machine's.

Host memory: glibc's malloc maps every block above 32 MiB (at most) on its own and unmaps it on free; a CPU
training step allocates and frees dozens of such tensors, so each step faults them in again page by page.
`keep_freed_memory` serves every block from the heap and never trims it, so steps after the first reuse the
same memory (docs/PERFORMANCE.md has the page-fault counts). The cost: the process keeps its peak heap.
mallopt is process-wide and holds for allocations made after it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from alexnet.errors import UserError
from alexnet.hardware import CpuFeatures, auto_channels_last, auto_precision, detect, emulated_bf16_warning

if TYPE_CHECKING:
    from alexnet.config import Config

def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """auto: this rank's GPU when there is one, else the CPU. Asking for CUDA without one is bad input."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} was asked for but no CUDA GPU is visible: use --device cpu")
        if name == "cuda":
            return torch.device(f"cuda:{local_rank}")
        index = torch.device(name).index or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) are visible")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise UserError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N")


def cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies summed over all CPUs from /proc/stat, or None where there is no such file."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if first[0] != "cpu":
        return None
    values = [int(v) for v in first[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    # guest time is already counted in user time (fields 9 and 10)
    return idle, sum(values[:8])


def idle_cores_between(before: tuple[int, int], after: tuple[int, int], cores: int) -> float:
    """Cores idle on average between two cpu_times() samples."""
    total = after[1] - before[1]
    if total <= 0:
        return float(cores)
    return cores * (after[0] - before[0]) / total


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's or `taskset`'s limit), not every core
    of the machine; os.cpu_count() where affinity is not available."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def idle_cores(window: float = 0.25) -> int:
    """The number of this process's cores idle now (at least 1), measured over `window` seconds. The idle share
    is the machine's, applied to the cores this process may use."""
    cores = usable_cores()
    before = cpu_times()
    if before is None:
        return cores
    time.sleep(window)
    after = cpu_times()
    if after is None:
        return cores
    return max(1, min(cores, round(idle_cores_between(before, after, cores))))


def compute_threads(setting: int) -> int:
    """torch's thread count for `train.threads`: 0 leaves torch's default (0 returned), N > 0 is N, -1 the
    idle cores."""
    return idle_cores() if setting < 0 else setting


_M_TRIM_THRESHOLD = -1  # from <malloc.h>
_M_MMAP_MAX = -4
_DEFAULT_MMAP_MAX = 65536  # glibc's defaults, for `release_freed_memory`
_DEFAULT_TRIM_THRESHOLD = 128 * 1024


def keep_freed_memory() -> bool:
    """Serve every allocation from the heap and never give freed heap back to the system.

    Returns True when the setting took (Linux with glibc), False elsewhere, where nothing changes."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    # no mmap for large blocks: they come from the heap and return to it; and no trimming of the heap's top
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def release_freed_memory() -> bool:
    """Back to glibc's defaults (large blocks mapped and unmapped on their own); True where it applied."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD))


@functools.cache
def _mallopt():  # -> ctypes function or None
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        function = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def resolved_precision(cfg: Config, device: torch.device) -> str:
    """train.precision with `auto` decided for this device (alexnet.hardware.auto_precision)."""
    value = cfg.train.precision
    return auto_precision(device) if value == "auto" else value


def resolved_channels_last(cfg: Config, device: torch.device) -> str:
    """train.channels_last with `auto` decided for this device (alexnet.hardware.auto_channels_last)."""
    value = cfg.train.channels_last
    return auto_channels_last(device) if value == "auto" else value


# what `auto` meant before it followed the CPU's features: a run saved then resumes as it ran
_LEGACY_AUTO = {"precision": {"cuda": "bf16", "cpu": "fp32"}, "channels_last": {"cuda": "on", "cpu": "on"}}


def settle_auto(cfg: Config, device: torch.device, features: CpuFeatures | None = None,
                saved: dict | None = None) -> list[str]:
    """Write the choices for `auto` precision and layout into the config, so that config.yaml and every
    checkpoint say what ran; the lines to print: the choice, and a warning for bf16 asked for on a CPU that only
    emulates it. `saved`: the train section of the config of a run being resumed, whose choices are kept, so a
    resume on another machine repeats the run's arithmetic."""
    t = cfg.train
    f = features or detect()
    said = []
    kept = []
    for key, pick in (("precision", auto_precision), ("channels_last", auto_channels_last)):
        if getattr(t, key) != "auto":
            continue
        before = (saved or {}).get(key)
        if before == "auto":
            before = _LEGACY_AUTO[key].get(device.type)
        if before in ("fp32", "bf16", "on", "off"):
            setattr(t, key, before)
            kept.append(key)
        else:
            setattr(t, key, pick(device, f))
    if kept:
        said.append(f"resumed with the run's own {' and '.join(kept)}: precision {t.precision}, channels_last "
                    f"{t.channels_last}")
    else:
        where = f"CPU ({f.kind})" if device.type == "cpu" else str(device)
        said.append(f"settings for the {where}: precision {t.precision}, channels_last {t.channels_last}")
    warning = emulated_bf16_warning(t.precision, device, f)
    if warning:
        said.append(warning)
    return said


def precision_context(cfg: Config, device: torch.device) -> contextlib.AbstractContextManager:
    """autocast to bfloat16 where the precision (decided for the device when `auto`) is bf16, else nothing."""
    if resolved_precision(cfg, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    """channels_last memory for the model and its input (decided for the device when `auto`)."""
    return resolved_channels_last(cfg, device) == "on"


def set_up_cpu(cfg: Config) -> None:
    """Threads and host memory for a run, once per process at its start."""
    threads = compute_threads(cfg.train.threads)
    if threads:
        torch.set_num_threads(threads)
    if cfg.train.keep_freed_memory:
        keep_freed_memory()
