"""Local response normalization on the CPU as two fused loops (forward, backward) compiled by Numba.

layer.py's eager layer is a chain of full-size vectorized torch passes: about 9 forward and 16 backward,
each a trip through memory. Here each pixel's channels are one contiguous row of a channels_last tensor,
and one loop over the rows does everything for a row while it sits in the L1 cache: the forward reads
each value once and writes the output once; the backward reads the input and the incoming gradient and
writes the gradient, recomputing the scales it needs. The inner loops run along the whole row, both towers
at once (masks keep each window inside its tower), so LLVM vectorizes loops of 96 or 256 channels rather
than one short loop per tower (measured in docs/PERFORMANCE.md). The rows are split between
torch.get_num_threads() Python threads (threads.py); the compiled loops release the GIL, so they run at once.

The formulas are layer.py's (module docstring there): b_i = a_i * scale_i ** -beta, scale_i = k + c * S_i,
S_i the sum of squares over window(i) = [i - size // 2, i + (size - 1) // 2] within the tower, and

    grad_a_j = g_j * scale_j ** -beta - 2 * beta * c * a_j * sum_{i : j in window(i)} g_i a_i scale_i ** (-beta - 1)

computed in float32. float32 tensors are read directly; bfloat16 tensors (the CPU's autocast type) are
read as their 16-bit patterns, widened to float32 in the loop, and rounded back to nearest-even when
written. Used by lrn.layer.local_response_norm for CPU tensors in channels_last layout of those two dtypes when
Numba is importable; every other case keeps the eager passes.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload
from torch import Tensor

from alexnet.lrn.autograd import fused_lrn_function
from alexnet.threads import split_work

# Rows per task: enough work to hide the hand-off to a thread (tens of microseconds), and enough tasks
# that threads finishing early pick up the rest.
_MIN_ROWS_PER_TASK = 2048

# These fast-math flags let LLVM vectorize the channel loops (reassociating the window sums) but keep NaN and
# infinity meaningful (no "nnan"/"ninf"), so a diverging run still shows a non-finite loss;
# error_model="numpy" keeps division free of Python's zero checks; nogil lets several threads run the
# loops at once; cache keeps the compiled code beside this file, so later processes skip the compiling.
_FAST_MATH = {"reassoc", "contract", "arcp", "nsz", "afn"}
_jit = numba.njit(nogil=True, fastmath=_FAST_MATH, cache=True, error_model="numpy", boundscheck=False)


@intrinsic
def _float_from_bits(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


@intrinsic
def _bits_from_float(typingctx, value):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


def _value(src, row, col):
    """src[row, col] as float32; bfloat16 arrives as its uint16 bits (implementations: the overload below)."""


def _put(dst, row, col, value):
    """dst[row, col] = value; for uint16 (bfloat16 bits) rounded to nearest-even, NaN kept a NaN."""


# Chosen by the array's dtype while compiling and inlined, so the loops stay branch-free and vectorize: one
# compiled kernel per dtype, with no per-element test of which dtype it is.
@overload(_value, inline="always")
def _value_overload(src, row, col):
    if src.dtype == types.uint16:
        return lambda src, row, col: _float_from_bits(np.uint32(src[row, col]) << np.uint32(16))
    return lambda src, row, col: np.float32(src[row, col])


@overload(_put, inline="always")
def _put_overload(dst, row, col, value):
    if dst.dtype == types.uint16:
        def put_bfloat16(dst, row, col, value):
            bits = _bits_from_float(value)
            if (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):  # NaN: keep it one (quiet)
                dst[row, col] = np.uint16((bits >> np.uint32(16)) | np.uint32(0x40))
            else:  # add half a unit of the kept part (ties to even), then drop the low 16 bits
                rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
                dst[row, col] = np.uint16((bits + rounding) >> np.uint32(16))
        return put_bfloat16

    def put(dst, row, col, value):
        dst[row, col] = value
    return put


@functools.cache
def _window_masks(channels: int, groups: int, size: int, before: int) -> np.ndarray:
    """inside[j, c]: whether channel c - before + j lies in c's own tower, for j in [0, size).

    The loops below take each window sum along a whole row of channels at once, both towers together, and
    these masks drop the terms that would reach into the other tower or past the row's ends."""
    tower = channels // groups
    inside = np.zeros((size, channels), np.bool_)
    for j in range(size):
        for c in range(channels):
            inside[j, c] = 0 <= c % tower - before + j < tower
    return inside


@_jit
def _window_sums(padded, inside, channels, size, out):
    """out[c] = the sum over j of padded[c + j] where inside[j, c]; padded holds a row's values shifted by
    `before` with zeros around them. A select rather than a multiply by the mask, so an infinite value in the
    other tower does not turn this channel's sum into NaN."""
    for c in range(channels):
        out[c] = np.float32(0.0)
    for j in range(size):
        for c in range(channels):
            v = padded[c + j]
            out[c] += v if inside[j, c] else np.float32(0.0)


