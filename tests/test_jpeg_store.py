"""JPEG stores (prepare --format jpeg, data/jpeg.py): what they hold, that training reads them exactly as it
reads raw pixels, conversion both ways, and damage found with one line.

The independent expectations: every image of the store is the source image prepared as for a raw store,
encoded by libjpeg-turbo (simplejpeg) at the store's quality and decoded again, called here directly on the
bytes the offsets index; the mean image is the mean of those decoded pixels, summed here in numpy.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import simplejpeg
import torch
from conftest import run_cli

from alexnet.config import build_config
from alexnet.data.loader import BatchLoader
from alexnet.data.store import open_store
from alexnet.errors import UserError
from alexnet.prepare.writer import choose_encoding, prepare
from alexnet.train import train

SMALL = {"train.epochs": 2, "optim.batch_size": 16, "data.crop": 32, "train.log_every": 4,
         "model.widths": [16, 32, 32, 32, 32], "model.fc": [64, 64], "optim.lr": 0.005, "optim.milestones": []}


@pytest.fixture(scope="module")
def jpeg_store(shapes_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("jpeg") / "store"
    prepare(shapes_folder, out, size=36, workers=2, progress=False, encoding="jpeg", quality=85, chunk_size=20)
    return out


def stored_bytes(store_dir, split):
    data = (store_dir / split / "images.jpeg").read_bytes()
    offsets = np.load(store_dir / split / "offsets.npy")
    return [data[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def test_a_jpeg_store_holds_the_raw_stores_images_encoded_once(jpeg_store, shapes_store):
    raw, jpeg = open_store(shapes_store), open_store(jpeg_store)
    assert jpeg.encoding == "jpeg" and raw.encoding == "raw"
    for split in ("train", "val"):
        pixels = np.array(raw.split(split).images)
        encoded = stored_bytes(jpeg_store, split)
        assert len(encoded) == len(pixels) == len(jpeg.split(split))
        np.testing.assert_array_equal(jpeg.split(split).labels, raw.split(split).labels)
        for i, image in enumerate(pixels):  # the raw store's pixels, encoded at the store's quality
            want = simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=85, colorspace="RGB",
                                          colorsubsampling="420")
            assert encoded[i] == want, i
        decoded = np.stack([simplejpeg.decode_jpeg(e, colorspace="RGB") for e in encoded])
        np.testing.assert_array_equal(np.array(jpeg.split(split).images), decoded)
        assert np.abs(decoded.astype(int) - pixels).mean() < 8  # JPEG's loss is small at quality 85
    train_decoded = np.stack([simplejpeg.decode_jpeg(e, colorspace="RGB") for e in stored_bytes(jpeg_store, "train")])
    np.testing.assert_allclose(jpeg.mean, train_decoded.astype(np.float64).mean(axis=0), rtol=0, atol=1e-4)
    jpeg.verify()


def test_batches_of_a_jpeg_store_are_its_decoded_images(jpeg_store):
    store = open_store(jpeg_store)
    train_split = store.split("train")
    decoded = np.stack([simplejpeg.decode_jpeg(e, colorspace="RGB") for e in stored_bytes(jpeg_store, "train")])
    loader = BatchLoader(train_split.images, train_split.labels, 16, torch.device("cpu"))
    seen = 0
    for batch in loader.train_epoch(seed=3, epoch=1):
        idx = batch.index.numpy()
        np.testing.assert_array_equal(batch.images.numpy(), decoded[idx])
        np.testing.assert_array_equal(batch.labels.numpy(), train_split.labels[idx])
        seen += len(idx)
    assert seen == loader.steps_per_epoch() * 16


def test_training_on_a_jpeg_store_resumes_bit_for_bit(jpeg_store, tmp_path):
    def cfg(**extra):
        return build_config("demo", overrides={**SMALL, **extra})

    assert train(cfg(), jpeg_store, tmp_path / "whole", progress=False) == 0
    parts = tmp_path / "parts"
    assert train(cfg(**{"train.max_steps": 7}), jpeg_store, parts, progress=False) == 0
    assert train(cfg(), jpeg_store, parts, "auto", progress=False) == 0
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    b = torch.load(parts / "last.pt", weights_only=True)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_converting_raw_to_jpeg_and_back_needs_no_source_images(shapes_store, jpeg_store, tmp_path):
    converted = run_cli("prepare", str(shapes_store), "--out", str(tmp_path / "jpeg"), "--format", "jpeg",
                        "--quality", "85", "--workers", "1")
    assert converted.returncode == 0, converted.stderr
    for split in ("train", "val"):  # the same bytes as preparing the source images as JPEG
        assert stored_bytes(tmp_path / "jpeg", split) == stored_bytes(jpeg_store, split)
    back = run_cli("prepare", str(tmp_path / "jpeg"), "--out", str(tmp_path / "raw"), "--format", "raw")
    assert back.returncode == 0, back.stderr
    raw = open_store(tmp_path / "raw")
    assert raw.encoding == "raw" and raw.classes == open_store(jpeg_store).classes
    np.testing.assert_array_equal(np.asarray(raw.split("train").images),
                                  np.array(open_store(jpeg_store).split("train").images))


def test_auto_keeps_small_sets_raw_and_stores_imagenet_as_jpeg():
    assert choose_encoding("auto", 50_000, 32) == "raw"  # CIFAR-10: 150 MB of pixels
    assert choose_encoding("auto", 1_281_167, 256) == "jpeg"  # ILSVRC-2012's training set: 252 GB
    with pytest.raises(UserError):
        choose_encoding("png", 10, 32)


def test_damaged_jpeg_stores_are_refused_with_one_line(jpeg_store, tmp_path):
    truncated = tmp_path / "truncated"
    shutil.copytree(jpeg_store, truncated)
    path = truncated / "train" / "images.jpeg"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated or changed"):
        open_store(truncated)

    corrupted = tmp_path / "corrupted"
    shutil.copytree(jpeg_store, corrupted)
    path = corrupted / "train" / "images.jpeg"
    data = bytearray(path.read_bytes())
    data[:len(data) // 2] = bytes(len(data) // 2)  # zeros over the first half: no JPEG starts there any more
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum mismatch"):
        open_store(corrupted).verify()
    # even with the checksum made to match (a hostile store), decoding refuses it with one line
    manifest = json.loads((corrupted / "manifest.json").read_text())
    from alexnet.data.store import checksum, split_files

    manifest["splits"]["train"]["checksum"] = checksum(*split_files(corrupted / "train", "jpeg"))
    (corrupted / "manifest.json").write_text(json.dumps(manifest))
    store = open_store(corrupted)
    store.verify()
    with pytest.raises(UserError, match="does not decode"):
        store.split("train").images[0]

    bad_index = tmp_path / "bad-index"
    shutil.copytree(jpeg_store, bad_index)
    offsets = np.load(bad_index / "train" / "offsets.npy")
    offsets[3], offsets[4] = offsets[4], offsets[3]
    np.save(bad_index / "train" / "offsets.npy", offsets)
    with pytest.raises(UserError, match="does not index"):
        open_store(bad_index)


def test_gpu_decoding_asked_without_a_gpu_or_of_a_raw_store_is_one_line(jpeg_store, shapes_store, tmp_path):
    split = open_store(jpeg_store).split("train")
    with pytest.raises(UserError, match="train.gpu_decode"):
        BatchLoader(split.images, split.labels, 16, torch.device("cpu"), decode_on_device=True)
    done = run_cli("train", "--preset", "demo", "--data", str(shapes_store), "--out", str(tmp_path / "run"),
                   "--device", "cpu", "train.gpu_decode=true", "train.epochs=1")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "train.gpu_decode" in done.stderr
