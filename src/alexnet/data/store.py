"""Reading a prepared store: memory-mapped images, labels, the mean image and the colour PCA.

A store is a folder:
    manifest.json            classes, names, counts, skipped files, colour statistics; written last
    mean.npy                 float32 (S, S, 3): per-pixel mean of the train split, 0..255 units
    <split>/images.npy       uint8 (N, S, S, 3) RGB, a plain .npy opened as a read-only memory map
    <split>/labels.npy       int64 (N,): index into manifest["classes"] (sorted class ids)

or, in a JPEG store (manifest "encoding": "jpeg"), instead of images.npy:
    <split>/images.jpeg      the same images re-encoded as JPEG, back to back (data/jpeg.py)
    <split>/offsets.npy      int64 (N + 1,): where each image starts and ends

open_store is cheap: it reads the manifest, checks every file's size against it and maps the images
without reading them. verify() also recomputes each split's checksum.

Checksum ("blake2b:<hex>", 128-bit BLAKE2b): covers the size of images.npy, its bytes in 64 blocks of
64 KiB spread evenly from the first byte (the .npy header) to the last (the whole file when it is under
4 MiB), and every byte of labels.npy. It catches truncation, a replaced or rewritten file, a changed
header or label; a change confined to unsampled bytes of a large file goes unnoticed (the price of
checking 250 GB in milliseconds). In a JPEG store images.jpeg is sampled the same way and offsets.npy is
read whole.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alexnet.errors import UserError
from alexnet.files import loads_json

FORMAT = "alexnet-store/1"
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
ENCODINGS = ("raw", "jpeg")
_BLOCKS, _BLOCK = 64, 64 * 1024


@dataclass
class Split:
    """One split: images (read-only memmap, uint8 N x S x S x 3, or JpegImages indexed alike) and labels
    (int64 N)."""

    images: Any
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


class Store:
    """An opened store (see the module docstring); build it with open_store."""

    def __init__(self, root: Path, manifest: dict) -> None:
        self.root = root
        self.manifest = manifest
        self.size: int = int(manifest["size"])
        self.encoding: str = manifest.get("encoding", "raw")
        self.classes: list[str] = list(manifest["classes"])
        self.class_names: list[str] = list(manifest["class_names"])
        pca = manifest["pca"]
        self.pca_eigenvalues = np.asarray(pca["eigenvalues"], dtype=np.float32)
        self.pca_eigenvectors = np.asarray(pca["eigenvectors"], dtype=np.float32)  # columns are eigenvectors
        self.mean = _load_array(root / "mean.npy", (self.size, self.size, 3)).astype(np.float32, copy=False)
        if not np.isfinite(self.mean).all():
            raise UserError(f"{root / 'mean.npy'} holds values that are not finite: prepare the store again")
        self._splits: dict[str, Split] = {}
        for name in manifest["splits"]:
            self._splits[name] = self._open_split(name)

    def has_split(self, name: str) -> bool:
        return name in self._splits

    def split(self, name: str) -> Split:
        if name not in self._splits:
            raise UserError(f"store {self.root} has no '{name}' split (it has: {', '.join(self._splits)})")
        return self._splits[name]

    def verify(self) -> None:
        """Recompute every split's checksum; UserError naming the first file that changed."""
        for name, info in self.manifest["splits"].items():
            images, *others = split_files(self.root / name, self.encoding)
            _check_size(images, int(info["images_bytes"]))
            if checksum(images, *others) != info["checksum"]:
                raise UserError(
                    f"{images} or {' or '.join(str(p) for p in others)} changed since the store was prepared "
                    "(checksum mismatch): prepare the store again"
                )

    def _open_split(self, name: str) -> Split:
        info = self.manifest["splits"][name]
        count = int(info["count"])
        images_path, *_ = split_files(self.root / name, self.encoding)
        _check_size(images_path, int(info["images_bytes"]))
        if self.encoding == "jpeg":
            from alexnet.data.jpeg import JpegImages

            images = JpegImages(images_path, self.root / name / "offsets.npy", count, self.size)
        else:
            images = _open_raw(images_path, count, self.size)
        labels_path = self.root / name / "labels.npy"
        labels = _load_array(labels_path, (count,))
        # labels index the class list: whole numbers in range (a float label would be truncated, -1 would
        # silently mean the last class)
        if labels.dtype.kind not in "iu":
            raise UserError(f"{labels_path} holds {labels.dtype} labels, not whole class indices: prepare the "
                            "store again")
        if count and (labels.min() < 0 or labels.max() >= len(self.classes)):
            wrong = int(labels.min()) if labels.min() < 0 else int(labels.max())
            raise UserError(f"{labels_path} holds the label {wrong}, outside the {len(self.classes)} classes of the "
                            "manifest: prepare the store again")
        return Split(images, labels.astype(np.int64, copy=False))

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {len(s)}" for n, s in self._splits.items())
        return f"Store({str(self.root)!r}, {self.size}x{self.size}, {len(self.classes)} classes, {counts})"


def split_files(folder: Path, encoding: str) -> list[Path]:
    """The files of one split that its checksum covers: the images first, then labels (and offsets)."""
    if encoding == "jpeg":
        return [folder / "images.jpeg", folder / "labels.npy", folder / "offsets.npy"]
    return [folder / "images.npy", folder / "labels.npy"]


