"""Batched augmentation: geometry against numpy slicing, randomness as a function of (seed, epoch, index)."""

import numpy as np
import torch

from alexnet.config import DataConfig
from alexnet.data.augment import ColourStats, augment_train, eval_views, sample_uniform


def stats_for(size, mean=None, eigvals=(0.0, 0.0, 0.0)):
    mean = torch.zeros(size, size, 3) if mean is None else mean
    return ColourStats.build(mean, torch.eye(3), torch.tensor(eigvals), "mean-image", torch.device("cpu"))


def test_ten_crop_geometry_matches_numpy_slicing():
    size, crop = 12, 8
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    cfg = DataConfig(image_size=size, crop=crop)
    out = eval_views(torch.from_numpy(imgs), cfg, stats_for(size), ten_crop=True).numpy()
    assert out.shape == (30, 3, crop, crop)
    c = (size - crop) // 2
    corners = [(c, c), (0, 0), (0, size - crop), (size - crop, 0), (size - crop, size - crop)]
    for v in range(10):
        y, x = corners[v % 5]
        for b in range(3):
            want = imgs[b, y:y + crop, x:x + crop].astype(np.float32)
            if v >= 5:
                want = want[:, ::-1]
            np.testing.assert_array_equal(out[v * 3 + b].transpose(1, 2, 0), want)


def test_centre_crop_subtracts_the_identically_cropped_mean_image():
    size, crop = 10, 6
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    mean = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    cfg = DataConfig(image_size=size, crop=crop)
    out = eval_views(torch.from_numpy(imgs), cfg, stats_for(size, torch.from_numpy(mean)), ten_crop=False)
    assert out.is_contiguous(memory_format=torch.channels_last)
    c = (size - crop) // 2
    want = imgs[:, c:c + crop, c:c + crop].astype(np.float32) - mean[c:c + crop, c:c + crop]
    np.testing.assert_allclose(out.numpy().transpose(0, 2, 3, 1), want, rtol=0, atol=1e-4)


def test_training_views_are_crops_or_mirrored_crops_of_each_image():
    size, crop = 9, 5
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (16, size, size, 3), dtype=np.uint8)
    cfg = DataConfig(image_size=size, crop=crop, pca_std=0.0)
    out = augment_train(torch.from_numpy(imgs), torch.arange(16), cfg, stats_for(size), 0, 0).numpy()
    seen_flip, seen_offsets = set(), set()
    for b in range(16):
        view = out[b].transpose(1, 2, 0)
        found = None
        for y in range(size - crop + 1):
            for x in range(size - crop + 1):
                patch = imgs[b, y:y + crop, x:x + crop].astype(np.float32)
                if np.array_equal(view, patch):
                    found = (y, x, False)
                elif np.array_equal(view, patch[:, ::-1]):
                    found = (y, x, True)
        assert found is not None
        seen_flip.add(found[2])
        seen_offsets.add(found[:2])
    assert seen_flip == {False, True} and len(seen_offsets) > 4


def test_randomness_is_a_function_of_seed_epoch_and_index_only():
    size, crop = 16, 10
    rng = np.random.default_rng(3)
    imgs = torch.from_numpy(rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8))
    cfg = DataConfig(image_size=size, crop=crop, pca_std=0.1)
    st = stats_for(size, eigvals=(900.0, 100.0, 10.0))
    idx = torch.tensor([5, 17, 3, 1000, 2**33 + 7, 42, 9, 11])
    a = augment_train(imgs, idx, cfg, st, seed=7, epoch=2)
    # the same samples in another batch composition and order give the same views
    perm = torch.tensor([3, 0, 6, 1, 7, 2, 5, 4])
    b = augment_train(imgs[perm], idx[perm], cfg, st, seed=7, epoch=2)
    torch.testing.assert_close(b, a[perm], rtol=0, atol=0)
    torch.testing.assert_close(augment_train(imgs[:3], idx[:3], cfg, st, 7, 2), a[:3], rtol=0, atol=0)
    assert not torch.equal(augment_train(imgs, idx, cfg, st, seed=7, epoch=3), a)
    assert not torch.equal(augment_train(imgs, idx, cfg, st, seed=8, epoch=2), a)