@_jit
def _scales_and_powers(x, row, inside, size, coefficient, k, beta, padded, scale, power):
    """scale[c] = k + coefficient * (sum of x ** 2 over window(c)) and power[c] = scale[c] ** -beta for one row;
    for the paper's beta of 0.75 the power is q ** 3 with q = (1 / scale) ** 0.25 (a division, two square
    roots), which is 0, as torch gives, for an infinite scale, where scale ** 0.25 / scale is NaN."""
    channels = x.shape[1]
    before = size // 2
    for c in range(channels):
        v = _value(x, row, c)
        padded[before + c] = v * v
    _window_sums(padded, inside, channels, size, scale)
    if beta == 0.75:
        for c in range(channels):
            scale[c] = k + coefficient * scale[c]
            q = np.sqrt(np.sqrt(np.float32(1.0) / scale[c]))
            power[c] = q * q * q
    else:
        minus_beta = np.float32(-beta)
        for c in range(channels):
            scale[c] = k + coefficient * scale[c]
            power[c] = scale[c] ** minus_beta


@_jit
def _forward_rows(x, out, first, last, inside, size, coefficient, beta, k):
    channels = x.shape[1]
    coefficient32, k32 = np.float32(coefficient), np.float32(k)
    padded = np.zeros(channels + size, np.float32)
    scale, power = np.empty(channels, np.float32), np.empty(channels, np.float32)
    for row in range(first, last):
        _scales_and_powers(x, row, inside, size, coefficient32, k32, beta, padded, scale, power)
        for c in range(channels):
            _put(out, row, c, _value(x, row, c) * power[c])


@_jit
def _backward_rows(x, grad_out, grad_in, first, last, inside, inside_t, size, coefficient, beta, k):
    channels = x.shape[1]
    coefficient32, k32 = np.float32(coefficient), np.float32(k)
    factor = np.float32(-2.0 * beta * coefficient)
    padded = np.zeros(channels + size, np.float32)
    # t_i = g_i a_i scale_i ** (-beta - 1) with zeros around it: j lies in window(i) exactly when i lies in
    # [j - (size - 1) // 2, j + size // 2], the window mirrored, so t's zeros in front are (size - 1) // 2.
    padded_t = np.zeros(channels + size, np.float32)
    before_t = (size - 1) // 2
    scale, power, window = (np.empty(channels, np.float32), np.empty(channels, np.float32),
                            np.empty(channels, np.float32))
    for row in range(first, last):
        _scales_and_powers(x, row, inside, size, coefficient32, k32, beta, padded, scale, power)
        for c in range(channels):
            padded_t[before_t + c] = _value(grad_out, row, c) * _value(x, row, c) * power[c] / scale[c]
        _window_sums(padded_t, inside_t, channels, size, window)
        for c in range(channels):
            a = _value(x, row, c)
            _put(grad_in, row, c, _value(grad_out, row, c) * power[c] + factor * a * window[c])


def lrn_forward(x: Tensor, size: int, coefficient: float, beta: float, k: float, groups: int) -> Tensor:
    out = torch.empty_like(x)
    rows_x, rows_out = _rows(x), _rows(out)
    inside = _window_masks(x.shape[1], groups, size, size // 2)
    split_work(lambda first, last: _forward_rows(rows_x, rows_out, first, last, inside, size, coefficient, beta, k),
               rows_x.shape[0], _MIN_ROWS_PER_TASK)
    return out


def lrn_backward(x: Tensor, grad_out: Tensor, size: int, coefficient: float, beta: float, k: float,
                 groups: int) -> Tensor:
    grad_out = grad_out.to(x.dtype).contiguous(memory_format=torch.channels_last)
    grad_in = torch.empty_like(x)
    rows_x, rows_g, rows_in = _rows(x), _rows(grad_out), _rows(grad_in)
    inside, inside_t = (_window_masks(x.shape[1], groups, size, size // 2),
                        _window_masks(x.shape[1], groups, size, (size - 1) // 2))
    split_work(lambda first, last: _backward_rows(rows_x, rows_g, rows_in, first, last, inside, inside_t, size,
                                                  coefficient, beta, k), rows_x.shape[0], _MIN_ROWS_PER_TASK)
    return grad_in


NumbaLocalResponseNorm = fused_lrn_function("NumbaLocalResponseNorm", lrn_forward, lrn_backward)


def _rows(t: Tensor) -> np.ndarray:
    """The (pixels, channels) matrix of a channels_last tensor, as a numpy view (bf16 as its uint16 bits)."""
    n, c, h, w = t.shape
    rows = t.detach().permute(0, 2, 3, 1).reshape(n * h * w, c)
    return rows.view(torch.uint16).numpy() if t.dtype == torch.bfloat16 else rows.numpy()
