"""Augmentation on the device, for the whole batch at once (SPEC section 3).

Input: a batch of stored uint8 images (B, S, S, 3) already on the device, and each sample's global index.
Training: random crop, random horizontal flip, mean subtraction and PCA colour noise, each pixel written once.
Evaluation: the centre crop or the ten views (4 corners + centre, each also mirrored).

Every random number is a pure function of (seed, epoch, sample index, stream), computed on the device by
an integer hash, so that resume, any batch size and any number of processes see the same crops, flips and
colour noise for the same sample. No generator state, no host round trip.

Two ways to cut the views, with bit-identical results: on a GPU one gather of pixels for the whole batch
(a single kernel); on the CPU, where that gather is slow (an index computation per value), one compiled
loop along the crop's rows (cutviews.py; docs/PERFORMANCE.md has the timings).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from alexnet.config import DataConfig
from alexnet.data.buffers import BufferPool
from alexnet.data.cutviews import cut_views

_MASK32 = 0xFFFFFFFF
# torchvision's ImageNet normalisation (the `imagenet` option), in 0..1 units.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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
    mean_mirrored: Tensor | None = None  # mean.flip(1): a mirrored crop of the mean reads it forwards

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
    method: "gather" (one kernel, for GPUs), "compiled" (CPU tensors only), or "auto" (the one for the
    device). Both compute (x - (mean - offset)) * scale in float32 element by element, so they agree bit for
    bit.
    """
    if method == "auto":
        method = "compiled" if images.device.type == "cpu" else "gather"
    if method == "compiled":
        x = _compiled_views(images, offset_y, offset_x, flip, crop, stats, offsets)
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


def _compiled_views(images: Tensor, offset_y: Tensor, offset_x: Tensor, flip: Tensor, crop: int,
                    stats: ColourStats, offsets: Tensor | None) -> Tensor:
    """cutviews.py's compiled loop: (B, crop, crop, 3) float32 on the CPU, each value written once."""
    bsz = images.shape[0]
    # numpy asks the kernel for huge pages on large arrays (torch's CPU allocator does not): a fresh 77 MB
    # batch then costs a few hundred page faults instead of tens of thousands, several times the loop;
    # reusing the previous batch's array once it is free (buffers.py) saves even those
    out = _OUTPUTS.empty((bsz, crop, crop, 3), np.float32)
    if offsets is None:
        offsets = torch.zeros(bsz, 3)
    cut_views(images.contiguous().numpy(), offset_y.numpy(), offset_x.numpy(), flip.numpy(),
              stats.mean.numpy(), stats.mean_mirrored.numpy(), offsets.to(torch.float32).contiguous().numpy(),
              stats.scale.numpy(), out)
    return torch.from_numpy(out)


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
