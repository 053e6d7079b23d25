"""Augmentation on the device, for the whole batch at once (SPEC section 3).

Input: a batch of stored uint8 images (B, S, S, 3) already on the device, and each sample's global index.
Training: random crop, random horizontal flip, mean subtraction and PCA colour noise, each pixel written once.
Evaluation: the centre crop or the ten views (4 corners + centre, each also mirrored).

Every random number is a pure function of (seed, epoch, sample index, stream), computed on the device by
an integer hash, so that resume, any batch size and any number of processes see the same crops, flips and
colour noise for the same sample. No generator state, no host round trip.

Three ways to cut the views, with bit-identical results: on a GPU one gather of pixels for the whole batch
(a single kernel). On the CPU, where that gather is slow (an index computation per value): small crops are
picked whole out of a strided view of every window of the batch, large ones one image at a time as a slice
converted and mean-subtracted in one pass (docs/PERFORMANCE.md has the timings).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from alexnet.config import DataConfig
from alexnet.data.buffers import BufferPool

_MASK32 = 0xFFFFFFFF
# torchvision's ImageNet normalisation (the `imagenet` option), in 0..1 units.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# On the CPU, crops of at least this many pixels are cut image by image, smaller ones all at once from the
# windows view: the loop costs a few microseconds per image and op, the windows pick about 10 ns per value.
# Measured on 2 cores, one thread: windows won at 24 and 32 pixel crops (2-4x), slices from 56 up (3x at 56,
# more above).
_SLICES_MIN_PIXELS = 48 * 48
# the float views of training batches on the CPU: this one and the one the last training step still holds
_OUTPUTS = BufferPool(keep=3)

# Independent random streams per sample.
STREAM_CROP_Y, STREAM_CROP_X, STREAM_FLIP, STREAM_PCA = 1, 2, 3, 4


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2^32 for 0 <= x < 2^32 without overflowing int64: split c into 16-bit halves."""
    lo = x * (c & 0xFFFF)
    hi = (x * (c >> 16)) & 0xFFFF
    return (lo + (hi << 16)) & _MASK32


def hash32(x: Tensor) -> Tensor:
    """A 32-bit integer mixer (Wellons' lowbias32) on int64 tensors holding values in [0, 2^32)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _hash32_int(x: int) -> int:
    """hash32 on one Python int: the per-stream keys are made on the host, so no device round trip."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def _stream_key(seed: int, epoch: int, stream: int) -> int:
    key = _hash32_int((seed * 0x9E3779B1 + epoch) & _MASK32)
    return _hash32_int((key + stream * 0x85EBCA77) & _MASK32)


def sample_uniforms(seed: int, epoch: int, index: Tensor, streams: Sequence[int]) -> Tensor:
    """(B, len(streams)) uniforms in [0, 1), float32: a pure function of (seed, epoch, index, stream).

    All streams go through one hash over a (B, K) tensor: a batch's random numbers cost about twenty
    tensor ops whatever K, which matters on the CPU where each op has a fixed cost of microseconds.
    """
    idx = index.to(torch.int64)
    low = idx & _MASK32
    keyed = torch.stack([low ^ _stream_key(seed, epoch, s) for s in streams], dim=1)
    h = hash32(keyed)
    h = hash32(h ^ (((idx >> 32) & _MASK32) ^ 0x68E31DA4)[:, None])
    return (h.to(torch.float64) * (1.0 / 2**32)).to(torch.float32)


def sample_uniform(seed: int, epoch: int, index: Tensor, stream: int) -> Tensor:
    """Uniform [0, 1) float32 per sample index: a pure function of (seed, epoch, index, stream)."""
    return sample_uniforms(seed, epoch, index, [stream])[:, 0]


def _normal_streams(stream: int, count: int) -> list[int]:
    return [stream * 64 + j for j in range(2 * count)]


def _box_muller(u: Tensor) -> Tensor:
    """(B, 2 * count) uniforms, pairs side by side -> (B, count) standard normals."""
    u1, u2 = u[:, 0::2], u[:, 1::2]
    radius = torch.sqrt(-2.0 * torch.log1p(-u1))  # log(1 - u1): u1 < 1 so finite
    return radius * torch.cos(2.0 * math.pi * u2)


