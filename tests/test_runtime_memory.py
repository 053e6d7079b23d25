"""alexnet.runtime: freed host memory is reused, so a second large tensor takes no new page faults."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = r"""
import resource, sys, torch
from alexnet.runtime import keep_freed_memory
assert keep_freed_memory()
faults = []
for step in range(12):  # a step's worth of big tensors (above glibc's largest mmap threshold, 32 MiB), freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.empty(64 << 20, dtype=torch.uint8).fill_(1)
    b = torch.empty(48 << 20, dtype=torch.uint8).fill_(2)
    del a, b
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(faults)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_freed_large_block_is_reused_without_page_faults():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    faults = [int(f) for f in out.stdout.strip().splitlines()[-1].strip("[]").split(",")]
    # 112 MiB mapped afresh is 28,672 faults of 4 KiB pages (the first step pays them); once the heap has
    # settled (a few steps: blocks freed between others coalesce), the last steps reuse it and map nothing
    assert faults[0] >= 28672 * 0.9, faults
    assert sorted(faults[-6:])[3] < 200, faults  # most of the last six steps
