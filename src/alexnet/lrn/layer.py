"""Local response normalization (paper section 3.3) with its own fast forward and backward.

For input maps a (N, C, H, W), each position is normalized by the squares of its neighbouring channels:

    b_i = a_i / scale_i ** beta,    scale_i = k + c * S_i,    S_i = sum_{j in window(i)} a_j ** 2

with window(i) = [i - size // 2, i + (size - 1) // 2] clipped to the valid channels (the same window as
torch.nn.LocalResponseNorm). c is alpha / size in the authors' code, Caffe and torch (the default), or
alpha itself in the formula printed in the paper (literal=True). With groups=G the channels are G towers
of C / G maps each, tower 1 first, and no window crosses from one tower into another.

Why not torch.nn.LocalResponseNorm: it builds the window sum from pad + avg_pool3d + pow, a chain that
is slow on CPU (benchmarks/bench_lrn.py times both), and autograd keeps its intermediates.
Here forward and backward are each a short run of single vectorized torch ops (9 forward, 16 backward):

- the squares go into a copy padded along the channels whose pad planes hold k / size, so size - 1
  shifted adds give the scale k + c * S directly, clipped windows included;
- scale ** -0.75 (the paper's beta) is rsqrt(rsqrt(scale)) / scale, three ops that together cost
  a quarter of one general pow; other betas fall back to pow;
- the backward uses the analytic gradient
      grad_a_j = g_j * scale_j ** -beta
                 - 2 * beta * c * a_j * sum_{i : j in window(i)} g_i * a_i * scale_i ** (-beta - 1)
  and saves only the input, which autograd usually keeps anyway (the ReLU before it saves the same
  tensor): recomputing the scale measured about as fast on CPU as saving it, and keeps one tensor the
  size of conv1's output less alive between forward and backward;
- on CPU the batch goes through in chunks of samples, with temporaries the size of one chunk reused
  for each: fewer page faults than full-batch temporaries, better use of the cache, less memory; only
  the output (and in the backward the gradient) is allocated at full size, on huge pages.

Under torch.compile the layer is the same formula written as plain functional ops (`_lrn_functional`,
differentiated by autograd), which inductor fuses into its own kernels: the hand-made autograd.Function
writes into preallocated buffers, which the compiler does not trace faithfully (on CUDA its compiled
step produced a non-finite loss). Compiled, the formula ran slower than this eager code on the CPU
(docs/PERFORMANCE.md), so `train.compile` is off by default.

On CUDA, channels_last input goes through two fused Triton kernels instead (`alexnet.lrn.cuda`: one
pass over each pixel's row of channels forward, one backward), because on a GPU every full-size pass is a
trip through memory (docs/PERFORMANCE.md has the share of the step they took). `CUDA_KERNEL = "eager"`
keeps the passes below on CUDA too. On the CPU, float32 and bfloat16 channels_last input goes through the
same two loops compiled by Numba (`alexnet.lrn.cpu`, faster than the passes below: docs/PERFORMANCE.md);
`CPU_KERNEL = "eager"` keeps these passes.

bfloat16 and float16 inputs are computed in float32 and returned in their own dtype. The output keeps
the input's memory format (contiguous or channels_last).
"""

from __future__ import annotations

import ctypes
import functools
import sys
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

_HALF_TYPES = (torch.bfloat16, torch.float16)
_SUPPORTED_DTYPES = (torch.float32, torch.float64, *_HALF_TYPES)
# Samples per CPU chunk are chosen so a chunk holds about this many elements (16 MiB of float32): smaller chunks
# stay in cache better but each costs 25 ops, each a wait for every thread (docs/PERFORMANCE.md, "Design
# measurements", has the timings that chose it).
_CPU_CHUNK_ELEMENTS = 1 << 22
_HUGE_PAGE_BYTES = 2 << 20  # x86-64 and most arm64 Linux kernels
_MADV_HUGEPAGE = 14  # from <sys/mman.h> on Linux


