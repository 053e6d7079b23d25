"""Shared helpers for the benchmarks: timing, memory, real data, machine description, result tables."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
# Real photos for benchmarks only, next to the repository (a fresh clone elsewhere has none: benchmarks that
# need them say so and skip); ALEXNET_BENCH_DATA points elsewhere (a GPU machine with a copy of them).
SHARED_DATA = Path(os.environ.get("ALEXNET_BENCH_DATA", ROOT.parent / "shared" / "data"))


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from alexnet.hardware import auto_channels_last, auto_precision, detect

    cpu_device = torch.device("cpu")
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "date": date.today().isoformat(), "python": platform.python_version(), "cpu_kind": detect().kind,
            "auto_precision": auto_precision(cpu_device), "auto_channels_last": auto_channels_last(cpu_device)}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], Any], warmup: int, repeats: int, device: torch.device) -> list[float]:
    """Seconds per call of `step`, after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def make_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              autocast: contextlib.AbstractContextManager | None = None) -> Callable[[], None]:
    """One training step on the fixed batch (x, y): forward under `autocast` (none: as it is), cross-entropy,
    backward, update."""
    context = autocast if autocast is not None else contextlib.nullcontext()

    def step() -> None:
        with context:
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (the kernel's high-water mark), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(c) for c in task.read_text().split()]
        except (OSError, ValueError):
            pass
    return out


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def _pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (forked workers, libraries) split between their users."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return _status_kib(pid, "VmRSS")


class MemorySampler:
    """Peak memory of this process and its children (DataLoader workers), sampled every `interval` s.

    Reports peak `pss_mb` (the tree's proportional set size: a page shared by a worker and its parent
    counts once), and this process's `rss_mb` with its parts `anon_mb` and `file_mb` (anonymous and
    file-backed resident memory: the pages of a memory map that were read show up in the latter).
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = {"pss_mb": 0.0, "rss_mb": 0.0, "anon_mb": 0.0, "file_mb": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        me = os.getpid()
        now = {"pss_mb": sum(_pss_kib(p) for p in _tree(me)) / 1024, "rss_mb": _status_kib(me, "VmRSS") / 1024,
               "anon_mb": _status_kib(me, "RssAnon") / 1024, "file_mb": _status_kib(me, "RssFile") / 1024}
        for k, v in now.items():
            self.peak[k] = max(self.peak[k], v)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def real_store(name: str, size: int) -> Path | None:
    """A store of SHARED_DATA/name at size S, prepared once into benchmarks/out/stores; None without data."""
    src = SHARED_DATA / name
    if not src.is_dir():
        return None
    from alexnet.data.store import is_store
    from alexnet.prepare.writer import prepare

    out = OUT / "stores" / f"{name}-s{size}"
    if not is_store(out):
        print(f"preparing {src} into {out} (once) ...", flush=True)
        prepare(src, out, size=size, progress=False)
    return out


def no_data_message(name: str) -> str:
    return f"skipped: no real images at {SHARED_DATA / name} (this benchmark reads ../shared/data from the repo root)"


def write_json(path: str | Path, data: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2))


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
