"""The GPU path against the CPU: the same batches, the same views, the same training steps (within bf16).

Skipped without CUDA. Run on a GPU machine with: .venv/bin/pytest -q tests/test_gpu.py
"""

import numpy as np
import pytest
import torch

from alexnet.config import DataConfig, build_config
from alexnet.data.augment import ColourStats, augment_train, crop_views
from alexnet.data.loader import BatchLoader
from alexnet.data.store import open_store
from alexnet.parallel.ddp import DistContext
from alexnet.train import adapt_to_store, set_up, train_one_epoch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SMALL = {"optim.batch_size": 16, "data.crop": 32, "model.widths": [16, 32, 32, 32, 32], "model.fc": [64, 64],
         "optim.lr": 0.02, "model.dropout": 0.0, "train.log_every": 10**6}


def batches(loader, train):
    it = loader.train_epoch(seed=2, epoch=1) if train else loader.eval_batches()
    return [(b.images.cpu(), b.labels.cpu(), b.index.cpu()) for b in it]


@pytest.mark.parametrize("resident", [False, True])
def test_cuda_loader_gives_the_cpu_loaders_batches(tmp_path, resident):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (70, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    labels = rng.integers(0, 10, 70).astype(np.int64)
    cpu = BatchLoader(mapped, labels, 16, CPU)
    gpu = BatchLoader(mapped, labels, 16, CUDA, on_device=resident)
    for train in (True, False):
        want = batches(cpu, train)
        got = [(b.images, b.labels, b.index) for b in (gpu.train_epoch(2, 1) if train else gpu.eval_batches())]
        assert len(got) == len(want) and all(t.is_cuda for b in got for t in b)
        for g, w in zip(got, want):
            for a, b in zip(g, w):
                assert torch.equal(a.cpu(), b)


def test_views_cut_on_the_gpu_equal_the_cpus():
    size, crop, n = 40, 32, 24
    rng = np.random.default_rng(1)
    imgs = torch.from_numpy(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))
    mean = torch.from_numpy(rng.uniform(0, 255, (size, size, 3)).astype(np.float32))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    evecs, evals = torch.from_numpy(q).float(), torch.tensor([2500.0, 400.0, 25.0])
    cpu_stats = ColourStats.build(mean, evecs, evals, "mean-image", CPU)
    gpu_stats = ColourStats.build(mean, evecs, evals, "mean-image", CUDA)
    oy, ox = torch.randint(0, size - crop + 1, (n,)), torch.randint(0, size - crop + 1, (n,))
    flip, offsets = torch.rand(n) < 0.5, torch.randn(n, 3) * 5
    want = crop_views(imgs, oy, ox, flip, crop, cpu_stats, offsets)
    got = crop_views(imgs.to(CUDA), oy.to(CUDA), ox.to(CUDA), flip.to(CUDA), crop, gpu_stats, offsets.to(CUDA))
    assert torch.equal(got.cpu(), want)  # the same float32 arithmetic, element by element
    cfg = DataConfig(image_size=size, crop=crop)
    idx = torch.arange(100, 100 + n)
    # the random numbers are integer hashes (exact on both); only the colour noise's log/cos may differ in
    # the last bits of float32
    torch.testing.assert_close(augment_train(imgs.to(CUDA), idx.to(CUDA), cfg, gpu_stats, 3, 4).cpu(),
                               augment_train(imgs, idx, cfg, cpu_stats, 3, 4), rtol=0, atol=1e-3)


def make_run(store_path, device, tmp_path, **extra):
    cfg = build_config("demo", overrides={**SMALL, "train.device": device.type, **extra})
    store = open_store(store_path)
    adapt_to_store(cfg, store)
    return set_up(cfg, store, tmp_path / f"run-{device.type}-{len(extra)}", DistContext(device=device), progress=False)


def steps(run, n):
    run.cfg.train.max_steps = n
    train_one_epoch(run, 0)
    assert run.state.global_step == n
    return weights(run)


def weights(run):
    return {k: v.detach().float().cpu().clone() for k, v in run.model.state_dict().items()}


def assert_same_updates(start, a, b, min_cosine=0.99, max_norm_gap=0.05):
    for k in start:
        da, db = (a[k] - start[k]).flatten(), (b[k] - start[k]).flatten()
        assert db.norm() > 0, k
        cosine = torch.dot(da, db) / (da.norm() * db.norm())
        assert cosine > min_cosine, (k, float(cosine))
        assert abs(float(da.norm() / db.norm()) - 1) < max_norm_gap, k


