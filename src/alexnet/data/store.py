"""Reading a prepared store: memory-mapped images, labels, the mean image and the colour PCA.

A store is a folder:
    manifest.json            classes, names, counts, skipped files, colour statistics; written last
    mean.npy                 float32 (S, S, 3): per-pixel mean of the train split, 0..255 units
    <split>/images.npy       uint8 (N, S, S, 3) RGB, a plain .npy opened as a read-only memory map
    <split>/labels.npy       int64 (N,): index into manifest["classes"] (sorted class ids)

open_store is cheap: it reads the manifest, checks every file's size against it and maps the images
without reading them. verify() also recomputes each split's checksum.

Checksum ("blake2b:<hex>", 128-bit BLAKE2b): covers the size of images.npy, its bytes in 64 blocks of
64 KiB spread evenly from the first byte (the .npy header) to the last (the whole file when it is under
4 MiB), and every byte of labels.npy. It catches truncation, a replaced or rewritten file, a changed
header or label; a change confined to unsampled bytes of a large file goes unnoticed (the price of
checking 250 GB in milliseconds).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alexnet.errors import UserError

FORMAT = "alexnet-store/1"
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
_BLOCKS, _BLOCK = 64, 64 * 1024


@dataclass
class Split:
    """One split: images (read-only memmap, uint8 N x S x S x 3) and labels (int64 N)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


class Store:
    """An opened store (see the module docstring); build it with open_store."""

    def __init__(self, root: Path, manifest: dict) -> None:
        self.root = root
        self.manifest = manifest
        self.size: int = int(manifest["size"])
        self.classes: list[str] = list(manifest["classes"])
        self.class_names: list[str] = list(manifest["class_names"])
        pca = manifest["pca"]
        self.pca_eigenvalues = np.asarray(pca["eigenvalues"], dtype=np.float32)
        self.pca_eigenvectors = np.asarray(pca["eigenvectors"], dtype=np.float32)  # columns are eigenvectors
        self.mean = _load_array(root / "mean.npy", (self.size, self.size, 3)).astype(np.float32, copy=False)
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
            images, labels = self.root / name / "images.npy", self.root / name / "labels.npy"
            _check_size(images, int(info["images_bytes"]))
            if checksum(images, labels) != info["checksum"]:
                raise UserError(
                    f"{images} or {labels} changed since the store was prepared (checksum mismatch): "
                    "prepare the store again"
                )

    def _open_split(self, name: str) -> Split:
        info = self.manifest["splits"][name]
        count = int(info["count"])
        images_path = self.root / name / "images.npy"
        _check_size(images_path, int(info["images_bytes"]))
        try:
            images = np.load(images_path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise UserError(f"{images_path} is not a readable .npy ({exc}): prepare the store again") from None
        if images.shape != (count, self.size, self.size, 3) or images.dtype != np.uint8:
            raise UserError(f"{images_path} holds {images.dtype} {images.shape}, the manifest says "
                            f"uint8 ({count}, {self.size}, {self.size}, 3): prepare the store again")
        labels = _load_array(self.root / name / "labels.npy", (count,)).astype(np.int64, copy=False)
        return Split(images, labels)

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {len(s)}" for n, s in self._splits.items())
        return f"Store({str(self.root)!r}, {self.size}x{self.size}, {len(self.classes)} classes, {counts})"


def is_store(path: str | Path) -> bool:
    """True when path holds a finished store (manifest present, right format, complete)."""
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
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
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{manifest_path} is unreadable ({exc}): prepare the store again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise UserError(f"{path} is not an {FORMAT} store (format {found!r}): prepare it again with this version")
    if manifest.get("complete") is not True:
        raise UserError(f"{path} is an unfinished store: run the same `alexnet prepare` command again to finish it")
    try:
        return Store(root, manifest)
    except KeyError as exc:
        raise UserError(f"{manifest_path} lacks {exc}: prepare the store again") from None


def checksum(images_path: Path, labels_path: Path) -> str:
    """The store's fingerprint of one split (see the module docstring for what it covers)."""
    digest = hashlib.blake2b(digest_size=16)
    size = os.path.getsize(images_path)
    digest.update(size.to_bytes(8, "little"))
    with open(images_path, "rb") as f:
        if size <= _BLOCKS * _BLOCK:
            digest.update(f.read())
        else:
            for i in range(_BLOCKS):
                f.seek(i * (size - _BLOCK) // (_BLOCKS - 1))
                digest.update(f.read(_BLOCK))
    digest.update(Path(labels_path).read_bytes())
    return "blake2b:" + digest.hexdigest()


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
