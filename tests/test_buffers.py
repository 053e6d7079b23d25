"""BufferPool hands an array out again only when nothing refers to it."""

from __future__ import annotations

import numpy as np
import torch

from alexnet.data.buffers import BufferPool


def test_a_free_array_is_reused_and_a_held_one_is_not():
    pool = BufferPool(keep=4)
    a = pool.empty((3, 4), np.float32)
    b = pool.empty((3, 4), np.float32)
    assert b is not a  # a is still held here
    a_id = id(a)
    del a
    c = pool.empty((3, 4), np.float32)
    assert id(c) == a_id  # the pool kept it alive, so the id is still that array's
    assert pool.empty((3, 4), np.uint8).dtype == np.uint8 and pool.empty((2, 4), np.float32).shape == (2, 4)


def test_tensors_and_views_keep_an_array_busy():
    pool = BufferPool(keep=4)
    array = pool.empty((8,), np.float32)
    array_id = id(array)
    tensor = torch.from_numpy(array)
    view = tensor[2:5]
    del array, tensor
    other = pool.empty((8,), np.float32)
    assert id(other) != array_id  # the view still holds the first array's memory
    other[:] = 1.0
    view.fill_(7.0)
    assert (other == 1.0).all()  # writing through the view did not touch the new array
    del view, other
    assert id(pool.empty((8,), np.float32)) == array_id


def test_the_pool_keeps_at_most_keep_arrays():
    pool = BufferPool(keep=2)
    held = [pool.empty((4,), np.float32) for _ in range(5)]  # all busy: the last three are not kept
    assert len({id(h) for h in held}) == 5
    kept = {id(h) for h in held[:2]}
    del held
    again = [pool.empty((4,), np.float32) for _ in range(2)]
    assert {id(a) for a in again} == kept
