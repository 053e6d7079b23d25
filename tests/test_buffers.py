"""BufferPool hands a block of memory out again only when nothing refers to it: no array, view or tensor."""

from __future__ import annotations

import gc

import numpy as np
import torch

from alexnet.data.buffers import BufferPool


def address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def test_free_memory_is_reused_and_held_memory_is_not():
    pool = BufferPool(keep=4)
    a = pool.empty((3, 4), np.float32)
    b = pool.empty((3, 4), np.float32)
    assert address(b) != address(a)  # a is still held here
    a_address = address(a)
    del a
    c = pool.empty((3, 4), np.float32)
    assert address(c) == a_address and c.flags.writeable
    assert pool.empty((3, 4), np.uint8).dtype == np.uint8 and pool.empty((2, 4), np.float32).shape == (2, 4)


def test_tensors_and_views_keep_memory_busy():
    pool = BufferPool(keep=4)
    array = pool.empty((8,), np.float32)
    first = address(array)
    tensor = torch.from_numpy(array)
    view = tensor[2:5]
    numpy_view = array[1:3].reshape(2, 1)
    del array, tensor
    gc.collect()
    other = pool.empty((8,), np.float32)
    assert address(other) != first  # the views still use the first block
    other[:] = 1.0
    view.fill_(7.0)
    assert (other == 1.0).all()  # writing through the view did not touch the new array
    del view
    gc.collect()
    assert address(pool.empty((8,), np.float32)) != first  # the numpy view still holds it
    del numpy_view, other
    gc.collect()
    assert first in {address(pool.empty((8,), np.float32)) for _ in range(2)}


def test_the_pool_keeps_at_most_keep_blocks():
    pool = BufferPool(keep=2)
    held = [pool.empty((4,), np.float32) for _ in range(5)]  # all busy: the last three are plain arrays
    assert len({address(h) for h in held}) == 5
    kept = {address(h) for h in held[:2]}
    del held
    again = [pool.empty((4,), np.float32) for _ in range(2)]
    assert {address(a) for a in again} == kept