def sample_normal(seed: int, epoch: int, index: Tensor, stream: int, count: int) -> Tensor:
    """(B, count) standard normals per sample by Box-Muller on hashed uniforms."""
    return _box_muller(sample_uniforms(seed, epoch, index, _normal_streams(stream, count)))


@dataclass
class ColourStats:
    """What normalisation needs, on the device: the mean image and the RGB PCA (pixel units)."""

    mean: Tensor  # (S, S, 3) float32: per-pixel mean image, or a per-channel constant
    eigenvectors: Tensor  # (3, 3) float32, columns
    eigenvalues: Tensor  # (3,) float32
    scale: Tensor  # (3,) float32: multiply after subtracting the mean (1 for the paper)
    unit_scale: bool = True  # scale is all ones: known on the host, so no device sync per batch
    mean_mirrored: Tensor | None = None  # mean.flip(1): mirrored crops of the mean are plain slices of it

    def __post_init__(self) -> None:
        if self.mean_mirrored is None:
            self.mean_mirrored = self.mean.flip(1).contiguous()

    @classmethod
    def build(cls, mean_image: Tensor, eigenvectors: Tensor, eigenvalues: Tensor, normalize: str,
              device: torch.device) -> ColourStats:
        mean = mean_image.to(device=device, dtype=torch.float32).contiguous()
        scale = torch.ones(3, device=device)
        unit = True
        if normalize == "imagenet":
            mean = torch.tensor([255 * m for m in IMAGENET_MEAN], device=device).expand_as(mean).contiguous()
            scale = torch.tensor([1.0 / (255 * s) for s in IMAGENET_STD], device=device)
            unit = False
        return cls(mean, eigenvectors.to(device, torch.float32), eigenvalues.to(device, torch.float32), scale,
                   unit)


def pca_offsets(cfg: DataConfig, stats: ColourStats, seed: int, epoch: int, index: Tensor) -> Tensor:
    """(B, 3) RGB offsets: [p1 p2 p3] [a1 s1, a2 s2, a3 s3]^T with a_i ~ N(0, pca_std^2) per image."""
    return _offsets_from_normals(cfg, stats, sample_normal(seed, epoch, index, STREAM_PCA, 3))


def _offsets_from_normals(cfg: DataConfig, stats: ColourStats, normals: Tensor) -> Tensor:
    alphas = normals.to(stats.eigenvalues.device) * cfg.pca_std
    lam = stats.eigenvalues.clamp_min(0)
    s = lam.sqrt() if cfg.pca_scale == "sqrt" else lam
    return (alphas * s) @ stats.eigenvectors.T


def _crop_indices(offset_y: Tensor, offset_x: Tensor, flip: Tensor, crop: int) -> tuple[Tensor, Tensor]:
    ar = torch.arange(crop, device=offset_y.device)
    rows = offset_y[:, None] + ar  # (B, crop)
    cols = offset_x[:, None] + torch.where(flip[:, None], crop - 1 - ar, ar)
    return rows, cols


def crop_views(images: Tensor, offset_y: Tensor, offset_x: Tensor, flip: Tensor, crop: int, stats: ColourStats,
               offsets: Tensor | None, method: str = "auto") -> Tensor:
    """Crop (and mirror) each image, subtract the identically cropped mean image, add colour offsets.

    images: uint8 (B, S, S, 3); offset_y, offset_x: int64 (B,) top-left corners; flip: bool (B,);
    offsets: (B, 3) float32 or None. Returns float32 (B, 3, crop, crop) in channels_last memory: permuting
    a contiguous NHWC tensor to NCHW is exactly that layout, so no copy is made.
    method: "gather" (one kernel, for GPUs), "windows" or "slices" (for the CPU: small and large crops), or
    "auto". All compute x - (mean - offset) in float32 element by element, so they agree bit for bit.
    """
    if method == "auto":
        if images.device.type != "cpu":
            method = "gather"
        else:
            method = "slices" if crop * crop >= _SLICES_MIN_PIXELS else "windows"
    if method == "slices":
        x = _sliced_views(images, offset_y, offset_x, flip, crop, stats, offsets)
    elif method == "windows":
        with _one_thread():
            x = _windowed_views(images, offset_y, offset_x, flip, crop, stats, offsets)
    else:
        rows, cols = _crop_indices(offset_y, offset_x, flip, crop)
        x = _gathered_views(images, rows, cols, stats, offsets)
    if not stats.unit_scale:
        x = x.mul_(stats.scale)
    return x.permute(0, 3, 1, 2)


