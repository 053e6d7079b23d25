"""How many CPU threads to compute on: `train.threads=-1` takes the cores that are idle when training starts.

On a 2-core machine the `cifar` preset's bfloat16 step is 1.26x faster on two threads than on one when the
machine is otherwise idle, but 1.2 to 1.4x slower when another busy process holds a core (each op then
waits for a descheduled thread; docs/PERFORMANCE.md). Counting the idle cores over a short window at start
picks the better of the two in both cases. The load average is no use for this: it trails the last minute,
so a process that has just ended still counts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


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
