"""A split's images stored as JPEG: one file of concatenated JPEG streams and an offset index.

    <split>/images.jpeg   the S x S x 3 images, each re-encoded as a baseline JPEG, back to back
    <split>/offsets.npy   int64 (N + 1,): image i is bytes [offsets[i], offsets[i + 1]) of images.jpeg

The file is memory-mapped, so opening costs nothing per image (no Python object per sample) and the page
cache keeps what is read often. A batch is decoded by libjpeg-turbo (simplejpeg, which releases the GIL)
on several threads straight into the batch's buffer; the decoder is deterministic, so a batch holds the same
pixels every time, and the augmentation after it, randomness and exact resume are those of a raw store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import simplejpeg

from alexnet.errors import UserError
from alexnet.threads import split_work

DEFAULT_QUALITY = 90  # mean absolute error about 2.7 of 255 on ImageNet photos at 4:2:0 (docs/PERFORMANCE.md)
SUBSAMPLING = "420"  # the chroma subsampling of most JPEG photographs, ImageNet's own included


def encode(image: np.ndarray, quality: int) -> bytes:
    """One stored image (uint8 S x S x 3) as JPEG bytes."""
    return simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=quality, colorspace="RGB",
                                  colorsubsampling=SUBSAMPLING)


def decode_into(data: bytes | memoryview | np.ndarray, out: np.ndarray) -> None:
    """Decode one stored JPEG into `out` (uint8 S x S x 3, contiguous): ValueError when it is not one of
    that size."""
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    if (height, width, 3) != out.shape:
        raise ValueError(f"a {width}x{height} image where the store holds {out.shape[1]}x{out.shape[0]}")
    simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out)


class JpegImages:
    """The images of one JPEG split, indexed like the raw store's (N, S, S, 3) uint8 array: `images[i]`,
    `images[a:b]`, `images[index_array]` decode to new arrays; `read_into(index, out)` decodes a batch into
    an existing buffer on torch's threads."""

    dtype = np.dtype(np.uint8)

    def __init__(self, path: Path, offsets_path: Path, count: int, size: int) -> None:
        self.path, self.size = path, size
        self.shape = (count, size, size, 3)
        try:
            offsets = np.load(offsets_path, mmap_mode="r")  # the header first: a huge file is not read
        except (OSError, ValueError) as exc:
            raise UserError(f"{offsets_path} is missing or damaged ({type(exc).__name__}): prepare the store "
                            "again") from None
        file_bytes = path.stat().st_size
        if (offsets.shape != (count + 1,) or offsets.dtype != np.int64 or (count and offsets[0] != 0)
                or (count and offsets[-1] != file_bytes) or np.any(np.diff(offsets) <= 0)):
            raise UserError(f"{offsets_path} does not index {path} ({count} images, {file_bytes} bytes): prepare "
                            "the store again")
        self.offsets = np.array(offsets)
        self.data = np.memmap(path, dtype=np.uint8, mode="r") if file_bytes else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return self.shape[0]

    def encoded(self, i: int) -> np.ndarray:
        """The JPEG bytes of image i (a view of the map)."""
        return self.data[self.offsets[i]:self.offsets[i + 1]]

    def read_into(self, index: np.ndarray, out: np.ndarray) -> None:
        """Decode images `index` into out[0..len(index)) (uint8 (len, S, S, 3), contiguous)."""
        index = np.asarray(index, dtype=np.int64)

        def work(first: int, last: int) -> None:
            for j in range(first, last):
                self._decode(int(index[j]), out[j])

        split_work(work, len(index), min_per_task=4)

    def __getitem__(self, key: int | slice | np.ndarray | list) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"image {key} of {len(self)}")
            out = np.empty(self.shape[1:], np.uint8)
            self._decode(i, out)
            return out
        index = np.arange(len(self))[key]
        out = np.empty((len(index), *self.shape[1:]), np.uint8)
        self.read_into(index, out)
        return out

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def _decode(self, i: int, out: np.ndarray) -> None:
        try:
            decode_into(self.encoded(i), out)
        except ValueError as exc:
            raise UserError(f"image {i} of {self.path} does not decode ({exc}): the store is damaged; prepare it "
                            "again") from None
