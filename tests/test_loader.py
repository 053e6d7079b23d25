"""Epoch order, rank shares and exact evaluation counts."""

import numpy as np
import pytest
import torch

from alexnet.data.loader import BatchLoader, epoch_permutation
from alexnet.errors import UserError


def make(n, size=4):
    images = np.arange(n, dtype=np.uint8).repeat(size * size * 3).reshape(n, size, size, 3)
    labels = np.arange(n, dtype=np.int64) % 3
    return images, labels


def test_epoch_permutation_is_a_pure_function_of_seed_and_epoch():
    a = epoch_permutation(100, 3, 5)
    assert sorted(a.tolist()) == list(range(100))
    assert torch.equal(a, epoch_permutation(100, 3, 5))
    assert not torch.equal(a, epoch_permutation(100, 3, 6))


def test_two_ranks_see_exactly_the_samples_of_one_process():
    images, labels = make(50)
    single = BatchLoader(images, labels, 8, torch.device("cpu"))
    ranks = [BatchLoader(images, labels, 8, torch.device("cpu"), rank=r, world_size=2) for r in range(2)]
    assert single.steps_per_epoch() == 6  # 50 // 8, last partial batch dropped
    one = list(single.train_epoch(seed=1, epoch=0))
    two = [list(r.train_epoch(seed=1, epoch=0)) for r in ranks]
    order = epoch_permutation(50, 1, 0)
    for step, b in enumerate(one):
        both = torch.cat([two[0][step].index, two[1][step].index])
        assert set(both.tolist()) == set(b.index.tolist()) == set(order[step * 8:(step + 1) * 8].tolist())
        assert not set(two[0][step].index.tolist()) & set(two[1][step].index.tolist())
        # pixels and labels belong to the indices
        assert torch.equal(b.images[:, 0, 0, 0].long(), b.index)
        assert torch.equal(b.labels, b.index % 3)


def test_resume_inside_an_epoch_continues_with_the_same_batches():
    images, labels = make(40)
    loader = BatchLoader(images, labels, 4, torch.device("cpu"))
    full = [b.index for b in loader.train_epoch(0, 2)]
    rest = [b.index for b in loader.train_epoch(0, 2, start_step=6)]
    assert all(torch.equal(a, b) for a, b in zip(full[6:], rest)) and len(rest) == len(full) - 6


def test_eval_counts_every_image_once_for_any_world_size():
    images, labels = make(23)
    for world in (1, 2, 3, 4):
        seen = []
        for r in range(world):
            loader = BatchLoader(images, labels, 4 * world, torch.device("cpu"), rank=r, world_size=world)
            seen += [i for b in loader.eval_batches() for i in b.index.tolist()]
        assert sorted(seen) == list(range(23))


def test_batches_read_from_the_store_file_hold_the_rows_of_the_array(tmp_path):
    """A memory-mapped .npy is read through the file (one read per image); a slice of one, whose own offset
    numpy does not track, through the array. Both give exactly numpy's rows of those indices."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (37, 6, 6, 3), dtype=np.uint8)
    labels = np.arange(37, dtype=np.int64) % 5
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    for source, rows, lab in ((mapped, images, labels), (mapped[5:], images[5:], labels[5:])):
        loader = BatchLoader(source, lab, 8, torch.device("cpu"))
        seen = 0
        for b in loader.train_epoch(seed=3, epoch=1):
            idx = b.index.numpy()
            np.testing.assert_array_equal(b.images.numpy(), rows[idx])
            np.testing.assert_array_equal(b.labels.numpy(), lab[idx])
            seen += len(idx)
        assert seen == 8 * (len(lab) // 8)
        assert [i for b in loader.eval_batches() for i in b.index.tolist()] == list(range(len(lab)))


def test_a_store_file_cut_short_is_a_user_error(tmp_path):
    images = np.zeros((20, 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    loader = BatchLoader(mapped, np.zeros(20, dtype=np.int64), 20, torch.device("cpu"))
    path = tmp_path / "images.npy"
    path.write_bytes(path.read_bytes()[: -4 * 4 * 3 * 3])  # the last three images gone
    with pytest.raises(UserError, match="shorter than its header"):
        list(loader.train_epoch(0, 0))