def _open_raw(images_path: Path, count: int, size: int) -> np.ndarray:
    try:
        images = np.load(images_path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise UserError(f"{images_path} is not a readable .npy ({exc}): prepare the store again") from None
    if images.shape != (count, size, size, 3) or images.dtype != np.uint8:
        raise UserError(f"{images_path} holds {images.dtype} {images.shape}, the manifest says "
                        f"uint8 ({count}, {size}, {size}, 3): prepare the store again")
    return images


def is_store(path: str | Path) -> bool:
    """True when path holds a finished store (manifest present, right format, complete)."""
    try:
        manifest = loads_json((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT and manifest.get("complete") is True


def open_store(path: str | Path) -> Store:
    """Open a finished store; UserError (one line) if path is not one, is unfinished or is truncated."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"{path} is not a store (no such folder): make one with `alexnet prepare SRC --out {path}`")
    manifest_path = root / MANIFEST
    if not manifest_path.exists():
        if (root / ".partial").exists():
            raise UserError(f"{path} is an unfinished store: run the same `alexnet prepare` command again to finish it")
        raise UserError(f"{path} is not a store (no {MANIFEST}): make one with `alexnet prepare SRC --out {path}`")
    try:
        manifest = loads_json(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{manifest_path} is unreadable ({exc}): prepare the store again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise UserError(f"{path} is not an {FORMAT} store (format {found!r}): prepare it again with this version")
    if manifest.get("complete") is not True:
        raise UserError(f"{path} is an unfinished store: run the same `alexnet prepare` command again to finish it")
    check_manifest(manifest, manifest_path)
    return Store(root, manifest)


_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def check_manifest(manifest: dict, where: Path) -> None:
    """Every field the store's readers use, with the type, shape and range they assume; UserError naming the
    field otherwise. Split names become folder names, so they are plain names: never '..', never a path."""
    def bad(field: str, wanted: str) -> UserError:
        return UserError(f"{where}: field '{field}' is not {wanted} (a damaged or edited manifest): "
                         "prepare the store again")

    def whole(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def finite_numbers(value: object, count: int) -> bool:
        return (isinstance(value, list) and len(value) == count
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))

    for key in ("size", "classes", "class_names", "pca", "splits"):
        if key not in manifest:
            raise UserError(f"{where} lacks '{key}': prepare the store again")
    if manifest.get("encoding", "raw") not in ENCODINGS:
        raise bad("encoding", f"one of {', '.join(ENCODINGS)}")
    if not whole(manifest["size"]) or not 1 <= manifest["size"] <= 4096:
        raise bad("size", "a whole number of pixels from 1 to 4096")
    classes, names = manifest["classes"], manifest["class_names"]
    if (not isinstance(classes, list) or len(classes) < 1
            or not all(isinstance(c, str) and c.strip() for c in classes) or len(set(classes)) != len(classes)):
        raise bad("classes", "a list of distinct, non-empty class ids")
    if not isinstance(names, list) or len(names) != len(classes) or not all(isinstance(n, str) for n in names):
        raise bad("class_names", f"a list of {len(classes)} names, one per class")
    pca = manifest["pca"]
    if (not isinstance(pca, dict) or not finite_numbers(pca.get("eigenvalues"), 3)
            or not isinstance(pca.get("eigenvectors"), list) or len(pca["eigenvectors"]) != 3
            or not all(finite_numbers(row, 3) for row in pca["eigenvectors"])):
        raise bad("pca", "3 finite eigenvalues and a 3x3 matrix of finite eigenvectors")
    splits = manifest["splits"]
    if not isinstance(splits, dict) or not splits:
        raise bad("splits", "a mapping of split names to their files")
    for name, info in splits.items():
        if not _SPLIT_NAME.match(name):
            raise bad("splits", f"named by plain folder names (got {name!r})")
        if (not isinstance(info, dict) or not whole(info.get("count")) or info["count"] < 0
                or not whole(info.get("images_bytes")) or info["images_bytes"] < 0
                or not isinstance(info.get("checksum"), str)):
            raise bad(f"splits.{name}", "a count, a byte size and a checksum")


def checksum(images_path: Path, *whole_files: Path) -> str:
    """The store's fingerprint of one split (see the module docstring for what it covers): the images file
    sampled, the labels (and a JPEG store's offsets) read whole."""
    digest = hashlib.blake2b(digest_size=16)
    add_sampled(digest, Path(images_path))
    for path in whole_files:
        digest.update(Path(path).read_bytes())
    return "blake2b:" + digest.hexdigest()


def add_sampled(digest: Any, path: Path) -> None:
    """Feed the file's size and 64 blocks of 64 KiB spread evenly over it (all of it when under 4 MiB) to
    `digest`: catches truncation and rewrites of files too large to read whole each time."""
    size = os.path.getsize(path)
    digest.update(size.to_bytes(8, "little"))
    with open(path, "rb") as f:
        if size <= _BLOCKS * _BLOCK:
            digest.update(f.read())
        else:
            for i in range(_BLOCKS):
                f.seek(i * (size - _BLOCK) // (_BLOCKS - 1))
                digest.update(f.read(_BLOCK))


def _check_size(path: Path, expected: int) -> None:
    try:
        actual = os.path.getsize(path)
    except OSError:
        raise UserError(f"{path} is missing: prepare the store again") from None
    if actual != expected:
        raise UserError(f"{path} is truncated or changed ({actual} bytes, the manifest says {expected}): "
                        "prepare the store again")


def _load_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is missing or damaged ({type(exc).__name__}): prepare the store again") from None
    if array.shape != shape:
        raise UserError(f"{path} has shape {array.shape}, expected {shape}: prepare the store again")
    return array
