"""A generated, labelled image set for the demo and for tests: shapes on textured backgrounds.

These are NOT photographs: each image is drawn from one of ten shape classes at a random position, size
and colour, over a random colour gradient with noise. The set is small, needs nothing downloaded, and
is hard enough that a network must learn spatial features to separate the classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("disc", "square", "triangle", "ring", "cross", "h-stripes", "v-stripes", "diagonal", "checker",
           "two-discs")


def _shape_mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = rng.uniform(0.22, 0.36) * size
    cy, cx = rng.uniform(r, size - r, 2)
    dy, dx = yy - cy, xx - cx
    dist = np.hypot(dy, dx)
    period = rng.uniform(0.12, 0.2) * size
    if kind == "disc":
        return dist < r
    if kind == "square":
        return (np.abs(dy) < r * 0.85) & (np.abs(dx) < r * 0.85)
    if kind == "triangle":
        return (dy < r * 0.7) & (dy > -r) & (np.abs(dx) < (dy + r) * 0.6)
    if kind == "ring":
        return (dist < r) & (dist > r * 0.55)
    if kind == "cross":
        return ((np.abs(dy) < r * 0.28) & (np.abs(dx) < r)) | ((np.abs(dx) < r * 0.28) & (np.abs(dy) < r))
    if kind == "h-stripes":
        return (np.sin(2 * np.pi * yy / period) > 0) & (dist < r * 1.3)
    if kind == "v-stripes":
        return (np.sin(2 * np.pi * xx / period) > 0) & (dist < r * 1.3)
    if kind == "diagonal":
        return (np.sin(2 * np.pi * (xx + yy) / (period * 1.4)) > 0) & (dist < r * 1.3)
    if kind == "checker":
        return ((np.floor(yy / period) + np.floor(xx / period)) % 2 == 0) & (dist < r * 1.3)
    if kind == "two-discs":
        off = r * 0.6
        return (np.hypot(dy, dx - off) < r * 0.42) | (np.hypot(dy, dx + off) < r * 0.42)
    raise ValueError(kind)


def draw(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 image of class `kind`."""
    t = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    base = rng.uniform(40, 215, 3)
    tilt = rng.uniform(-40, 40, 3)  # a gentle colour gradient across the image
    grad = t[:, None, None] if rng.random() < 0.5 else t[None, :, None]
    background = np.broadcast_to(base + tilt * grad, (size, size, 3))
    colour = rng.uniform(0, 255, 3)
    while np.abs(colour - base).sum() < 150:  # keep the shape clearly visible
        colour = rng.uniform(0, 255, 3)
    mask = _shape_mask(kind, size, rng)[..., None]
    img = np.where(mask, colour, background) + rng.normal(0, 8, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_image_folder(root: str | Path, train_per_class: int = 300, val_per_class: int = 60, size: int = 48,
                       seed: int = 0, classes: tuple[str, ...] = CLASSES) -> Path:
    """root/train/<class>/*.png and root/val/<class>/*.png, deterministic for a seed."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for kind in classes:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(draw(kind, size, rng)).save(folder / f"{kind}_{i:05d}.png")
    return root