def _gathered_views(images: Tensor, rows: Tensor, cols: Tensor, stats: ColourStats,
                    offsets: Tensor | None) -> Tensor:
    """The whole batch in one advanced-indexing gather: (B, crop, crop, 3) float32."""
    b = torch.arange(images.shape[0], device=images.device)[:, None, None]
    r, c = rows[:, :, None], cols[:, None, :]
    x = images[b, r, c].to(torch.float32)  # (B, crop, crop, 3)
    mean = stats.mean[r, c]  # same crop and flip of the mean image
    if offsets is not None:
        mean = mean - offsets[:, None, None, :]
    return x.sub_(mean)


def _windows(t: Tensor, crop: int) -> Tensor:
    """(N, S, S, C) contiguous -> the view (N, S - crop + 1, S - crop + 1, crop, crop, C) of every window."""
    n, size, _, ch = t.shape
    span = size - crop + 1
    row, col = size * ch, ch
    return t.as_strided((n, span, span, crop, crop, ch), (size * row, row, col, row, col, 1))


def _windowed_views(images: Tensor, offset_y: Tensor, offset_x: Tensor, flip: Tensor, crop: int,
                    stats: ColourStats, offsets: Tensor | None) -> Tensor:
    """The whole batch at once: each view is one window picked whole (the index names a window, not a
    value). Mirrored views are windows of a mirrored copy of the batch, so this suits small images."""
    bsz, size = images.shape[0], images.shape[1]
    mirrored_x = torch.where(flip, size - crop - offset_x, offset_x)  # the same window, seen in the mirror
    source = torch.cat([images.contiguous(), images.flip(2)])  # (2B, S, S, 3): as stored, then mirrored
    which = torch.arange(bsz, device=images.device) + flip.to(torch.int64) * bsz
    x = _windows(source, crop)[which, offset_y, mirrored_x].to(torch.float32)
    means = torch.stack([stats.mean, stats.mean_mirrored])
    mean = _windows(means, crop)[flip.to(torch.int64), offset_y, mirrored_x].view(bsz, crop, crop * 3)
    if offsets is not None:
        mean = mean - offsets.repeat(1, crop)[:, None, :]  # rows of crop * 3 values: r,g,b,r,g,b...
    return x.view(bsz, crop, crop * 3).sub_(mean).view(bsz, crop, crop, 3)


