"""Small raw data sets for the data tests, built in tmp_path: image folders, ILSVRC-style archives and
label files, CIFAR-10 python batches, and broken files of every kind."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def pattern(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic uint8 (height, width, 3) image with structure in every channel."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def encode(array: np.ndarray, fmt: str = "PNG", **params) -> bytes:
    buf = io.BytesIO()
    mode = None if array.ndim == 3 else "L"
    Image.fromarray(array, mode=mode).save(buf, fmt, **params)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def centre(array: np.ndarray, size: int) -> np.ndarray:
    """The centre size x size window with torchvision's rounding, for arrays whose shorter side is size."""
    height, width = array.shape[:2]
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return array[top : top + size, left : left + size]


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (the decompression-bomb shape)."""
    data = bytearray(encode(np.zeros((1, 1, 3), np.uint8)))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_tar_of_tars(path: Path, images: dict[str, list[np.ndarray]]) -> None:
    """ILSVRC2012_img_train.tar style: <wnid>.tar members, each holding <wnid>_<n>.JPEG (PNG data here)."""
    with tarfile.open(path, "w") as outer:
        for wnid, arrays in images.items():
            inner_buf = io.BytesIO()
            with tarfile.open(fileobj=inner_buf, mode="w") as inner:
                for n, array in enumerate(arrays):
                    add_bytes(inner, f"{wnid}_{n}.JPEG", encode(array))
            add_bytes(outer, f"{wnid}.tar", inner_buf.getvalue())


def make_devkit(path: Path, synsets: list[tuple[int, str, str, int]], ground_truth: list[int]) -> None:
    """ILSVRC2012_devkit_t12.tar.gz with data/meta.mat (synsets: (ILSVRC2012_ID, WNID, words,
    num_children)) and data/ILSVRC2012_validation_ground_truth.txt (one ID per validation image)."""
    import scipy.io

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    records = np.zeros((1, len(synsets)), dtype=[(f, "O") for f in fields])
    for k, (ident, wnid, words, children) in enumerate(synsets):
        records[0, k] = (np.array([[ident]], np.uint16), wnid, words, "a gloss", np.array([[children]], np.uint8),
                         np.zeros((1, 0)), np.array([[0]], np.uint8), np.array([[1300]], np.uint16))
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": records})
    truth = "".join(f"{i}\n" for i in ground_truth).encode()
    with tarfile.open(path, "w:gz") as tar:
        add_bytes(tar, "ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue())
        add_bytes(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth)
        add_bytes(tar, "ILSVRC2012_devkit_t12/readme.txt", b"devkit")


def cifar_batches(per_batch: int, seed: int = 0) -> dict[str, dict]:
    """The six CIFAR-10 python batches and batches.meta as dicts in the real format (str keys, as
    pickle.load(..., encoding="latin1") gives for the original files)."""
    rng = np.random.default_rng(seed)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {
            "batch_label": f"{name} of 5",
            "labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "filenames": [f"img_{name}_{i}.png" for i in range(per_batch)],
        }
    batches["batches.meta"] = {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}
    return batches


def make_cifar_archive(path: Path, batches: dict[str, dict]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in batches.items():
            add_bytes(tar, f"cifar-10-batches-py/{name}", pickle.dumps(content, protocol=2))


def make_cifar_folder(folder: Path, batches: dict[str, dict]) -> None:
    folder.mkdir(parents=True)
    for name, content in batches.items():
        (folder / name).write_bytes(pickle.dumps(content, protocol=2))
