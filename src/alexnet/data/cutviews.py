"""Training and test views cut on the CPU by one compiled loop: crop, mirror, mean image, colour offset.

Each output value is (float32(pixel) - (mean - offset)) * scale, written once, for the pixel and the mean
image's value at the same (possibly mirrored) position: augment.py's formula, in the same float32 steps, so
every way of cutting views agrees bit for bit. A crop row of an (S, S, 3) image is crop * 3 contiguous
values, so the loop runs along rows; a mirrored row reads its pixels backwards three at a time and the
mirrored mean image forwards. The loop releases the GIL: the batch is shared between torch's threads
(threads.py) and the loader's reading thread is never held up by it, nor it by the loader (one torch op
per image and row slice would take 256 GIL hand-offs a batch: docs/PERFORMANCE.md, "Design measurements").
"""

from __future__ import annotations

import numba
import numpy as np

from alexnet.threads import split_work

# output values per piece of work, enough to amortize the hand-off to a thread (tens of microseconds):
# one 224 crop (150,528 values, about 0.08 ms) is a piece alone, 28 crops go 28 to a piece
_MIN_VALUES_PER_TASK = 1 << 16


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _cut(images: np.ndarray, offset_y: np.ndarray, offset_x: np.ndarray, flip: np.ndarray, mean: np.ndarray,
         mean_mirrored: np.ndarray, offsets: np.ndarray, scale: np.ndarray, out: np.ndarray, first: int,
         last: int) -> None:
    crop, size = out.shape[1], images.shape[1]
    width = crop * 3
    shift = np.empty(width, np.float32)  # the image's colour offset, r,g,b,r,g,b... along a row
    factor = np.empty(width, np.float32)
    for k in range(width):
        factor[k] = scale[k % 3]
    for i in range(first, last):
        for k in range(width):
            shift[k] = offsets[i, k % 3]
        y, x = offset_y[i], offset_x[i]
        for r in range(crop):
            dst = out[i, r].reshape(width)
            pixels = images[i, y + r, x:x + crop].reshape(width)
            if flip[i]:
                m = mean_mirrored[y + r, size - x - crop:size - x].reshape(width)
                for c in range(crop):
                    d, s = 3 * c, width - 3 - 3 * c
                    dst[d] = (np.float32(pixels[s]) - (m[d] - shift[d])) * factor[d]
                    dst[d + 1] = (np.float32(pixels[s + 1]) - (m[d + 1] - shift[d + 1])) * factor[d + 1]
                    dst[d + 2] = (np.float32(pixels[s + 2]) - (m[d + 2] - shift[d + 2])) * factor[d + 2]
            else:
                m = mean[y + r, x:x + crop].reshape(width)
                for k in range(width):
                    dst[k] = (np.float32(pixels[k]) - (m[k] - shift[k])) * factor[k]


def cut_views(images: np.ndarray, offset_y: np.ndarray, offset_x: np.ndarray, flip: np.ndarray,
              mean: np.ndarray, mean_mirrored: np.ndarray, offsets: np.ndarray, scale: np.ndarray,
              out: np.ndarray) -> None:
    """out[i] = (crop of images[i] at (offset_y[i], offset_x[i]), mirrored where flip[i], in float32
    - (the same crop of the mean image - offsets[i])) * scale.

    images: C-contiguous uint8 (B, S, S, 3); offset_y, offset_x: int64 (B,); flip: bool (B,); mean and
    mean_mirrored (the mean image and its left-right mirror): contiguous float32 (S, S, 3); offsets: float32
    (B, 3); scale: float32 (3,); out: C-contiguous float32 (B, crop, crop, 3)."""
    per_image = out.shape[1] * out.shape[2] * 3
    split_work(lambda first, last: _cut(images, offset_y, offset_x, flip, mean, mean_mirrored, offsets, scale,
                                        out, first, last),
               len(out), max(1, _MIN_VALUES_PER_TASK // per_image))
