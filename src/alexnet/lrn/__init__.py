"""Local response normalization: the layer, its formula, and the fused kernels behind it.

layer.py    the nn.Module and its functional form, the eager chunked passes, the choice of kernel
autograd.py the autograd.Function wrapper the fused kernels share
cpu.py      the fused CPU loops (Numba)
cuda.py     the fused CUDA kernels (Triton)

This package imports torch (and Numba or Triton) and nothing of the rest of alexnet besides alexnet.threads.
"""

from alexnet.lrn.layer import LocalResponseNorm, local_response_norm

__all__ = ["LocalResponseNorm", "local_response_norm"]
