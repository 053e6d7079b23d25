"""Augmentation on the device, for the whole batch at once (SPEC section 3).

Input: a batch of stored uint8 images (B, S, S, 3) already on the device, and each sample's global index.
Training: random crop + random horizontal flip in one gather, then mean subtraction and PCA colour noise.
Evaluation: the centre crop or the ten views (4 corners + centre, each also mirrored).

Every random number is a pure function of (seed, epoch, sample index, stream), computed on the device by
an integer hash, so that resume, any batch size and any number of processes see the same crops, flips and
colour noise for the same sample. No generator state, no host round trip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from alexnet.config import DataConfig

_MASK32 = 0xFFFFFFFF
# torchvision's ImageNet normalisation (the `imagenet` option), in 0..1 units.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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


def sample_uniform(seed: int, epoch: int, index: Tensor, stream: int) -> Tensor:
    """Uniform [0, 1) float32 per sample index: a pure function of (seed, epoch, index, stream)."""
    key = int(hash32(torch.tensor([(seed * 0x9E3779B1 + epoch) & _MASK32]))[0])
    key = int(hash32(torch.tensor([(key + stream * 0x85EBCA77) & _MASK32]))[0])
    idx = index.to(torch.int64)
    h = hash32((idx & _MASK32) ^ key)
    h = hash32(h ^ ((idx >> 32) & _MASK32) ^ 0x68E31DA4)
    return (h.to(torch.float64) * (1.0 / 2**32)).to(torch.float32)


def sample_normal(seed: int, epoch: int, index: Tensor, stream: int, count: int) -> Tensor:
    """(B, count) standard normals per sample by Box-Muller on hashed uniforms."""
    cols = []
    for j in range(count):
        u1 = sample_uniform(seed, epoch, index, stream * 64 + 2 * j)
        u2 = sample_uniform(seed, epoch, index, stream * 64 + 2 * j + 1)
        radius = torch.sqrt(-2.0 * torch.log1p(-u1))  # log(1 - u1): u1 < 1 so finite
        cols.append(radius * torch.cos(2.0 * math.pi * u2))
    return torch.stack(cols, dim=1)


@dataclass
class ColourStats:
    """What normalisation needs, on the device: the mean image and the RGB PCA (pixel units)."""

    mean: Tensor  # (S, S, 3) float32: per-pixel mean image, or a per-channel constant
    eigenvectors: Tensor  # (3, 3) float32, columns
    eigenvalues: Tensor  # (3,) float32
    scale: Tensor  # (3,) float32: multiply after subtracting the mean (1 for the paper)

    @classmethod
    def build(cls, mean_image: Tensor, eigenvectors: Tensor, eigenvalues: Tensor, normalize: str,
              device: torch.device) -> ColourStats:
        mean = mean_image.to(device=device, dtype=torch.float32)
        scale = torch.ones(3, device=device)
        if normalize == "imagenet":
            mean = torch.tensor([255 * m for m in IMAGENET_MEAN], device=device).expand_as(mean).contiguous()
            scale = torch.tensor([1.0 / (255 * s) for s in IMAGENET_STD], device=device)
        return cls(mean, eigenvectors.to(device, torch.float32), eigenvalues.to(device, torch.float32), scale)


def pca_offsets(cfg: DataConfig, stats: ColourStats, seed: int, epoch: int, index: Tensor) -> Tensor:
    """(B, 3) RGB offsets: [p1 p2 p3] [a1 s1, a2 s2, a3 s3]^T with a_i ~ N(0, pca_std^2) per image."""
    alphas = sample_normal(seed, epoch, index, STREAM_PCA, 3).to(stats.eigenvalues.device) * cfg.pca_std
    lam = stats.eigenvalues.clamp_min(0)
    s = lam.sqrt() if cfg.pca_scale == "sqrt" else lam
    return (alphas * s) @ stats.eigenvectors.T


def _crop_indices(offset_y: Tensor, offset_x: Tensor, flip: Tensor, crop: int) -> tuple[Tensor, Tensor]:
    ar = torch.arange(crop, device=offset_y.device)
    rows = offset_y[:, None] + ar  # (B, crop)
    cols = offset_x[:, None] + torch.where(flip[:, None], crop - 1 - ar, ar)
    return rows, cols


def _gather_views(images: Tensor, rows: Tensor, cols: Tensor, stats: ColourStats,
                  offsets: Tensor | None) -> Tensor:
    """Crop/flip by one gather, subtract the (identically cropped) mean, add colour offsets; NCHW out.

    The result is (B, 3, crop, crop) in channels_last memory: permuting a contiguous NHWC tensor to NCHW
    is exactly that layout, so no copy is made.
    """
    b = torch.arange(images.shape[0], device=images.device)[:, None, None]
    r, c = rows[:, :, None], cols[:, None, :]
    x = images[b, r, c].to(torch.float32)  # (B, crop, crop, 3)
    mean = stats.mean[r, c]  # same crop and flip of the mean image
    if offsets is not None:
        mean = mean - offsets[:, None, None, :]
    x = x.sub_(mean)
    if not bool((stats.scale == 1).all()):
        x = x.mul_(stats.scale)
    return x.permute(0, 3, 1, 2)


def augment_train(images: Tensor, index: Tensor, cfg: DataConfig, stats: ColourStats, seed: int,
                  epoch: int) -> Tensor:
    """Training views of a uint8 batch (B, S, S, 3) on the device -> float32 (B, 3, crop, crop)."""
    bsz, size = images.shape[0], images.shape[1]
    crop, span = cfg.crop, size - cfg.crop + 1
    index = index.to(images.device)
    if cfg.random_crop:
        oy = (sample_uniform(seed, epoch, index, STREAM_CROP_Y) * span).to(torch.int64).clamp_max(span - 1)
        ox = (sample_uniform(seed, epoch, index, STREAM_CROP_X) * span).to(torch.int64).clamp_max(span - 1)
    else:
        oy = ox = torch.full((bsz,), (size - crop) // 2, dtype=torch.int64, device=images.device)
    if cfg.flip:
        flip = sample_uniform(seed, epoch, index, STREAM_FLIP) < 0.5
    else:
        flip = torch.zeros(bsz, dtype=torch.bool, device=images.device)
    offsets = pca_offsets(cfg, stats, seed, epoch, index) if cfg.pca_std > 0 else None
    rows, cols = _crop_indices(oy.to(images.device), ox.to(images.device), flip.to(images.device), crop)
    return _gather_views(images, rows, cols, stats, offsets)


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
        rows, cols = _crop_indices(oy, ox, flip, cfg.crop)
        outs.append(_gather_views(images, rows, cols, stats, None))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
