"""Reading stores (alexnet.data.store) and resolving a data argument to one (alexnet.prepare.resolve)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from datagen import encode, pattern, write

from alexnet.data.store import checksum, is_store, open_store
from alexnet.errors import UserError
from alexnet.prepare.resolve import cached_store_path, resolve_data
from alexnet.prepare.writer import prepare


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small two-split store (16 x 16), prepared once for the tests that only read it."""
    root = tmp_path_factory.mktemp("store")
    for c in range(2):
        for i in range(6):
            write(root / "src" / f"class{c}" / f"{i}.png", encode(pattern(16, 16, seed=c * 10 + i)))
    prepare(root / "src", root / "store", size=16, workers=1, progress=False, val_fraction=0.34)
    return root


def _copy(built, tmp_path):
    shutil.copytree(built / "store", tmp_path / "store")
    return tmp_path / "store"


def test_split_is_a_read_only_memory_map_with_int64_labels(built):
    store = open_store(built / "store")
    train = store.split("train")
    assert isinstance(train.images, np.memmap) and train.images.dtype == np.uint8
    assert train.images.shape == (8, 16, 16, 3) and len(train) == 8
    assert train.labels.dtype == np.int64 and train.labels.tolist() == [0] * 4 + [1] * 4
    with pytest.raises(ValueError):
        train.images[0, 0, 0, 0] = 1
    assert store.has_split("val") and len(store.split("val")) == 4
    assert store.mean.dtype == np.float32 and store.mean.shape == (16, 16, 3)
    assert store.pca_eigenvectors.shape == (3, 3) and store.pca_eigenvalues.dtype == np.float32
    np.testing.assert_allclose(store.pca_eigenvectors.T @ store.pca_eigenvectors, np.eye(3), atol=1e-5)
    assert list(store.pca_eigenvalues) == sorted(store.pca_eigenvalues, reverse=True)
    store.verify()


def test_missing_split_is_a_user_error(built, tmp_path):
    store_dir = _copy(built, tmp_path)
    manifest = json.loads((store_dir / "manifest.json").read_text())
    del manifest["splits"]["val"]
    (store_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="has no 'val' split"):
        open_store(store_dir).split("val")


@pytest.mark.parametrize("case, message", [
    ("no-folder", "no such folder"),
    ("no-manifest", "no manifest.json"),
    ("unfinished", "unfinished store"),
    ("incomplete-flag", "unfinished store"),
    ("foreign-format", "not an alexnet-store/1 store"),
    ("truncated-images", "truncated or changed"),
    ("missing-labels", "missing or damaged"),
])
def test_broken_stores_are_refused_in_one_line(built, tmp_path, case, message):
    store_dir = _copy(built, tmp_path)
    manifest_path = store_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if case == "no-folder":
        store_dir = tmp_path / "nowhere"
    elif case == "no-manifest":
        manifest_path.unlink()
    elif case == "unfinished":
        manifest_path.unlink()
        (store_dir / ".partial").mkdir()
    elif case == "incomplete-flag":
        manifest_path.write_text(json.dumps({**manifest, "complete": False}))
    elif case == "foreign-format":
        manifest_path.write_text(json.dumps({**manifest, "format": "something/2"}))
    elif case == "truncated-images":
        path = store_dir / "train" / "images.npy"
        os.truncate(path, os.path.getsize(path) - 768)  # one 16 x 16 x 3 image short
    elif case == "missing-labels":
        (store_dir / "val" / "labels.npy").unlink()
    with pytest.raises(UserError, match=message) as caught:
        open_store(store_dir)
    assert "\n" not in str(caught.value)
    assert is_store(store_dir) is (case in ("truncated-images", "missing-labels"))


@pytest.mark.parametrize("where", ["header", "first-image", "last-byte", "labels"])
def test_verify_detects_changed_files(built, tmp_path, where):
    store_dir = _copy(built, tmp_path)
    images, labels = store_dir / "train" / "images.npy", store_dir / "train" / "labels.npy"
    if where == "labels":
        changed = np.load(labels)
        changed[0] = 1 - changed[0]
        np.save(labels, changed)
    elif where == "header":  # a padding space of the .npy header becomes a tab: still a valid header
        with open(images, "r+b") as f:
            f.seek(120)
            assert f.read(1) == b" "
            f.seek(120)
            f.write(b"\t")
    else:
        offset = {"first-image": 128 + 5, "last-byte": os.path.getsize(images) - 1}[where]
        with open(images, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))
    store = open_store(store_dir)  # sizes unchanged: opening stays cheap and succeeds
    with pytest.raises(UserError, match="checksum mismatch"):
        store.verify()


def test_checksum_covers_sampled_blocks_of_large_files(tmp_path):
    images, labels = tmp_path / "images.npy", tmp_path / "labels.npy"
    np.save(images, np.zeros((80, 256, 256, 3), np.uint8))  # 15.7 MB: sampled, not read whole
    np.save(labels, np.zeros(80, np.int64))
    before = checksum(images, labels)
    size = os.path.getsize(images)
    with open(images, "r+b") as f:  # inside the 33rd of 64 evenly spaced 64 KiB blocks
        f.seek(32 * (size - 65536) // 63 + 100)
        f.write(b"\x01")
    assert checksum(images, labels) != before


def test_resolve_opens_stores_and_prepares_raw_folders_once(built, tmp_path):
    assert resolve_data(str(built / "store"), tmp_path / "cache", size=16).root == built / "store"
    first = resolve_data(str(built / "src"), tmp_path / "cache", size=8, progress=False)
    assert first.root == cached_store_path(str(built / "src"), tmp_path / "cache", 8)
    assert first.root.parent == tmp_path / "cache" and first.size == 8
    stamp = (first.root / "manifest.json").stat().st_mtime_ns
    again = resolve_data(str(built / "src"), tmp_path / "cache", size=8, progress=False)
    assert again.root == first.root and (again.root / "manifest.json").stat().st_mtime_ns == stamp
    other_size = resolve_data(str(built / "src"), tmp_path / "cache", size=4, progress=False)
    assert other_size.root != first.root and other_size.size == 4


@pytest.mark.parametrize("case, message", [("missing", "does not exist"), ("empty", "is empty"),
                                           ("text-file", "is not a folder, a tar archive")])
def test_resolve_refuses_unusable_data_and_leaves_no_trace(tmp_path, case, message):
    (tmp_path / "empty").mkdir()
    write(tmp_path / "text-file", b"just text")
    spec = str(tmp_path / {"missing": "nothing", "empty": "empty", "text-file": "text-file"}[case])
    with pytest.raises(UserError, match=message):
        resolve_data(spec, tmp_path / "cache" / "stores", size=8)
    assert not (tmp_path / "cache").exists()