def test_training_steps_on_cuda_match_the_cpu(shapes_store, tmp_path, monkeypatch):
    # float32 on both, without TF32 (whose 10-bit products would blur the comparison)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cpu_run = make_run(shapes_store, CPU, tmp_path, **{"train.precision": "fp32"})
    gpu_run = make_run(shapes_store, CUDA, tmp_path, **{"train.precision": "fp32"})
    start = weights(cpu_run)
    for k, v in gpu_run.model.state_dict().items():
        assert torch.equal(v.cpu(), start[k]), k  # the same initial weights
    assert_same_updates(start, steps(gpu_run, 4), steps(cpu_run, 4), min_cosine=0.9999, max_norm_gap=0.001)


def test_bf16_steps_on_cuda_stay_close_to_float32(shapes_store, tmp_path):
    fp32 = make_run(shapes_store, CUDA, tmp_path, **{"train.precision": "fp32"})
    bf16 = make_run(shapes_store, CUDA, tmp_path)  # CUDA's default: bf16 autocast
    start = weights(fp32)
    # bf16 keeps 8 bits of mantissa: conv1's weight update, a sum over every pixel of the batch, came out
    # at cosine 0.973 to float32's after 4 steps (H100); every other layer closer
    assert_same_updates(start, steps(bf16, 4), steps(fp32, 4), min_cosine=0.95, max_norm_gap=0.1)


def test_store_resident_in_gpu_memory_trains_the_same(shapes_store, tmp_path):
    a = make_run(shapes_store, CUDA, tmp_path)
    b = make_run(shapes_store, CUDA, tmp_path, **{"train.store_on_device": True})
    start = weights(a)
    assert_same_updates(start, steps(b, 3), steps(a, 3), min_cosine=0.999, max_norm_gap=0.01)


def test_compiled_step_matches_eager(shapes_store, tmp_path):
    eager = make_run(shapes_store, CUDA, tmp_path)
    compiled = make_run(shapes_store, CUDA, tmp_path, **{"train.compile": True})
    start = weights(eager)
    assert_same_updates(start, steps(compiled, 3), steps(eager, 3))


@pytest.mark.parametrize("gpu_decode", [False, True])
def test_a_jpeg_stores_batches_on_the_gpu_are_its_decoded_images(shapes_folder, tmp_path, gpu_decode):
    # CPU threads decode with libjpeg-turbo, bit for bit the CPU loader's batches; nvJPEG's inverse DCT may
    # round differently, so its pixels are held to within a level or two of libjpeg-turbo's on average
    from alexnet.prepare.writer import prepare

    store = open_store(prepare(shapes_folder, tmp_path / "jpeg", size=36, workers=1, progress=False,
                               encoding="jpeg").root)
    split = store.split("train")
    want = batches(BatchLoader(split.images, split.labels, 16, CPU), True)
    gpu = BatchLoader(split.images, split.labels, 16, CUDA, decode_on_device=gpu_decode)
    got = [(b.images, b.labels, b.index) for b in gpu.train_epoch(2, 1)]
    assert len(got) == len(want)
    for (images, labels, index), (w_images, w_labels, w_index) in zip(got, want):
        assert images.is_cuda and images.shape == w_images.shape and images.dtype == torch.uint8
        assert torch.equal(labels.cpu(), w_labels) and torch.equal(index.cpu(), w_index)
        if gpu_decode:
            assert (images.cpu().float() - w_images.float()).abs().mean() < 1.0
        else:
            assert torch.equal(images.cpu(), w_images)


def test_the_host_waits_for_the_gpu_only_at_log_steps(shapes_store, tmp_path):
    # torch's sync debug mode warns at every operation that makes the host wait for the GPU. With logging
    # out of reach (log_every 10**6) a run of 4 steps and one of 11 steps wait equally often (the loader's
    # start and the epoch's end), so no step waits; with log_every 2 the longer run waits at more log steps.
    import warnings

    def syncs(n, log_every):
        run = make_run(shapes_store, CUDA, tmp_path / f"{n}-{log_every}", **{"train.log_every": log_every})
        run.cfg.train.max_steps = n
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_one_epoch(run, 0)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchronizing" in str(w.message) for w in caught)

    quiet_short, quiet_long = syncs(4, 10**6), syncs(11, 10**6)
    assert quiet_short == quiet_long
    assert syncs(11, 2) > quiet_long
