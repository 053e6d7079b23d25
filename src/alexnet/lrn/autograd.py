"""The autograd wrapper shared by the fused LRN kernels (cpu.py, cuda.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def fused_lrn_function(name: str, forward: Callable[..., Tensor], backward: Callable[..., Tensor]) -> type:
    """An autograd.Function named `name` around a fused forward(x, size, coefficient, beta, k, groups) and
    backward(x, grad_out, size, coefficient, beta, k, groups); like the eager layer it saves only the input."""

    def function_forward(ctx, x: Tensor, size: int, coefficient: float, beta: float, k: float,
                         groups: int) -> Tensor:
        ctx.save_for_backward(x)
        ctx.args = (size, coefficient, beta, k, groups)
        return forward(x, size, coefficient, beta, k, groups)

    def function_backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        return backward(x, grad_out, *ctx.args), None, None, None, None, None

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(function_forward),
                                                   "backward": staticmethod(function_backward)})
