"""Keep the host memory a training step frees inside the process, so the next step reuses it (glibc only).

glibc's malloc hands every block above 32 MiB (at most) to its own mmap and unmaps it on free. A CPU training
step at batch 128 allocates and frees dozens of such tensors (conv1's output alone is 148 MB), so each step
the kernel maps them again one 4 KiB page fault at a time, zero-filling every page: measured on the 2-core
machine of docs/PERFORMANCE.md, 390,000 page faults (1.5 GB) and about 1 s of system time per step of the
paper preset. With every block served from the heap and the heap never trimmed, the step after the first few
reuses the same memory and takes no page faults at all. The cost: the process keeps its peak heap (the
paper preset at batch 128: 3.3 GB resident against 2.8 GB).

mallopt is process-wide and holds for allocations made after it; torch's tensors come from malloc on Linux.
"""

from __future__ import annotations

import ctypes
import functools
import platform
import sys

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
