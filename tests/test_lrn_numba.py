"""The fused CPU LRN loops (alexnet.lrn.cpu) against torch.nn.LocalResponseNorm, and their dispatch."""

from __future__ import annotations

import pytest
import torch

from alexnet.lrn import cpu as lrn_numba
from alexnet.lrn import layer as ops
from alexnet.lrn.layer import local_response_norm


def torch_lrn_in_towers(x: torch.Tensor, size: int, alpha: float, beta: float, k: float,
                        groups: int) -> torch.Tensor:
    layer = torch.nn.LocalResponseNorm(size, alpha, beta, k)
    return torch.cat([layer(tower) for tower in x.chunk(groups, dim=1)], dim=1)


def channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


@pytest.fixture(autouse=True)
def fused_cpu_loops(monkeypatch):
    """The fused loops are the default (ops.CPU_KERNEL); these tests pin them on whatever the default."""
    monkeypatch.setattr(ops, "CPU_KERNEL", "numba")


@pytest.mark.parametrize("size", [1, 2, 4, 5, 7])
@pytest.mark.parametrize("groups, channels", [(1, 9), (2, 10), (3, 21), (2, 96)])
@pytest.mark.parametrize("beta, literal", [(0.75, False), (0.75, True), (0.5, False), (1.3, True)])
def test_fused_loops_match_torch_forward_and_gradient(size, groups, channels, beta, literal):
    torch.manual_seed(size * 100 + channels)
    alpha, k = 0.2, 2.0
    x = channels_last(torch.randn(3, channels, 4, 5) * 3).requires_grad_()
    x_ref = x.detach().double().requires_grad_()
    grad = channels_last(torch.randn(3, channels, 4, 5))
    out = local_response_norm(x, size, alpha, beta, k, literal, groups=groups)
    assert type(out.grad_fn).__name__ == "NumbaLocalResponseNormBackward"
    assert out.is_contiguous(memory_format=torch.channels_last)
    # torch's per-term coefficient is alpha/size: the literal formula is torch with alpha*size.
    ref = torch_lrn_in_towers(x_ref, size, alpha * size if literal else alpha, beta, k, groups)
    out.backward(grad)
    ref.backward(grad.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), x_ref.grad, rtol=1e-5, atol=1e-6)
    # the comparison means something only if the layer changed its input
    assert (ref - x_ref).abs().max() > 1e-2


def test_paper_maps_across_threads_match_torch():
    """Enough rows (pixels) to be split between threads: 6 x 27 x 27 = 4,374 rows of 256 channels."""
    torch.set_num_threads(2)
    torch.manual_seed(3)
    x = channels_last(torch.relu(torch.randn(6, 256, 27, 27)) * 30).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    grad = channels_last(torch.randn(6, 256, 27, 27))
    out = local_response_norm(x, 5, 1e-4, 0.75, 2.0, groups=2)
    ref = torch_lrn_in_towers(x_ref, 5, 1e-4, 0.75, 2.0, 2)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)


