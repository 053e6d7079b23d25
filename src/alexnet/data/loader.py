"""Batches of stored uint8 images for training and evaluation.

Epoch order is a permutation that is a pure function of (seed, epoch). The configured batch is the
global batch: each step takes the next `batch_size` indices of that order and rank r of W takes the r-th
contiguous share, so W processes together see exactly the samples one process sees. A background thread
reads the next batches from the memory map straight into (pinned) buffers and copies them to the device
without blocking, so reading overlaps compute. Evaluation splits the set into disjoint contiguous shares,
one per rank, with no padding: every image is counted exactly once.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from alexnet.errors import UserError


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The order of epoch `epoch`: torch's CPU generator seeded from (seed, epoch) only."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.randperm(n, generator=g)


@dataclass
class Batch:
    images: Tensor  # uint8 (B, S, S, 3) on the device
    labels: Tensor  # int64 (B,) on the device
    index: Tensor  # int64 (B,) global sample indices, on the device
    step: int  # step number within the epoch


class BatchLoader:
    """Reads batches of a split (images memmap + labels) for one rank."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, device: torch.device,
                 *, rank: int = 0, world_size: int = 1, prefetch: int = 2, limit: int = 0,
                 on_device: bool = False) -> None:
        if batch_size % world_size:
            raise UserError(f"batch size {batch_size} does not split evenly over {world_size} processes: "
                            "choose a multiple of the process count")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.n = len(self.labels) if not limit else min(limit, len(self.labels))
        self.batch_size = batch_size
        self.local_batch = batch_size // world_size
        self.device = device
        self.rank, self.world_size = rank, world_size
        self.prefetch = prefetch
        self.pin = device.type == "cuda"
        self.resident: Tensor | None = None
        if on_device:  # the whole store in device memory: batches are gathered there
            self.resident = torch.from_numpy(np.ascontiguousarray(images[: self.n])).to(device)
        self.labels_t = torch.from_numpy(self.labels[: self.n].copy())

    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size  # drop the last partial global batch, as the paper's epochs

    def _read(self, idx: Tensor) -> Tensor:
        if self.resident is not None:
            return self.resident[idx.to(self.device)]
        idx_np = idx.numpy()
        shape = (len(idx_np),) + tuple(self.images.shape[1:])
        out = torch.empty(shape, dtype=torch.uint8, pin_memory=self.pin)
        np.take(self.images, idx_np, axis=0, out=out.numpy())
        return out.to(self.device, non_blocking=True)

    def _make(self, idx: Tensor, step: int) -> Batch:
        # Sorted indices read the memory map in file order; the sum over a batch does not depend on order.
        idx, _ = torch.sort(idx)
        images = self._read(idx)
        labels = self.labels_t[idx].to(self.device, non_blocking=True)
        return Batch(images, labels, idx.to(self.device, non_blocking=True), step)

    def train_epoch(self, seed: int, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        order = epoch_permutation(self.n, seed, epoch)
        lo, hi = self.rank * self.local_batch, (self.rank + 1) * self.local_batch

        def index_of(step: int) -> Tensor:
            return order[step * self.batch_size:(step + 1) * self.batch_size][lo:hi]

        return self._prefetched(self._make(index_of(s), s) for s in range(start_step, self.steps_per_epoch()))

    def eval_batches(self) -> Iterator[Batch]:
        """This rank's contiguous share of the whole split, in order, the last batch possibly short."""
        per = self.n // self.world_size
        extra = self.n % self.world_size
        start = self.rank * per + min(self.rank, extra)
        stop = start + per + (1 if self.rank < extra else 0)
        bs = self.local_batch

        def gen() -> Iterator[Batch]:
            for step, i in enumerate(range(start, stop, bs)):
                yield self._make(torch.arange(i, min(i + bs, stop)), step)

        return self._prefetched(gen())

    def _prefetched(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """Run the generator in a background thread, `prefetch` batches ahead."""
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        done = object()
        stop = threading.Event()

        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def worker() -> None:
            try:
                for b in batches:
                    if not put(b):
                        return
                put(done)
            except BaseException as exc:  # handed to the consumer, raised there
                put(exc)

        thread = threading.Thread(target=worker, daemon=True, name="alexnet-loader")
        thread.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=5)
