"""Local response normalization on CUDA as two fused Triton kernels (forward, backward), for NHWC maps.

The eager layer in layer.py is a chain of full-size float32 passes written for the CPU; on a GPU each pass
is a trip through memory, and on an H100 the paper model's two LRN layers took more than half of a
training step at batch 1024 (docs/PERFORMANCE.md). Here each pixel's channels are one contiguous row of
a channels_last tensor, and one program normalizes a block of rows: the forward reads each value once
from memory (its neighbours' reloads hit the cache) and writes the output once; the backward reads the
input and the incoming gradient and writes the gradient, recomputing the scales it needs.

The formulas are layer.py's (module docstring there): b_i = a_i * scale_i ** -beta, scale_i = k + c * S_i,
S_i the sum of squares over window(i) = [i - size // 2, i + (size - 1) // 2] within the tower, and

    grad_a_j = g_j * scale_j ** -beta - 2 * beta * c * a_j * sum_{i : j in window(i)} g_i a_i scale_i ** (-beta - 1)

computed in float32 whatever the input's dtype. Used by lrn.layer.local_response_norm for CUDA tensors in
channels_last layout when Triton is importable; every other case keeps the eager path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from alexnet.lrn.autograd import fused_lrn_function

# a block of about this many values per program: enough work per program, few registers
_BLOCK_ELEMENTS = 2048


@triton.jit
def _window_sum(x_ptr, base, centre, valid, tower, C: tl.constexpr, TOWER: tl.constexpr, SIZE: tl.constexpr,
                BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Sum of squares over window(centre) within the tower; float32, (BLOCK_R, BLOCK_C)."""
    total = tl.zeros((BLOCK_R, BLOCK_C), tl.float32)
    for j in tl.static_range(SIZE):
        cc = centre + (j - SIZE // 2)
        m = valid & (cc >= 0) & (cc < C) & (cc // TOWER == tower)
        v = tl.load(x_ptr + base + cc, mask=m, other=0.0).to(tl.float32)
        total += v * v
    return total


@triton.jit
def _lrn_forward_kernel(x_ptr, out_ptr, rows, coefficient, beta, k, C: tl.constexpr, TOWER: tl.constexpr,
                        SIZE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    c = tl.arange(0, BLOCK_C)[None, :]
    inside = (r < rows) & (c < C)
    base = r.to(tl.int64) * C
    tower = c // TOWER
    a = tl.load(x_ptr + base + c, mask=inside, other=0.0).to(tl.float32)
    scale = k + coefficient * _window_sum(x_ptr, base, c, inside, tower, C, TOWER, SIZE, BLOCK_R, BLOCK_C)
    out = a * tl.exp2(-beta * tl.log2(scale))
    tl.store(out_ptr + base + c, out.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _lrn_backward_kernel(x_ptr, g_ptr, dx_ptr, rows, coefficient, beta, k, C: tl.constexpr,
                         TOWER: tl.constexpr, SIZE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    c = tl.arange(0, BLOCK_C)[None, :]
    inside = (r < rows) & (c < C)
    base = r.to(tl.int64) * C
    tower = c // TOWER
    a = tl.load(x_ptr + base + c, mask=inside, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + base + c, mask=inside, other=0.0).to(tl.float32)
    scale = k + coefficient * _window_sum(x_ptr, base, c, inside, tower, C, TOWER, SIZE, BLOCK_R, BLOCK_C)
    direct = g * tl.exp2(-beta * tl.log2(scale))
    # the positions i whose windows hold j: i in [j - (size - 1) // 2, j + size // 2], same tower
    through = tl.zeros((BLOCK_R, BLOCK_C), tl.float32)
    for d in tl.static_range(SIZE):
        i = c + (d - (SIZE - 1) // 2)
        valid = inside & (i >= 0) & (i < C) & (i // TOWER == tower)
        a_i = tl.load(x_ptr + base + i, mask=valid, other=0.0).to(tl.float32)
        g_i = tl.load(g_ptr + base + i, mask=valid, other=0.0).to(tl.float32)
        scale_i = k + coefficient * _window_sum(x_ptr, base, i, valid, tower, C, TOWER, SIZE, BLOCK_R, BLOCK_C)
        scale_i = tl.where(valid, scale_i, 1.0)  # outside: a_i = g_i = 0, keep the power finite
        through += g_i * a_i * tl.exp2((-beta - 1.0) * tl.log2(scale_i))
    dx = direct - 2.0 * beta * coefficient * a * through
    tl.store(dx_ptr + base + c, dx.to(dx_ptr.dtype.element_ty), mask=inside)


def _launch(kernel, tensors: list[Tensor], channels: int, groups: int, size: int, coefficient: float,  # noqa: ANN001
            beta: float, k: float) -> None:
    rows = tensors[0].numel() // channels
    block_c = triton.next_power_of_2(channels)
    block_r = max(1, _BLOCK_ELEMENTS // block_c)
    grid = (triton.cdiv(rows, block_r),)
    kernel[grid](*tensors, rows, coefficient, beta, k, C=channels, TOWER=channels // groups, SIZE=size,
                 BLOCK_R=block_r, BLOCK_C=block_c)


def lrn_forward(x: Tensor, size: int, coefficient: float, beta: float, k: float, groups: int) -> Tensor:
    """The LRN of `x`, whose channels are contiguous per pixel (channels_last); same dtype and layout."""
    out = torch.empty_like(x, memory_format=torch.channels_last)
    _launch(_lrn_forward_kernel, [x, out], x.shape[1], groups, size, coefficient, beta, k)
    return out


def lrn_backward(x: Tensor, grad_out: Tensor, size: int, coefficient: float, beta: float, k: float,
                 groups: int) -> Tensor:
    """The gradient with respect to `x` of the LRN, given the gradient of its output; NHWC in and out."""
    grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    grad_in = torch.empty_like(x, memory_format=torch.channels_last)
    _launch(_lrn_backward_kernel, [x, grad_out, grad_in], x.shape[1], groups, size, coefficient, beta, k)
    return grad_in


TritonLocalResponseNorm = fused_lrn_function("TritonLocalResponseNorm", lrn_forward, lrn_backward)
