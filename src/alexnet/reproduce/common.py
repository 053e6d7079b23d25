"""Pieces both reproductions share: a store seen through a subset of its images, and run bookkeeping."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from alexnet import train
from alexnet.checkpoint import saved_train_settings
from alexnet.config import Config
from alexnet.data.store import Split
from alexnet.parallel.ddp import DistContext
from alexnet.plots import read_metrics
from alexnet.runtime import pick_device
from alexnet.train import Run, adapt_to_store, set_up


class Stopped(Exception):
    """A signal stopped a run at a step boundary; its checkpoint is saved and a re-run continues it."""

    def __init__(self, status: int) -> None:
        super().__init__(f"stopped with exit status {status}")
        self.status = status


class StoreView:
    """A store whose splits are replaced: same classes, mean image and colour PCA, other images.

    Run reads only these attributes, so a view trains exactly like the store it comes from. The mean image and
    PCA stay those of the whole training split (they are statistics of pixels, not of labels).
    """

    def __init__(self, store: Any, splits: dict[str, Split]) -> None:
        self.base = store
        self.size = store.size
        self.classes, self.class_names = store.classes, store.class_names
        self.mean = store.mean
        self.pca_eigenvalues, self.pca_eigenvectors = store.pca_eigenvalues, store.pca_eigenvectors
        self._splits = splits

    def has_split(self, name: str) -> bool:
        return name in self._splits

    def split(self, name: str) -> Split:
        return self._splits[name]

    def verify(self) -> None:
        self.base.verify()


def disjoint_samples(n: int, sizes: list[int], seed: int) -> list[np.ndarray]:
    """Disjoint random index sets of the given sizes out of range(n), each sorted (memory-map order)."""
    order = np.random.default_rng(seed).permutation(n)
    out, start = [], 0
    for size in sizes:
        out.append(np.sort(order[start:start + size]))
        start += size
    return out


def take(split: Split, index: np.ndarray) -> Split:
    """A copy of some images of a split, in memory: meant for CIFAR-sized subsets (15,000 32x32 images are
    46 MB), not for ImageNet."""
    return Split(np.ascontiguousarray(split.images[index]), np.asarray(split.labels[index], dtype=np.int64))


def finished_epochs(run_dir: Path) -> list[dict[str, Any]]:
    """The run's epoch records (metrics.jsonl), one per finished epoch; [] when it has none."""
    return read_metrics(run_dir) if (Path(run_dir) / "metrics.jsonl").is_file() else []


def train_run(cfg: Config, store: Any, run_dir: Path, before: Callable[[Run], None] | None = None,
        progress: bool = False) -> Run:
    """Train (or continue: --resume auto semantics) one run in this process; Stopped on a signal.

    before: called with the run once it is set up, before it resumes and trains (a reproduction's changes:
    hooks, a starting point).
    progress: the run's step and validation bars on stderr (shown only on a terminal, as in `alexnet train`).
    """
    adapt_to_store(cfg, store)
    run = set_up(cfg, store, run_dir, DistContext(device=pick_device(cfg.train.device)), progress,
                 saved=saved_train_settings(run_dir, "auto"))
    if before is not None:
        before(run)
    status = train.fit(run, "auto")
    if status:
        raise Stopped(status)
    return run


def random_subset(store: Any, count: int, seed: int = 0) -> StoreView:
    """The store with its training split cut to `count` random images (copied into memory), val unchanged."""
    train = store.split("train")
    (index,) = disjoint_samples(len(train), [count], seed)
    splits = {"train": take(train, index)}
    if store.has_split("val"):
        splits["val"] = store.split("val")
    return StoreView(store, splits)
