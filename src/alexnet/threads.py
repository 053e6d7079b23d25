"""Compiled CPU loops that release the GIL, run on several Python threads at once.

The Numba kernels (lrn/cpu.py, data/cutviews.py) each handle a range [first, last) of independent items
and release the GIL while they run, so a few Python threads give them several cores without a second
thread layer (Numba's own parallel mode would start an OpenMP or TBB pool beside torch's).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

_pool: ThreadPoolExecutor | None = None
_pool_owner = (-1, 0)  # (process id, workers) the pool was made for: a forked child must make its own
_pool_lock = threading.Lock()


def split_work(work: Callable[[int, int], None], items: int, min_per_task: int) -> None:
    """Run work(first, last) over [0, items) in pieces on torch.get_num_threads() threads, this one included.

    Each piece holds at least `min_per_task` items, enough to hide the hand-off to a thread (tens of
    microseconds). There are four pieces per thread, taken in turn, so a thread slowed by other work on the
    machine takes fewer of them instead of holding up the rest."""
    threads = max(1, min(torch.get_num_threads(), items // min_per_task))
    if threads == 1:
        work(0, items)
        return
    tasks = min(threads * 4, items // min_per_task)
    bounds = [items * i // tasks for i in range(tasks + 1)]
    pieces = iter(zip(bounds[:-1], bounds[1:]))
    lock = threading.Lock()

    def take_pieces() -> None:
        while True:
            with lock:
                piece = next(pieces, None)
            if piece is None:
                return
            work(*piece)

    futures = [_executor(threads - 1).submit(take_pieces) for _ in range(threads - 1)]
    take_pieces()
    for future in futures:
        future.result()


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_owner
    with _pool_lock:
        if _pool is None or _pool_owner != (os.getpid(), workers):
            if _pool is not None and _pool_owner[0] == os.getpid():
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="alexnet-cpu")
            _pool_owner = (os.getpid(), workers)
        return _pool