def local_response_norm(x: Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
                        literal: bool = False, *, groups: int = 1) -> Tensor:
    """Normalize each position of NCHW maps `x` by the squares of its `size` neighbouring channels.

    `literal=False` divides alpha by size (the authors' code, Caffe, torch.nn.LocalResponseNorm);
    `literal=True` uses alpha as printed in the paper. `groups` splits the channels into independent
    towers. Raises ValueError for a size below 1, groups that do not divide the channels, or input that
    is not a 4-D floating tensor.
    """
    _check_arguments(x, size, groups)
    coefficient = alpha if literal else alpha / size
    if torch.compiler.is_compiling():
        return _lrn_functional(x, size, coefficient, beta, k, groups)
    fused = _fused_cuda_kernel(x) or _fused_cpu_kernel(x)
    if fused is not None:
        return fused.apply(x, size, coefficient, beta, k, groups)
    return _LocalResponseNorm.apply(x, size, coefficient, beta, k, groups)


# "triton": CUDA tensors in channels_last layout go through alexnet.lrn.cuda's fused kernels when Triton
# is importable; "eager": always this module's own passes (for comparison: benchmarks/bench_gpu.py).
CUDA_KERNEL = "triton"


@functools.cache
def _triton_function() -> type | None:
    try:
        from alexnet.lrn.cuda import TritonLocalResponseNorm
    except ImportError:  # no Triton (CPU-only installs): the eager passes serve CUDA too
        return None
    return _checked(TritonLocalResponseNorm, "cuda", (torch.float32,), "fused CUDA LRN kernels")


def _checked(function: type, device: str, dtypes: tuple[torch.dtype, ...], what: str) -> type | None:
    """`function` if it builds (compiles, or loads its cached build) and agrees with the eager passes on a
    tiny input of each dtype; otherwise None, with a warning: fused code that cannot build here must not
    stop training."""
    # A private generator: drawing from the global one here, at the first LRN call of a process, would shift a
    # resumed run's random stream (dropout, augmentation) away from the unbroken run's.
    generator = torch.Generator(device).manual_seed(0)
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device, enabled=False):
            for dtype in dtypes:
                x = torch.randn(2, 8, 3, 3, device=device, generator=generator) * 4
                x = x.to(dtype).to(memory_format=torch.channels_last)
                g = torch.randn(x.shape, device=device, generator=generator).to(dtype)
                g = g.to(memory_format=torch.channels_last)
                fused = function.apply(x.requires_grad_(), 5, 2e-5, 0.75, 2.0, 2)
                fused.backward(g)
                want_out = _forward(x.detach(), 5, 2e-5, 0.75, 2.0, 2)
                want_grad = _backward(x.detach(), g, 5, 2e-5, 0.75, 2.0, 2)
                tolerance = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
                if not (torch.allclose(fused.float(), want_out.float(), **tolerance)
                        and torch.allclose(x.grad.float(), want_grad.float(), **tolerance)):
                    raise RuntimeError(f"{dtype} results differ from the eager passes")
    except Exception as exc:
        warnings.warn(f"{what} unavailable ({type(exc).__name__}: {exc}); using the eager passes", stacklevel=3)
        return None
    return function


# "numba": CPU tensors of float32 or bfloat16 in channels_last layout go through alexnet.lrn.cpu's fused
# loops when Numba is importable (2-3x faster, docs/PERFORMANCE.md); "eager": this module's own passes.
CPU_KERNEL = "numba"


@functools.cache
def _numba_function() -> type | None:
    try:
        from alexnet.lrn.cpu import NumbaLocalResponseNorm
    except ImportError:  # no Numba for this platform: the eager passes serve
        return None
    return _checked(NumbaLocalResponseNorm, "cpu", (torch.float32, torch.bfloat16), "fused CPU LRN loops")


