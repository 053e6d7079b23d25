"""Large per-batch host arrays, reused once nothing refers to them any more.

A fresh 77 MB float32 batch (128 views of 224 x 224) costs the kernel a zeroed page for every page first
touched: even on huge pages that is about 10 ms per batch for the augmentation's output and the loader's
uint8 rows together, a third of the data path's time on the CPU (docs/PERFORMANCE.md). Python frees the
previous batch's array as soon as the training step drops it, so a small pool of arrays, each handed out
again only when its reference count says that no tensor or view holds it, removes that cost.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

# references to a pooled array that is free: the pool's list, the loop variable, getrefcount's argument
_FREE_REFERENCES = 3


class BufferPool:
    """np.empty with reuse: `empty(shape, dtype)` returns a pooled array of that shape and dtype that no one
    else refers to, or a new one (kept for reuse while the pool holds fewer than `keep`)."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._arrays: list[np.ndarray] = []
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        dtype = np.dtype(dtype)
        with self._lock:
            for array in self._arrays:
                if array.shape == shape and array.dtype == dtype and sys.getrefcount(array) == _FREE_REFERENCES:
                    return array
            array = np.empty(shape, dtype=dtype)
            if len(self._arrays) >= self.keep:  # make room: forget a free array (of another shape, say)
                for i, old in enumerate(self._arrays):
                    if sys.getrefcount(old) == _FREE_REFERENCES:
                        del self._arrays[i]
                        break
            if len(self._arrays) < self.keep:
                self._arrays.append(array)
            return array
