"""The plain way, for side-by-side timings: what a careful reader of the paper writes with stock PyTorch.

- the net: the same layers as the preset, with torch.nn.LocalResponseNorm applied to each tower's half of
  the maps (instead of alexnet.lrn.layer), in NCHW memory;
- the optimizer: torch.optim.SGD with its defaults (on the CPU that is a Python loop over the parameters);
- the data: torchvision's ImageFolder over the JPEGs, transforms doing the paper's augmentation per image
  (shorter side to S, centre S x S, minus the mean image, random crop, random mirror, PCA colour noise),
  torch's DataLoader with worker processes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from alexnet.config import Config
from alexnet.lrn.layer import LocalResponseNorm
from alexnet.model import AlexNet


class TowerLRN(nn.Module):
    """torch.nn.LocalResponseNorm applied to each tower's part of the maps."""

    def __init__(self, size: int, alpha: float, beta: float, k: float, towers: int) -> None:
        super().__init__()
        self.lrn = nn.LocalResponseNorm(size, alpha=alpha, beta=beta, k=k)
        self.towers = towers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.towers == 1:
            return self.lrn(x)
        return torch.cat([self.lrn(part) for part in x.chunk(self.towers, dim=1)], dim=1)


def plain_net(cfg: Config) -> nn.Module:
    """The preset's network with torch's own LRN in place of alexnet.lrn.layer (the only non-stock layer)."""
    model = AlexNet(cfg.model, cfg.data.crop)
    for i, layer in enumerate(model.features):
        if isinstance(layer, LocalResponseNorm):
            alpha = layer.alpha * layer.size if layer.literal else layer.alpha  # torch divides alpha by size
            model.features[i] = TowerLRN(layer.size, alpha, layer.beta, layer.k, layer.groups)
    return model


def plain_sgd(model: nn.Module, cfg: Config, at_its_best: bool = False) -> torch.optim.Optimizer:
    """torch.optim.SGD with the preset's rate, momentum and decay: as it comes (its per-parameter loop on the
    CPU), or at its best, its fused kernel (the fastest of its implementations, docs/PERFORMANCE.md)."""
    o = cfg.optim
    return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                           fused=at_its_best or None)


def torchvision_sgd(model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of torchvision's alexnet recipe (lr 0.01, momentum 0.9, weight decay 5e-4) with torch's
    fastest update, the fused kernel."""
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, fused=True)


class PCANoise:
    """Adds P @ (a * sqrt(l)), a ~ N(0, std^2), to every pixel of a (3, H, W) float image."""

    def __init__(self, eigenvectors: torch.Tensor, eigenvalues: torch.Tensor, std: float) -> None:
        self.p, self.s, self.std = eigenvectors, eigenvalues.clamp_min(0).sqrt(), std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.p @ (torch.randn(3) * self.std * self.s)
        return x + offset[:, None, None]


class SubtractMean:
    def __init__(self, mean_chw: torch.Tensor) -> None:
        self.mean = mean_chw

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean


def plain_transform(store: Any, crop: int, resize: bool) -> Any:
    """The paper's training augmentation, one PIL image at a time, with torchvision's transforms."""
    from torchvision import transforms as T

    mean = torch.from_numpy(store.mean).permute(2, 0, 1).contiguous()
    steps: list[Any] = [T.Resize(store.size), T.CenterCrop(store.size)] if resize else []
    steps += [T.PILToTensor(), T.ConvertImageDtype(torch.float32), T.Lambda(lambda x: x * 255.0),
              SubtractMean(mean), T.RandomCrop(crop), T.RandomHorizontalFlip(),
              PCANoise(torch.from_numpy(store.pca_eigenvectors), torch.from_numpy(store.pca_eigenvalues), 0.1)]
    return T.Compose(steps)


def plain_loader(folder: str, store: Any, crop: int, batch: int, batches: int, workers: int, resize: bool,
                 pin: bool = False) -> torch.utils.data.DataLoader:
    """ImageFolder + transforms + DataLoader yielding `batches` shuffled batches (repeating the folder if needed)."""
    from torch.utils.data import DataLoader, RandomSampler
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(folder, transform=plain_transform(store, crop, resize))
    sampler = RandomSampler(ds, num_samples=batch * batches)
    return DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True, pin_memory=pin)


def flops_note(cfg: Config) -> str:
    """Multiply-adds per image of the conv and FC layers, for the record (G)."""
    model = AlexNet(cfg.model, cfg.data.crop)
    total, side = 0, cfg.data.crop
    window, stride = (3, 2) if cfg.model.pooling == "overlap" else (2, 2)
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            side = (side + 2 * m.padding[0] - m.kernel_size[0]) // m.stride[0] + 1
            total += side * side * m.out_channels * (m.in_channels // m.groups) * m.kernel_size[0] ** 2
        elif isinstance(m, nn.MaxPool2d):
            side = (side - window) // stride + 1
    total += sum(m.in_features * m.out_features for m in model.classifier if isinstance(m, nn.Linear))
    return f"{total / 1e9:.2f}" if total >= 1e7 else f"{total / 1e6:.1f}M"


def seconds(x: float) -> str:
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and not math.isnan(b) else "-"
