"""alexnet.lrn.layer.local_response_norm against the formula written out, and against torch.nn.LocalResponseNorm."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from alexnet.lrn import layer as ops
from alexnet.lrn.layer import LocalResponseNorm, local_response_norm


def lrn_by_loops(a: np.ndarray, size: int, alpha: float, beta: float, k: float, literal: bool) -> np.ndarray:
    """b_i = a_i / (k + c * sum_{j=max(0, i-size//2)}^{min(C-1, i+(size-1)//2)} a_j^2)^beta,
    one channel at a time."""
    c = alpha if literal else alpha / size
    channels = a.shape[1]
    b = np.empty_like(a)
    for i in range(channels):
        lo, hi = max(0, i - size // 2), min(channels - 1, i + (size - 1) // 2)
        total = np.zeros_like(a[:, 0])
        for j in range(lo, hi + 1):
            total += a[:, j] ** 2
        b[:, i] = a[:, i] / (k + c * total) ** beta
    return b


def torch_lrn_in_towers(x: torch.Tensor, size: int, alpha: float, beta: float, k: float,
                        groups: int) -> torch.Tensor:
    layer = torch.nn.LocalResponseNorm(size, alpha, beta, k)
    return torch.cat([layer(tower) for tower in x.chunk(groups, dim=1)], dim=1)


@pytest.mark.parametrize("literal", [False, True])
@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("k, alpha, beta",
                         [(2.0, 1e-4, 0.75), (1.0, 1e-2, 0.5), (0.5, 0.3, 1.3), (2.0, 0.05, 1.0)])
def test_forward_matches_the_formula_written_out(literal, size, k, alpha, beta):
    torch.manual_seed(0)
    # Magnitudes up to ~10 so that even alpha=1e-4 moves the scale away from k.
    x = torch.randn(2, 7, 3, 4) * 4
    expected = lrn_by_loops(x.double().numpy(), size, alpha, beta, k, literal)
    got = local_response_norm(x, size, alpha, beta, k, literal).double().numpy()
    relative = np.abs(got - expected) / np.maximum(np.abs(expected), 1e-30)
    assert relative.max() < 1e-5
    # The normalization must actually have done something for this comparison to mean anything.
    assert np.abs(expected - x.double().numpy()).max() > 1e-3


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("literal", [False, True])
@pytest.mark.parametrize("beta", [0.75, 0.5, 1.0, 1.3])
def test_forward_and_gradient_match_torch(size, literal, beta):
    torch.manual_seed(1)
    alpha, k = 0.2, 2.0
    x = (torch.randn(2, 9, 4, 5, dtype=torch.float64) * 3).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    grad = torch.randn(2, 9, 4, 5, dtype=torch.float64)
    # torch's per-term coefficient is alpha/size: the literal formula is torch with alpha*size.
    torch_alpha = alpha * size if literal else alpha
    ours = local_response_norm(x, size, alpha, beta, k, literal)
    ref = torch.nn.LocalResponseNorm(size, torch_alpha, beta, k)(x_ref)
    ours.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("groups, channels", [(2, 12), (3, 12), (2, 10)])
def test_groups_normalize_each_tower_on_its_own(groups, channels):
    torch.manual_seed(2)
    x = (torch.randn(3, channels, 5, 4, dtype=torch.float64) * 5).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    grad = torch.randn(3, channels, 5, 4, dtype=torch.float64)
    ours = local_response_norm(x, 5, 0.1, 0.75, 2.0, groups=groups)
    ref = torch_lrn_in_towers(x_ref, 5, 0.1, 0.75, 2.0, groups)
    ours.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    # Across the tower boundary the towers differ from one tower-blind LRN over all channels.
    blind = torch.nn.LocalResponseNorm(5, 0.1, 0.75, 2.0)(x.detach())
    assert (ours.detach() - blind).abs().max() > 1e-4


@pytest.mark.parametrize("size, groups", [(5, 2), (4, 1)])
def test_under_torch_compile_the_layer_matches_torch(size, groups):
    """Traced by torch.compile, the layer is the formula in functional ops (see lrn/layer.py); aot_eager runs the
    traced forward and backward graphs without generating code, so no C compiler is needed."""
    torch._dynamo.reset()
    torch.manual_seed(3)
    x = (torch.randn(2, 12, 5, 4, dtype=torch.float64) * 5).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    grad = torch.randn(2, 12, 5, 4, dtype=torch.float64)
    compiled = torch.compile(lambda t: local_response_norm(t, size, 0.1, 0.75, 2.0, groups=groups),
                             backend="aot_eager", fullgraph=True)
    ours = compiled(x)
    ref = torch_lrn_in_towers(x_ref, size, 0.1, 0.75, 2.0, groups)
    ours.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("size, literal, groups", [(5, False, 1), (3, True, 2), (4, False, 2), (2, True, 1)])
def test_gradcheck_in_float64(size, literal, groups):
    torch.manual_seed(3)
    x = (torch.randn(2, 6, 3, 3, dtype=torch.float64) * 3).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: local_response_norm(t, size, 0.3, 0.75, 1.5, literal, groups=groups), (x,))
    # A beta without a special-cased power exercises the general route.
    assert torch.autograd.gradcheck(
        lambda t: local_response_norm(t, size, 0.3, 0.6, 1.0, literal, groups=groups), (x,))


def test_channels_last_gives_the_same_values_and_keeps_its_format():
    torch.manual_seed(4)
    x = torch.randn(2, 10, 6, 5) * 3
    x_last = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    x_first = x.clone().requires_grad_()
    grad = torch.randn(2, 10, 6, 5)
    out_last = local_response_norm(x_last, groups=2, alpha=0.1)
    out_first = local_response_norm(x_first, groups=2, alpha=0.1)
    assert out_last.is_contiguous(memory_format=torch.channels_last)
    assert out_first.is_contiguous()
    out_last.backward(grad)
    out_first.backward(grad)
    torch.testing.assert_close(out_last, out_first, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(x_last.grad, x_first.grad, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out_first, torch_lrn_in_towers(x, 5, 0.1, 0.75, 2.0, 2), rtol=1e-6, atol=1e-7)


def test_non_contiguous_input_is_handled():
    torch.manual_seed(5)
    wide = torch.randn(2, 8, 6, 10, dtype=torch.float64) * 3
    x = wide[:, :, :, ::2]  # every other column: neither contiguous nor channels_last
    ours = local_response_norm(x, 5, 0.1, 0.75, 2.0)
    torch.testing.assert_close(ours, torch.nn.LocalResponseNorm(5, 0.1, 0.75, 2.0)(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_a_batch_split_into_uneven_chunks_matches_torch(monkeypatch, dtype, memory_format):
    # On CPU the batch goes through in chunks of samples; make them 2 samples so 5 samples leave a
    # remainder chunk of 1.
    monkeypatch.setattr(ops, "_CPU_CHUNK_ELEMENTS", 2 * 8 * 4 * 3)
    torch.manual_seed(10)
    x = (torch.randn(5, 8, 4, 3) * 3).to(dtype).contiguous(memory_format=memory_format).requires_grad_()
    x_ref = x.detach().double().requires_grad_()
    grad = torch.randn(5, 8, 4, 3)
    out = local_response_norm(x, 5, 0.1, 0.75, 2.0, groups=2)
    ref = torch_lrn_in_towers(x_ref, 5, 0.1, 0.75, 2.0, 2)
    out.backward(grad.to(dtype))
    ref.backward(grad.double())
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # bfloat16: the final rounding, see below
    torch.testing.assert_close(out.double(), ref, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(x.grad.double(), x_ref.grad, rtol=tolerance, atol=tolerance)


def test_a_batch_of_several_default_chunks_matches_torch():
    # 19 MiB of float32: large buffers (on huge pages where Linux allows), and with the default chunk
    # size the 9 samples go through as 8 + 1.
    torch.manual_seed(11)
    assert ops._CPU_CHUNK_ELEMENTS // (32 * 128 * 128) == 8
    x = (torch.randn(9, 32, 128, 128) * 3).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    grad = torch.randn(9, 32, 128, 128)
    out = local_response_norm(x, 5, 0.1, 0.75, 2.0, groups=2)
    ref = torch_lrn_in_towers(x_ref, 5, 0.1, 0.75, 2.0, 2)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input_is_close_to_float32(dtype):
    torch.manual_seed(6)
    x32 = torch.randn(2, 12, 5, 5) * 3
    x_half = x32.to(dtype).requires_grad_()
    x_ref = x_half.detach().float().requires_grad_()  # the same rounded inputs, in float32
    grad = torch.randn(2, 12, 5, 5)
    out = local_response_norm(x_half, alpha=0.1, groups=2)
    ref = local_response_norm(x_ref, alpha=0.1, groups=2)
    assert out.dtype == dtype
    out.backward(grad.to(dtype))
    ref.backward(grad)
    assert x_half.grad.dtype == dtype
    # Computed in float32, so only the final rounding differs: bfloat16 keeps 8 significant bits
    # (relative step 2**-8 = 0.4%), float16 keeps 11. 1% of the value plus 0.01 covers both.
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(x_half.grad.float(), x_ref.grad, rtol=1e-2, atol=1e-2)


def test_runs_under_cpu_autocast_bfloat16():
    torch.manual_seed(7)
    conv = torch.nn.Conv2d(3, 8, 3)
    image = torch.randn(2, 3, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = conv(image)
        out = local_response_norm(maps, alpha=0.1, groups=2)
    assert maps.dtype == torch.bfloat16 and out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    weight_grad_autocast = conv.weight.grad.clone()
    conv.zero_grad()
    local_response_norm(conv(image), alpha=0.1, groups=2).square().sum().backward()
    # bfloat16 convolution and normalization: a few percent of the largest gradient entry.
    tolerance = 0.05 * conv.weight.grad.abs().max().item()
    torch.testing.assert_close(weight_grad_autocast, conv.weight.grad, rtol=0.0, atol=tolerance)


def test_backward_keeps_only_the_input():
    # The backward recomputes the scale: nothing the size of the input is saved besides the input itself.
    torch.manual_seed(8)
    x = torch.randn(2, 6, 4, 4, requires_grad=True)
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        local_response_norm(x)
    assert len(saved) == 1 and saved[0] is x


def test_module_matches_the_function_and_describes_itself():
    torch.manual_seed(9)
    layer = LocalResponseNorm(5, 1e-3, 0.75, 2.0, literal=True, groups=2)
    x = torch.randn(2, 8, 3, 3) * 10
    torch.testing.assert_close(layer(x), local_response_norm(x, 5, 1e-3, 0.75, 2.0, True, groups=2),
                               rtol=0.0, atol=0.0)
    text = repr(layer)
    for fragment in ("size=5", "alpha=0.001", "beta=0.75", "k=2.0", "groups=2"):
        assert fragment in text
    assert list(layer.parameters()) == []


@pytest.mark.parametrize("make_call", [
    lambda: local_response_norm(torch.randn(1, 4, 3, 3), size=0),
    lambda: local_response_norm(torch.randn(1, 4, 3, 3), groups=3),
    lambda: local_response_norm(torch.randn(1, 4, 3, 3), groups=0),
    lambda: local_response_norm(torch.randn(4, 3, 3)),
    lambda: local_response_norm(torch.randn(1, 1, 4, 3, 3)),
    lambda: local_response_norm(torch.ones(1, 4, 3, 3, dtype=torch.int64)),
    lambda: LocalResponseNorm(size=0),
])
def test_bad_arguments_raise_value_error(make_call):
    with pytest.raises(ValueError):
        make_call()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_cuda_matches_torch_on_the_same_device(memory_format):
    torch.manual_seed(12)
    x = (torch.randn(4, 16, 9, 9, device="cuda") * 3).contiguous(memory_format=memory_format)
    x = x.requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    grad = torch.randn(4, 16, 9, 9, device="cuda")
    out = local_response_norm(x, 5, 0.1, 0.75, 2.0, groups=2)
    ref = torch_lrn_in_towers(x_ref, 5, 0.1, 0.75, 2.0, 2)
    out.backward(grad)
    ref.backward(grad)
    assert out.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bfloat16_channels_last_is_close_to_float32_torch():
    assert ops._triton_function() is not None  # the fused kernels built and passed their own check here
    torch.manual_seed(13)
    x = (torch.randn(8, 96, 13, 13, device="cuda") * 20).to(memory_format=torch.channels_last)
    grad = torch.randn(8, 96, 13, 13, device="cuda")
    half = x.to(torch.bfloat16).requires_grad_()
    out = local_response_norm(half, 5, 1e-4, 0.75, 2.0, groups=2)
    out.backward(grad.to(torch.bfloat16))
    x_ref = half.detach().float().requires_grad_()  # the same rounded input, in float32
    ref = torch_lrn_in_towers(x_ref, 5, 1e-4, 0.75, 2.0, 2)
    ref.backward(grad.to(torch.bfloat16).float())
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)  # one bf16 rounding of the result
    torch.testing.assert_close(half.grad.float(), x_ref.grad, rtol=1e-2, atol=1e-2)


FUSED_KERNEL_SCRIPT = """
import json, torch
from alexnet.lrn.cuda import lrn_backward, lrn_forward
torch.manual_seed(5)
worst = []
for groups, channels, size, alpha in [(2, 12, 5, 0.1), (1, 10, 3, 0.1), (2, 8, 4, 1.0), (3, 9, 2, 0.5)]:
    x = (torch.randn(2, channels, 3, 5) * 5).to(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn(2, channels, 3, 5)
    layer = torch.nn.LocalResponseNorm(size, alpha, 0.75, 2.0)
    torch.cat([layer(t) for t in x.chunk(groups, 1)], 1).backward(grad)
    ref = torch.cat([layer(t) for t in x.detach().chunk(groups, 1)], 1)
    out = lrn_forward(x.detach(), size, alpha / size, 0.75, 2.0, groups)
    dx = lrn_backward(x.detach(), grad, size, alpha / size, 0.75, 2.0, groups)
    worst.append([(out - ref).abs().max().item(), (dx - x.grad).abs().max().item(),
                  out.is_contiguous(memory_format=torch.channels_last)])
print(json.dumps(worst))
"""


def test_fused_cuda_kernels_match_torch_in_the_triton_interpreter():
    """The Triton kernels' arithmetic, run by Triton's own interpreter on the CPU (TRITON_INTERPRET=1 must be
    set before triton is imported, hence a fresh process); the GPU tests run the same kernels compiled."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", FUSED_KERNEL_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for forward_error, backward_error, keeps_layout in json.loads(proc.stdout.strip().splitlines()[-1]):
        assert forward_error < 1e-5 and backward_error < 1e-5 and keeps_layout
