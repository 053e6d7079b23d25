"""What a preparation will write and how far it has got: the plan (items per split, chunks, the fingerprint a
resumed preparation must match), the progress state (finished chunks and the running integer sums), and the task
and result of one chunk as the decoding workers receive and return them.

Shared by prepare/writer.py (which runs the chunks) and prepare/finish.py (which turns the finished chunks and
sums into a store): neither imports the other's internals.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alexnet.data.store import FORMAT, SPLITS
from alexnet.errors import UserError
from alexnet.files import atomic_path, loads_json
from alexnet.prepare.sources import Item, Source


@dataclass(frozen=True)
class Chunk:
    index: int
    split: str
    start: int
    stop: int


class Plan:
    """What will be written: items per split, chunks, and a fingerprint that a resumed run must match."""

    def __init__(self, source: Source, size: int, chunk: int, seed: int, val_fraction: float, encoding: str,
                 quality: int) -> None:
        self.source, self.size, self.chunk = source, size, chunk
        self.encoding, self.quality = encoding, quality
        self.splits = [s for s in SPLITS if s in source.splits]
        self.items: dict[str, list[Item]] = {s: source.splits[s].items for s in self.splits}
        for split in self.splits:
            if not self.items[split]:
                raise UserError(f"{source.path}: the {split} split has no images to prepare")
        self.chunks: list[Chunk] = []
        for split in self.splits:
            for start in range(0, len(self.items[split]), chunk):
                stop = min(start + chunk, len(self.items[split]))
                self.chunks.append(Chunk(len(self.chunks), split, start, stop))
        digest = hashlib.sha256()
        header = [FORMAT, size, chunk, seed, val_fraction, source.path, source.layout, source.classes,
                  source.val_origin]
        if encoding != "raw":
            header += [encoding, quality]
        digest.update(json.dumps(header).encode())
        for split in self.splits:
            digest.update(f"|{split}|".encode())
            for item in self.items[split]:
                digest.update(repr(tuple(item)).encode("utf-8", "surrogateescape"))
            digest.update(repr(source.splits[split].skipped).encode("utf-8", "surrogateescape"))
        self.fingerprint = digest.hexdigest()

    def listing_skips(self) -> list[tuple[str, str, str]]:
        return [(s, name, reason) for s in self.splits for name, reason in self.source.splits[s].skipped]




class State:
    """The progress file: finished chunks, running integer sums, files skipped while decoding."""

    def __init__(self, size: int) -> None:
        self.done: set[int] = set()
        self.sum_image = np.zeros((size, size, 3), dtype=np.int64)
        self.gram = np.zeros((3, 3), dtype=np.int64)
        self.skipped: list[tuple[str, int, str]] = []  # (split, item index, reason)

    @classmethod
    def load(cls, partial: Path, plan: Plan) -> State:
        state = cls(plan.size)
        path = partial / "state.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as saved:
                state.done = set(int(i) for i in saved["done"])
                state.sum_image = saved["sum_image"].astype(np.int64)
                state.gram = saved["gram"].astype(np.int64)
                state.skipped = [tuple(s) for s in loads_json(str(saved["skipped"]))]
        return state

    def snapshot(self) -> State:
        """A copy that a background save can write while this one keeps changing."""
        copy = State.__new__(State)
        copy.done, copy.skipped = set(self.done), list(self.skipped)
        copy.sum_image, copy.gram = self.sum_image.copy(), self.gram.copy()
        return copy

    def save(self, partial: Path) -> None:
        with atomic_path(partial / "state.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, done=np.array(sorted(self.done), dtype=np.int64), sum_image=self.sum_image,
                     gram=self.gram, skipped=np.array(json.dumps(self.skipped)))


@dataclass
class ChunkTask:
    """One chunk for a decoding worker: its items, where its images go, and how."""

    index: int
    start: int  # the first item's index in its split
    items: list[Item]
    images_path: str  # the split's images.npy (raw; rows start..start+len(items)) or the chunk's own JPEG file
    size: int
    with_stats: bool  # add the chunk's pixels to the mean image and colour PCA sums (the training split)
    quality: int  # JPEG quality of the chunk's file; 0 for raw rows


@dataclass
class ChunkResult:
    """What a worker returns for a chunk: its skipped items and its integer sums (None: not counted)."""

    index: int
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (item index in its split, reason)
    sum_image: np.ndarray | None = None
    gram: np.ndarray = field(default_factory=lambda: np.zeros((3, 3), np.int64))