def _sliced_views(images: Tensor, offset_y: Tensor, offset_x: Tensor, flip: Tensor, crop: int,
                  stats: ColourStats, offsets: Tensor | None) -> Tensor:
    """One image at a time: (B, crop, crop, 3) float32, each written once, with no index tensors.

    A crop of an (S, S, 3) image is a strided view whose rows are crop * 3 contiguous values, so every
    op below runs over rows of that length (vectorized; the per-image colour offset is one such row,
    broadcast down). A mirrored crop is a slice of the mirrored mean image and a flipped copy of the
    image's slice (uint8, a quarter of the float output's bytes). Two Python threads sharing the images
    measured no faster than one (the loop is bound by memory traffic), so there is one.
    """
    bsz, size = images.shape[0], images.shape[1]
    if images.device.type == "cpu":
        # numpy asks the kernel for huge pages on large arrays (torch's CPU allocator does not): a fresh 77 MB
        # batch then costs a few hundred page faults instead of tens of thousands, several times the copy;
        # reusing the previous batch's array once it is free (buffers.py) saves even those
        out = torch.from_numpy(_OUTPUTS.empty((bsz, crop, crop, 3), np.float32))
    else:
        out = torch.empty(bsz, crop, crop, 3, dtype=torch.float32, device=images.device)
    rows_of = (crop, crop * 3)
    mean_shifted = torch.empty(rows_of, dtype=torch.float32, device=images.device)
    offset_rows = offsets.repeat(1, crop) if offsets is not None else None  # (B, crop * 3): r,g,b,r,g,b...
    with _one_thread():
        for i, (y, x, mirrored) in enumerate(zip(offset_y.tolist(), offset_x.tolist(), flip.tolist())):
            if mirrored:
                pixels = images[i, y:y + crop, x:x + crop].flip(1)
                mean = stats.mean_mirrored[y:y + crop, size - x - crop:size - x]
            else:
                pixels = images[i, y:y + crop, x:x + crop]
                mean = stats.mean[y:y + crop, x:x + crop]
            mean = mean.reshape(rows_of)
            if offset_rows is not None:
                mean = torch.sub(mean, offset_rows[i], out=mean_shifted)
            torch.sub(pixels.reshape(rows_of), mean, out=out[i].view(rows_of))
    return out


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch's intra-op threads set to one for a while. One image's ops are too small to split well: on an
    idle 2-core machine two intra-op threads saved 15% of the loop, but when other processes held the cores
    each op waited for a descheduled thread and the loop ran 3 to 10 times slower than on one thread."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def augment_train(images: Tensor, index: Tensor, cfg: DataConfig, stats: ColourStats, seed: int,
                  epoch: int) -> Tensor:
    """Training views of a uint8 batch (B, S, S, 3) on the device -> float32 (B, 3, crop, crop)."""
    bsz, size = images.shape[0], images.shape[1]
    crop, span = cfg.crop, size - cfg.crop + 1
    index = index.to(images.device)
    pca_streams = _normal_streams(STREAM_PCA, 3) if cfg.pca_std > 0 else []
    u = sample_uniforms(seed, epoch, index, [STREAM_CROP_Y, STREAM_CROP_X, STREAM_FLIP, *pca_streams])
    if cfg.random_crop:
        oy = (u[:, 0] * span).to(torch.int64).clamp_max(span - 1)
        ox = (u[:, 1] * span).to(torch.int64).clamp_max(span - 1)
    else:
        oy = ox = torch.full((bsz,), (size - crop) // 2, dtype=torch.int64, device=images.device)
    if cfg.flip:
        flip = u[:, 2] < 0.5
    else:
        flip = torch.zeros(bsz, dtype=torch.bool, device=images.device)
    offsets = _offsets_from_normals(cfg, stats, _box_muller(u[:, 3:])) if pca_streams else None
    return crop_views(images, oy, ox, flip, crop, stats, offsets)


def view_offsets(size: int, crop: int) -> list[tuple[int, int, bool]]:
    """The paper's ten test views as (y, x, mirrored): centre and 4 corners, then the same mirrored."""
    far = size - crop
    centre = far // 2
    five = [(centre, centre), (0, 0), (0, far), (far, 0), (far, far)]
    return [(y, x, False) for y, x in five] + [(y, x, True) for y, x in five]


def eval_views(images: Tensor, cfg: DataConfig, stats: ColourStats, ten_crop: bool) -> Tensor:
    """Centre crop: (B, 3, c, c). Ten crops: (10 * B, 3, c, c), view-major (all of view 0 first)."""
    bsz, size = images.shape[0], images.shape[1]
    views = view_offsets(size, cfg.crop) if ten_crop else view_offsets(size, cfg.crop)[:1]
    outs = []
    for y, x, mirrored in views:
        oy = torch.full((bsz,), y, dtype=torch.int64, device=images.device)
        ox = torch.full((bsz,), x, dtype=torch.int64, device=images.device)
        flip = torch.full((bsz,), mirrored, dtype=torch.bool, device=images.device)
        outs.append(crop_views(images, oy, ox, flip, cfg.crop, stats, None))
    if len(outs) == 1:
        return outs[0]
    return torch.cat(outs, dim=0).contiguous(memory_format=torch.channels_last)