def test_uniforms_are_uniform_and_flips_balanced():
    u = sample_uniform(0, 0, torch.arange(200_000), 3)
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean().item() - 0.5) < 0.005
    hist = torch.histc(u, bins=10, min=0, max=1) / len(u)
    assert (hist - 0.1).abs().max() < 0.005
    v = sample_uniform(0, 0, torch.arange(200_000), 4)
    assert abs(np.corrcoef(u.numpy(), v.numpy())[0, 1]) < 0.01  # streams independent


def test_pca_colour_noise_follows_the_formula():
    """Offset per image = P @ (a * sqrt(l)), a ~ N(0, 0.1^2): constant over pixels, with the right spread."""
    size = 4
    cfg = DataConfig(image_size=size, crop=size, random_crop=False, flip=False, pca_std=0.1)
    q, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(3, 3)))
    lam = np.array([2500.0, 400.0, 25.0])
    st = ColourStats.build(torch.zeros(size, size, 3), torch.from_numpy(q).float(), torch.from_numpy(lam).float(),
                           "mean-image", torch.device("cpu"))
    n = 20_000
    imgs = torch.full((n, size, size, 3), 100, dtype=torch.uint8)
    out = augment_train(imgs, torch.arange(n), cfg, st, 0, 0).numpy().transpose(0, 2, 3, 1) - 100.0
    off = out[:, 0, 0, :]
    np.testing.assert_allclose(out, np.broadcast_to(off[:, None, None, :], out.shape), atol=1e-4)
    coeff = off @ q  # back to the eigenbasis: a_i * sqrt(l_i)
    np.testing.assert_allclose(coeff.std(0), 0.1 * np.sqrt(lam), rtol=0.03)
    np.testing.assert_allclose(coeff.mean(0), 0.0, atol=0.05 * np.sqrt(lam).max() * 0.1 * 3)
    assert abs(np.corrcoef(coeff[:, 0], coeff[:, 1])[0, 1]) < 0.03


def test_compiled_cpu_loop_and_gpu_gather_cut_the_same_views_as_numpy():
    """Both ways of cutting views (the compiled loop on the CPU, one gather on GPUs) equal
    the formula crop(image) - (crop(mean) - offset), mirrored where asked, in float32, bit for bit. 40 views
    of 40 x 40 are enough values for the compiled loop to share them between two threads."""
    from alexnet.data.augment import crop_views

    size, crop, n = 48, 40, 40
    rng = np.random.default_rng(5)
    imgs = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    mean = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    oy = rng.integers(0, size - crop + 1, n)
    ox = rng.integers(0, size - crop + 1, n)
    flip = np.arange(n) % 3 == 0
    offsets = rng.normal(0, 5, (n, 3)).astype(np.float32)
    for normalize in ("mean-image", "imagenet"):
        st = ColourStats.build(torch.from_numpy(mean), torch.eye(3), torch.ones(3), normalize, torch.device("cpu"))
        want = np.empty((n, crop, crop, 3), np.float32)
        m_all = st.mean.numpy()
        for b in range(n):
            cols = slice(ox[b], ox[b] + crop)
            img, m = imgs[b, oy[b]:oy[b] + crop, cols], m_all[oy[b]:oy[b] + crop, cols]
            if flip[b]:
                img, m = img[:, ::-1], m[:, ::-1]
            want[b] = img - (m - offsets[b])
            if normalize == "imagenet":
                want[b] *= st.scale.numpy()
        args = (torch.from_numpy(imgs), torch.from_numpy(oy), torch.from_numpy(ox), torch.from_numpy(flip), crop, st,
                torch.from_numpy(offsets))
        for method in ("compiled", "gather"):
            out = crop_views(*args, method=method)
            assert out.shape == (n, 3, crop, crop) and out.is_contiguous(memory_format=torch.channels_last)
            np.testing.assert_array_equal(out.numpy().transpose(0, 2, 3, 1), want)

