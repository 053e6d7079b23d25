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


BATCH = (128, 224, 224, 3)  # a real batch of 224 views, 77 MB of float32: what the loader and augmentation ask


def test_a_batch_sized_block_comes_back_even_when_the_allocator_would_hand_its_memory_to_someone_else():
    """glibc maps a 77 MB block on its own and a fresh mapping of the same size often lands where the last one
    was, so "the same address again" alone would pass with no pool at all. Here a plain array of the same size
    is allocated between the free and the next request: without the pool it would take the freed memory, and
    the pool's next block would be elsewhere."""
    pool = BufferPool(keep=2)
    first = pool.empty(BATCH, np.float32)
    first[0, 0, 0, 0] = 1.0
    first_address = address(first)
    del first
    gc.collect()
    other = np.empty(BATCH, np.float32)  # someone else's batch-sized array, allocated while the block is free
    other[...] = 0
    assert address(other) != first_address  # the pool still holds the freed block
    again = pool.empty(BATCH, np.float32)
    assert address(again) == first_address


def test_the_pool_keeps_at_most_keep_blocks():
    """Five blocks in use at once, keep=2: only two are the pool's. After all five are freed (and plain arrays of
    the same size have taken whatever memory the allocator got back), five requests find exactly two of the old
    blocks again; a pool that ignored `keep` would hand back all five."""
    shape = (64, 1024)  # 256 KiB of float32
    pool = BufferPool(keep=2)
    held = [pool.empty(shape, np.float32) for _ in range(5)]
    old = {address(h) for h in held}
    assert len(old) == 5
    del held
    gc.collect()
    blockers = [np.ones(shape, np.float32) for _ in range(5)]  # take the memory of the three plain arrays
    again = [pool.empty(shape, np.float32) for _ in range(5)]
    assert len({address(a) for a in again} & old) == 2
    assert not {address(b) for b in blockers} & {address(a) for a in again}
