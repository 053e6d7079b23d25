"""Batches of stored uint8 images for training and evaluation.

Epoch order is a permutation that is a pure function of (seed, epoch). The configured batch is the
global batch: each step takes the next `batch_size` indices of that order and rank r of W takes the r-th
contiguous share, so W processes together see exactly the samples one process sees. Evaluation splits
the set into disjoint contiguous shares, one per rank, with no padding: every image is counted exactly once.

Speed and memory. A background thread prepares the next `prefetch` batches while the model runs:
- the images of a batch are read from the store's file with one read per image, straight into the batch's
  buffer (pinned memory for a GPU). Unlike reading through the memory map, this maps nothing into the
  process, so its resident memory is a few batches whatever the store's size (docs/PERFORMANCE.md);
- on a GPU the copy to the device runs on a side CUDA stream and the consumer's stream waits on an event,
  so transfer overlaps compute; with the store resident in device memory the gather runs there too;
- a JPEG store's images are decoded on torch's CPU threads into that buffer, or with decode_on_device the
  compressed bytes go to the GPU and nvJPEG decodes the batch there (torchvision.io.decode_jpeg), so a
  machine with few cores still feeds a fast GPU.
"""

from __future__ import annotations

import mmap
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from alexnet.data.buffers import BufferPool
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
    ready: Any = None  # CUDA: event recorded on the loader's copy stream after the batch's transfers


def _file_of(images: np.ndarray) -> tuple[str, int] | None:
    """(path, byte offset of row 0) when `images` is a whole memory-mapped .npy file, else None.

    Only an array that owns its map qualifies: a slice of a np.memmap keeps the parent's `offset`, which
    would then be wrong.
    """
    if (isinstance(images, np.memmap) and isinstance(images.base, mmap.mmap) and images.filename
            and images.flags.c_contiguous):
        return str(images.filename), int(images.offset)
    return None


def _resident_copy(images: np.ndarray, n: int, device: torch.device) -> Tensor:
    """The first n images in device memory, copied 64 MiB at a time (host memory stays flat)."""
    out = torch.empty((n,) + tuple(images.shape[1:]), dtype=torch.uint8, device=device)
    chunk = max(1, (64 << 20) // max(1, int(np.prod(images.shape[1:]))))
    for i in range(0, n, chunk):
        out[i:i + chunk].copy_(torch.from_numpy(np.array(images[i:min(i + chunk, n)])))
    return out


def _decode_on_device(encoded: list[Tensor], device: torch.device) -> Tensor:
    """nvJPEG's batched decode of JPEG bytes (CPU uint8 tensors) -> uint8 (B, S, S, 3) on `device`."""
    from torchvision.io import ImageReadMode, decode_jpeg

    decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    return torch.stack(decoded).permute(0, 2, 3, 1).contiguous()


class BatchLoader:
    """Reads batches of a split (images memmap + labels) for one rank."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, device: torch.device,
                 *, rank: int = 0, world_size: int = 1, prefetch: int = 2, limit: int = 0,
                 on_device: bool = False, decode_on_device: bool = False) -> None:
        if batch_size % world_size:
            raise UserError(f"batch size {batch_size} does not split evenly over {world_size} processes: "
                            "choose a multiple of the process count")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.n = len(self.labels) if not limit else min(limit, len(self.labels))
        self.batch_size = batch_size
        self.local_batch = batch_size // world_size
        if device.type == "cuda" and device.index is None:  # "cuda": the current device, named (the thread
            device = torch.device("cuda", torch.cuda.current_device())  # below sets it by index)
        self.device = device
        self.rank, self.world_size = rank, world_size
        self.prefetch = prefetch
        self.cuda = device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self.resident: Tensor | None = None
        if decode_on_device and not (self.cuda and hasattr(images, "encoded")):
            raise UserError("train.gpu_decode decodes a JPEG store's batches on a CUDA device: "
                            + ("this store holds raw pixels (nothing to decode)" if self.cuda else
                               "this run is not on one") + "; set train.gpu_decode=false")
        self.decode_on_device = decode_on_device
        if on_device:  # the whole store in device memory: batches are gathered there
            self.resident = _resident_copy(images, self.n, device)
        self.labels_t = torch.from_numpy(self.labels[: self.n].copy())
        self.file = _file_of(images)
        # the batches waiting in the queue, the one being read, the one in use and the one just dropped
        self.buffers = BufferPool(keep=prefetch + 3)
        self.row_bytes = int(np.prod(images.shape[1:], dtype=np.int64))

    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size  # drop the last partial global batch, as the paper's epochs

    def read_images(self, idx: np.ndarray) -> Tensor:
        """uint8 (len(idx), S, S, 3) on the host (pinned for a GPU): the rows `idx` of the split."""
        shape = (len(idx),) + tuple(self.images.shape[1:])
        if self.cuda:
            out = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            buf = out.numpy()
        else:
            # numpy asks the kernel for huge pages on large arrays (torch's allocator does not), so filling a
            # fresh batch costs a few page faults instead of thousands; a batch's array that is no longer in
            # use is filled again instead (buffers.py)
            buf = self.buffers.empty(shape, np.uint8)
            out = torch.from_numpy(buf)
        if hasattr(self.images, "read_into"):  # a JPEG store: decoded on torch's threads into the buffer
            self.images.read_into(idx, buf)
            return out
        if self.file is None:
            np.take(self.images, idx, axis=0, out=buf)
            return out
        path, offset = self.file
        rows = buf.reshape(len(idx), self.row_bytes)
        with open(path, "rb", buffering=0) as f:
            for j, i in enumerate(idx.tolist()):
                f.seek(offset + i * self.row_bytes)
                if f.readinto(rows[j]) != self.row_bytes:
                    raise UserError(f"{path} is shorter than its header says: prepare the store again")
        return out

    def _make(self, idx: Tensor, step: int) -> Batch:
        # Sorted indices read the file in order; the sum over a batch does not depend on order.
        idx, _ = torch.sort(idx)
        if not self.cuda:
            images = self.resident[idx] if self.resident is not None else self.read_images(idx.numpy())
            return Batch(images, self.labels_t[idx], idx, step)
        meta = torch.stack([self.labels_t[idx], idx]).pin_memory()
        encoded = None
        if self.decode_on_device and self.resident is None:
            # copies of the bytes (a view of the read-only map cannot become a tensor)
            encoded = [torch.from_numpy(np.array(self.images.encoded(i))) for i in idx.tolist()]
        images = None if self.resident is not None or encoded is not None else self.read_images(idx.numpy())
        with torch.cuda.stream(self.copy_stream):
            meta = meta.to(self.device, non_blocking=True)
            if encoded is not None:
                images = _decode_on_device(encoded, self.device)
            elif images is None:
                images = self.resident[meta[1]]
            else:
                images = images.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self.copy_stream)
        return Batch(images, meta[0], meta[1], step, ready)

    def _handed_over(self, batch: Batch) -> Batch:
        """On the consumer's thread: make its CUDA stream wait for the batch's copies, and tell the caching
        allocator that the batch's memory (allocated on the copy stream) is in use on that stream."""
        if batch.ready is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(batch.ready)
            for t in (batch.images, batch.labels, batch.index):
                t.record_stream(stream)
        return batch

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
                if self.cuda:  # the current device is per thread: a rank on cuda:1 must not use cuda:0 here
                    torch.cuda.set_device(self.device)
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
                yield self._handed_over(item)
        finally:
            stop.set()
            thread.join(timeout=5)