def test_bfloat16_output_is_the_float32_result_rounded_to_nearest_even():
    torch.manual_seed(4)
    x = channels_last(torch.randn(4, 48, 6, 6) * 20).to(torch.bfloat16)
    grad = torch.randn_like(x)
    wide = x.float()  # the same (rounded) inputs, computed in float32 and rounded once by torch
    for got, want in ((lrn_numba.lrn_forward(x, 5, 2e-3, 0.75, 2.0, 2),
                       lrn_numba.lrn_forward(wide, 5, 2e-3, 0.75, 2.0, 2).to(torch.bfloat16)),
                      (lrn_numba.lrn_backward(x, grad, 5, 2e-3, 0.75, 2.0, 2),
                       lrn_numba.lrn_backward(wide, grad.float(), 5, 2e-3, 0.75, 2.0, 2).to(torch.bfloat16))):
        assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
        bits_got, bits_want = got.view(torch.int16).int(), want.view(torch.int16).int()
        # Round-to-nearest-even of (nearly) the same float32 values: the same bits, except where the float32
        # results differ in their last place and sit on a rounding boundary (one bfloat16 step apart).
        assert (bits_got - bits_want).abs().max() <= 1
        assert (bits_got == bits_want).float().mean() > 0.99


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_input_gives_non_finite_output_where_torch_does(dtype):
    """A NaN or infinity must reach the loss (train.on_nonfinite acts on it), not vanish in the layer."""
    x = channels_last(torch.ones(1, 12, 2, 2)).to(dtype)
    x[0, 1, 0, 0] = float("nan")
    x[0, 8, 1, 1] = float("inf")
    grad = torch.ones_like(x)
    ref = torch_lrn_in_towers(x.float(), 3, 0.1, 0.75, 2.0, 2)
    ref_grad = torch.func.vjp(lambda t: torch_lrn_in_towers(t, 3, 0.1, 0.75, 2.0, 2), x.float())[1](grad.float())[0]
    out = lrn_numba.lrn_forward(x, 3, 0.1 / 3, 0.75, 2.0, 2)
    grad_in = lrn_numba.lrn_backward(x, grad, 3, 0.1 / 3, 0.75, 2.0, 2)
    assert (~torch.isfinite(ref)).any() and torch.isfinite(ref).any()
    assert torch.equal(torch.isfinite(out), torch.isfinite(ref))
    assert torch.equal(torch.isfinite(grad_in), torch.isfinite(ref_grad))
    finite = torch.isfinite(ref)
    torch.testing.assert_close(out.float()[finite], ref[finite], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("edge", [5, 6])  # the last channel of the first tower, the first of the second
def test_an_infinity_at_a_tower_edge_stays_in_its_tower(dtype, edge):
    """The window sums run along both towers at once with the other tower masked out; an infinity next to the
    boundary must leave the other tower's values finite and equal to torch's, as when each tower is its own
    layer (a mask applied by multiplying would make them 0 * inf = NaN)."""
    x = channels_last(torch.rand(1, 12, 2, 2) + 0.5).to(dtype)
    x[0, edge, 0, 0] = float("inf")
    grad = torch.ones_like(x)
    ref = torch_lrn_in_towers(x.float(), 5, 0.1, 0.75, 2.0, 2)
    ref_grad = torch.func.vjp(lambda t: torch_lrn_in_towers(t, 5, 0.1, 0.75, 2.0, 2), x.float())[1](grad.float())[0]
    out = lrn_numba.lrn_forward(x, 5, 0.1 / 5, 0.75, 2.0, 2)
    grad_in = lrn_numba.lrn_backward(x, grad, 5, 0.1 / 5, 0.75, 2.0, 2)
    other = slice(6, 12) if edge < 6 else slice(0, 6)
    assert torch.isfinite(ref[0, other]).all() and torch.isfinite(ref_grad[0, other]).all()
    torch.testing.assert_close(out.float()[0, other], ref[0, other], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(grad_in.float()[0, other], ref_grad[0, other], rtol=1e-2, atol=1e-2)
    assert torch.equal(torch.isfinite(out), torch.isfinite(ref))


@pytest.mark.parametrize("make_input", [
    lambda: torch.randn(2, 8, 3, 3),  # contiguous NCHW
    lambda: channels_last(torch.randn(2, 8, 3, 3, dtype=torch.float64)),  # float64
    lambda: channels_last(torch.randn(2, 8, 3, 3)).to(torch.float16),  # float16
], ids=["nchw", "float64", "float16"])
def test_other_layouts_and_dtypes_take_the_eager_passes(make_input):
    x = make_input().requires_grad_()
    out = local_response_norm(x, 5, 0.1, 0.75, 2.0, groups=2)
    assert type(out.grad_fn).__name__ == "_LocalResponseNormBackward"


def test_eager_switch_gives_the_same_values(monkeypatch):
    torch.manual_seed(5)
    x = channels_last(torch.randn(2, 12, 5, 5) * 3)
    grad = channels_last(torch.randn(2, 12, 5, 5))
    results = {}
    for kernel in ("numba", "eager"):
        monkeypatch.setattr(ops, "CPU_KERNEL", kernel)
        leaf = x.clone().requires_grad_()
        out = local_response_norm(leaf, 5, 0.1, 0.75, 2.0, groups=2)
        out.backward(grad)
        results[kernel] = (type(out.grad_fn).__name__, out.detach(), leaf.grad)
    assert results["numba"][0] == "NumbaLocalResponseNormBackward"
    assert results["eager"][0] == "_LocalResponseNormBackward"
    torch.testing.assert_close(results["numba"][1], results["eager"][1], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(results["numba"][2], results["eager"][2], rtol=1e-5, atol=1e-7)


def test_self_check_leaves_the_global_random_stream_alone(monkeypatch):
    """The first fused call of a process checks the loops against the eager passes on random inputs. Drawn
    from torch's global generator, they would move a resumed run's dropout masks away from the unbroken
    run's (tests/test_faults.py compares the two bit for bit)."""
    ops._numba_function.cache_clear()
    torch.manual_seed(11)
    expected_next = torch.rand(4)
    torch.manual_seed(11)
    out = local_response_norm(channels_last(torch.ones(1, 4, 2, 2)).requires_grad_(), 5, 0.1, 0.75, 2.0)
    assert type(out.grad_fn).__name__ == "NumbaLocalResponseNormBackward"
    assert torch.equal(torch.rand(4), expected_next)


def test_backward_keeps_only_the_input():
    x = channels_last(torch.randn(2, 6, 4, 4)).requires_grad_()
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = local_response_norm(x, groups=2)
    assert type(out.grad_fn).__name__ == "NumbaLocalResponseNormBackward"
    assert len(saved) == 1 and saved[0] is x
