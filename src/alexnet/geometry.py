"""Sizes that follow from the model config: pooled sides, each layer's map size, the parameter count.

Shared by the model (which builds its layers from them) and the config check (which refuses a net that
cannot be built before anything is allocated).
"""

from __future__ import annotations

from typing import Protocol


class NetShape(Protocol):
    """The fields of the model config (config.ModelConfig) that the sizes follow from. A protocol, so that this
    module stays below the config, which uses it to check a net before building it."""

    widths: list[int]
    kernels: list[int]
    strides: list[int]
    pads: list[int]
    pool_after: list[bool]
    pool_ceil: bool
    pooling: str
    local: list[bool]
    towers: int
    halve_single_tower: bool
    adaptive_pool: int
    fc: list[int]
    num_classes: int


def pool_geometry(cfg: NetShape) -> tuple[int, int]:
    """(window, stride): overlapping 3/2 as the paper, or the 2/2 of its ablation."""
    return (3, 2) if cfg.pooling == "overlap" else (2, 2)


def pooled_size(side: int, window: int, stride: int, ceil: bool) -> int:
    """Output side of a max-pool: floor as PyTorch and Caffe, or ceil as cuda-convnet (outputsX=0), whose last
    window may hang over the edge (it is then taken over the pixels inside)."""
    if ceil:
        return -(-(side - window) // stride) + 1
    return (side - window) // stride + 1


def layer_sizes(cfg: NetShape, input_size: int) -> list[int]:
    """Side of each conv layer's output (before its pooling) for a square input, from the layer formulas;
    ValueError when the input is too small for the layers."""
    sides = []
    side = input_size
    window, stride = pool_geometry(cfg)
    for k, s, p, pooled in zip(cfg.kernels, cfg.strides, cfg.pads, cfg.pool_after):
        side = (side + 2 * p - k) // s + 1
        if side < 1:
            raise ValueError(f"input of {input_size} pixels is too small for this network")
        sides.append(side)
        if pooled:
            side = pooled_size(side, window, stride, cfg.pool_ceil)
        if side < 1:
            raise ValueError(f"input of {input_size} pixels is too small for this network")
    return sides


def feature_map_size(cfg: NetShape, input_size: int) -> int:
    """Side of the last conv block's output for a square input, from the layer formulas."""
    side = layer_sizes(cfg, input_size)[-1]
    if cfg.pool_after[-1]:
        window, stride = pool_geometry(cfg)
        side = pooled_size(side, window, stride, cfg.pool_ceil)
    return side


def parameter_estimate(cfg: NetShape, input_size: int) -> int:
    """About how many parameters the net has (exactly, without towers or local layers): to refuse a config
    that would exhaust memory before building it."""
    widths = [w // 2 for w in cfg.widths[:-1]] + [cfg.widths[-1]] if cfg.towers == 1 and cfg.halve_single_tower \
        else list(cfg.widths)
    total, in_ch = 0, 3
    sides = layer_sizes(cfg, input_size)
    for i, (w, k) in enumerate(zip(widths, cfg.kernels)):
        per_position = sides[i] ** 2 if cfg.local and cfg.local[i] else 1
        total += per_position * (w * in_ch * k * k + w)
        in_ch = w
    side = cfg.adaptive_pool or feature_map_size(cfg, input_size)
    flat = in_ch * side * side
    for width in [*cfg.fc, cfg.num_classes]:
        total += flat * width + width
        flat = width
    return total