def _fused_cpu_kernel(x: Tensor) -> type | None:
    if CPU_KERNEL != "numba" or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16) \
            or not _is_nhwc(x):
        return None
    return _numba_function()


def _fused_cuda_kernel(x: Tensor) -> type | None:
    if CUDA_KERNEL != "triton" or not x.is_cuda or x.dtype == torch.float64 or not _is_nhwc(x):
        return None
    return _triton_function()


def _is_nhwc(x: Tensor) -> bool:
    return x.permute(0, 2, 3, 1).is_contiguous()


def _lrn_functional(x: Tensor, size: int, coefficient: float, beta: float, k: float, groups: int) -> Tensor:
    """The module docstring's formula in out-of-place ops, for torch.compile (autograd differentiates it)."""
    n, c, h, w = x.shape
    a = x.to(_compute_dtype(x.dtype))
    squares = (a * a).reshape(n, groups, c // groups, h, w)
    # zero planes before and after each tower's channels; the window of channel i starts at padded i
    padded = torch.nn.functional.pad(squares, (0, 0, 0, 0, size // 2, (size - 1) // 2))
    window = sum(padded[:, :, j:j + c // groups] for j in range(size))
    scale = (k + coefficient * window).reshape(n, c, h, w)
    return (a * scale.pow(-beta)).to(x.dtype)


class LocalResponseNorm(nn.Module):
    """Module form of `local_response_norm`; the paper's layer is LocalResponseNorm(5, 1e-4, 0.75, 2.0)."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
                 literal: bool = False, groups: int = 1) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"LRN size must be at least 1, got {size}")
        if groups < 1:
            raise ValueError(f"LRN groups must be at least 1, got {groups}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.literal, self.groups = literal, groups

    def forward(self, x: Tensor) -> Tensor:
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.literal,
                                   groups=self.groups)

    def extra_repr(self) -> str:
        coefficient = "alpha" if self.literal else "alpha/size"
        return (f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, groups={self.groups}, "
                f"per-term coefficient={coefficient}")


def _check_arguments(x: Tensor, size: int, groups: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"LRN expects NCHW input with 4 dimensions, got shape {tuple(x.shape)}")
    if x.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"LRN supports float32, float64, bfloat16 and float16 input, got {x.dtype}")
    if size < 1:
        raise ValueError(f"LRN size must be at least 1, got {size}")
    if groups < 1 or x.shape[1] % groups != 0:
        raise ValueError(f"LRN groups={groups} must be a positive divisor of the {x.shape[1]} channels")


class _LocalResponseNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, size: int, coefficient: float, beta: float, k: float, groups: int) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):  # the ops below choose their own precision
            out = _forward(x, size, coefficient, beta, k, groups)
        # Only the input is kept (autograd usually holds it anyway); the backward recomputes the scale.
        ctx.save_for_backward(x)
        ctx.size, ctx.coefficient, ctx.beta, ctx.k, ctx.groups = size, coefficient, beta, k, groups
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):
            grad_in = _backward(x, grad_out, ctx.size, ctx.coefficient, ctx.beta, ctx.k, ctx.groups)
        return grad_in, None, None, None, None, None


class _Chunks:
    """Ranges of samples processed at a time, with the temporaries for one range, reused for each.

    On CPU every fresh buffer pays page faults on first touch, and a smaller one is more often still in
    cache for the next pass (the size is chosen at _CPU_CHUNK_ELEMENTS); on other devices the caching
    allocator makes buffers cheap, and one range means the fewest kernel launches.
    """

    def __init__(self, x: Tensor, groups: int) -> None:
        n = x.shape[0]
        per_chunk = n
        if x.device.type == "cpu" and n > 0:
            per_chunk = max(1, _CPU_CHUNK_ELEMENTS // max(1, x[0].numel()))
        self.ranges = [(start, min(n, start + per_chunk)) for start in range(0, n, per_chunk)] or [(0, 0)]
        self.width = min(n, per_chunk)
        self.x = x
        self.channels = (groups, x.shape[1] // groups)
        self.dtype = _compute_dtype(x.dtype)

    def buffer(self) -> Tensor:
        """An uninitialized chunk-sized buffer laid out like x, in the compute dtype."""
        return _on_huge_pages(torch.empty_like(self.x[:self.width], dtype=self.dtype))

    def padded(self, before: int, after: int, fill: float) -> tuple[Tensor, Tensor]:
        """A chunk-sized (N, G, C/G + before + after, H, W) buffer with `fill` in its pad planes, and its
        inner (N, G, C/G, H, W) part. Laid out like x, so every later op is a straight pass."""
        maps = self.x[:self.width].unflatten(1, self.channels)
        n, g, c, h, w = maps.shape
        length = c + before + after
        if maps.stride(2) == 1 and not maps.is_contiguous():  # channels innermost: channels_last
            padded = torch.empty(n, h, w, g, length, dtype=self.dtype, device=maps.device)
            padded = padded.permute(0, 3, 4, 1, 2)
        else:
            padded = torch.empty(n, g, length, h, w, dtype=self.dtype, device=maps.device)
        _on_huge_pages(padded)
        padded[:, :, :before].fill_(fill)
        padded[:, :, before + c:].fill_(fill)
        return padded, padded[:, :, before:before + c]

    def grouped(self, t: Tensor) -> Tensor:
        return t.unflatten(1, self.channels)


class _ScaleMaker:
    """Writes scale = k + c * (window sum of x ** 2) for one chunk of samples at a time."""

    def __init__(self, chunks: _Chunks, size: int, coefficient: float, k: float) -> None:
        # Every window, clipped or not, covers exactly `size` entries of the padded squares: k / size in
        # each one makes the window sum come out as the whole scale, with no special case at the edges.
        share_of_k = k / size
        self.padded, self.inner = chunks.padded(size // 2, (size - 1) // 2, fill=share_of_k)
        self.base = torch.full((), share_of_k, dtype=chunks.dtype, device=chunks.x.device)
        self.size, self.coefficient, self.chunks = size, coefficient, chunks

    def __call__(self, maps: Tensor, out: Tensor) -> Tensor:
        n, grouped = maps.shape[0], self.chunks.grouped(maps)
        torch.addcmul(self.base, grouped, grouped, value=self.coefficient, out=self.inner[:n])
        _window_sum(self.padded[:n], self.size, out=self.chunks.grouped(out))
        return out


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Squares of bfloat16 values summed in bfloat16 would lose most of their digits.
    return torch.float32 if dtype in _HALF_TYPES else dtype


def _forward(x: Tensor, size: int, coefficient: float, beta: float, k: float, groups: int) -> Tensor:
    out = _on_huge_pages(torch.empty_like(x))
    chunks = _Chunks(x, groups)
    make_scale = _ScaleMaker(chunks, size, coefficient, k)
    scale = chunks.buffer()
    # Half inputs are computed in a float32 buffer and rounded once, when written out.
    staging = None if chunks.dtype == x.dtype else chunks.buffer()
    for start, stop in chunks.ranges:
        n = stop - start
        maps = x[start:stop].to(chunks.dtype)
        make_scale(maps, out=scale[:n])
        result = out[start:stop] if staging is None else staging[:n]
        _pow_neg(scale[:n], beta, out=result)
        result.mul_(maps)
        if staging is not None:
            out[start:stop].copy_(result)
    return out


def _backward(x: Tensor, grad_out: Tensor, size: int, coefficient: float, beta: float, k: float,
              groups: int) -> Tensor:
    """grad_a_j = g_j * scale_j ** -beta - 2 * beta * c * a_j * sum_{i: j in window(i)} t_i,
    with t_i = g_i * a_i * scale_i ** (-beta - 1)."""
    grad_in = _on_huge_pages(torch.empty_like(x))
    chunks = _Chunks(x, groups)
    make_scale = _ScaleMaker(chunks, size, coefficient, k)
    scale, window = chunks.buffer(), chunks.buffer()
    # j lies in window(i) exactly when i lies in [j - (size - 1) // 2, j + size // 2]: the window mirrored.
    padded_t, inner_t = chunks.padded((size - 1) // 2, size // 2, fill=0.0)
    staging = None if chunks.dtype == x.dtype else chunks.buffer()
    for start, stop in chunks.ranges:
        n = stop - start
        maps = x[start:stop].to(chunks.dtype)
        make_scale(maps, out=scale[:n])
        result = grad_in[start:stop] if staging is None else staging[:n]
        _pow_neg(scale[:n], beta, out=result)
        result.mul_(grad_out[start:stop])  # g * scale ** -beta: the first term, and a factor of t
        torch.div(chunks.grouped(maps), chunks.grouped(scale[:n]), out=inner_t[:n])
        inner_t[:n].mul_(chunks.grouped(result))
        _window_sum(padded_t[:n], size, out=chunks.grouped(window[:n]))
        result.addcmul_(maps, window[:n], value=-2.0 * beta * coefficient)
        if staging is not None:
            grad_in[start:stop].copy_(result)
    return grad_in


def _window_sum(padded: Tensor, size: int, out: Tensor) -> None:
    """out[:, :, i] = sum of padded[:, :, i : i + size], as size - 1 shifted adds along the channels.

    Measured against a reduction over padded.unfold(2, size, 1) (one op, but a slow strided reduction)
    and a pairwise scheme (three ops for size 5): the plain shifted adds are the fastest on CPU.
    """
    channels = out.shape[2]
    if size == 1:
        out.copy_(padded)
        return
    torch.add(padded[:, :, 0:channels], padded[:, :, 1:channels + 1], out=out)
    for shift in range(2, size):
        out.add_(padded[:, :, shift:shift + channels])


def _pow_neg(base: Tensor, beta: float, out: Tensor) -> Tensor:
    """out = base ** -beta, with cheaper exact routes for the common betas (base > 0)."""
    if beta == 0.75:
        # base ** (1/4) / base: 3.7 times faster than pow on CPU, and 10% faster and more accurate
        # than rsqrt, sqrt and cube (sqrt measured slower than rsqrt).
        torch.rsqrt(base, out=out)
        return out.rsqrt_().div_(base)
    if beta == 0.5:
        return torch.rsqrt(base, out=out)
    if beta == 1.0:
        return torch.reciprocal(base, out=out)
    return torch.pow(base, -beta, out=out)


def _on_huge_pages(buffer: Tensor) -> Tensor:
    """Ask Linux to back a fresh, untouched, large CPU buffer with 2 MiB pages; returns the buffer.

    A fresh buffer is mapped on first touch, one 4 KiB page fault at a time, which costs several times the
    writing itself (docs/PERFORMANCE.md, "Design measurements"). PyTorch does
    the same for every tensor when started with THP_MEM_ALLOC_ENABLE=1, but reads that once at start-up;
    this asks per buffer. Elsewhere (other devices, small buffers, not Linux) it does nothing.
    """
    storage = buffer.untyped_storage()
    if buffer.device.type == "cpu" and storage.nbytes() >= 4 * _HUGE_PAGE_BYTES:
        madvise = _linux_madvise()
        if madvise is not None:
            start = storage.data_ptr()
            first = -(-start // _HUGE_PAGE_BYTES) * _HUGE_PAGE_BYTES  # whole huge pages inside the buffer
            last = (start + storage.nbytes()) // _HUGE_PAGE_BYTES * _HUGE_PAGE_BYTES
            madvise(first, last - first, _MADV_HUGEPAGE)  # only advice: a refusal changes nothing
    return buffer


@functools.cache
def _linux_madvise() -> Callable[[int, int, int], int] | None:
    """libc's madvise, or None where there is none to ask (not Linux, no C library found)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function
