"""Large per-batch host arrays whose memory is reused once nothing refers to them any more.

A fresh 77 MB float32 batch (128 views of 224 x 224) costs the kernel a zeroed page for every page first
touched: even on huge pages that is about 10 ms per batch for the augmentation's output and the loader's
uint8 rows together, a third of the data path's time on the CPU (docs/PERFORMANCE.md). Python frees the
previous batch's array as soon as the training step drops it, so a few blocks of memory, each handed out
again once everything that used it is gone, remove that cost.

How "gone" is known: each hand-out wraps the block in a new small ctypes array, the object the numpy array
(and through it any view, or a tensor made by torch.from_numpy) keeps alive, and a weakref.finalize on that
wrapper marks the block free when the last of them is collected. That is Python's documented object
lifetime, the same in every version and build (reference counts, which other pools read, are not: 3.12's
immortal objects and 3.14's borrowed references change what sys.getrefcount returns).
"""

from __future__ import annotations

import ctypes
import threading
import weakref

import numpy as np


class _Block:
    def __init__(self, nbytes: int) -> None:
        self.memory = np.empty(nbytes, dtype=np.uint8)  # numpy asks for huge pages on large arrays
        self.free = True

    def release(self) -> None:
        self.free = True  # a plain store: the finalizer may run inside empty(), under the pool's lock


class BufferPool:
    """np.empty with reuse: `empty(shape, dtype)` returns an array over a block of memory that nothing else
    uses, a fresh block (kept for reuse while the pool holds fewer than `keep`), or, beyond that, a plain
    np.empty."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._blocks: list[_Block] = []
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes == 0:
            return np.empty(shape, dtype=dtype)
        with self._lock:
            block = next((b for b in self._blocks if b.free and b.memory.nbytes == nbytes), None)
            if block is None:
                if len(self._blocks) >= self.keep:  # make room: forget a free block (of another size, say)
                    spare = next((b for b in self._blocks if b.free), None)
                    if spare is not None:
                        self._blocks.remove(spare)
                if len(self._blocks) >= self.keep:
                    return np.empty(shape, dtype=dtype)  # every kept block is in use
                block = _Block(nbytes)
                self._blocks.append(block)
            block.free = False
        owner = (ctypes.c_uint8 * nbytes).from_buffer(block.memory)
        weakref.finalize(owner, block.release)
        return np.frombuffer(owner, dtype=dtype).reshape(shape)
