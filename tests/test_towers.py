"""The paper's two towers on two devices (here cpu,cpu; cuda:0,cpu on a GPU machine) against the grouped
single-device model: same outputs, same gradients, interchangeable checkpoints, the same training."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from alexnet.cli import main as cli_main
from alexnet.config import build_config
from alexnet.model import AlexNet
from alexnet.parallel.towers import TwoTowerAlexNet
from alexnet.train import train

CPU2 = [torch.device("cpu"), torch.device("cpu")]


def paper_model(seed: int = 0) -> AlexNet:
    """The paper's conv layers at 224x224 (smaller FC layers and 10 classes keep the test quick)."""
    torch.manual_seed(seed)
    cfg = build_config("paper", overrides={"model.fc": [256, 256], "model.num_classes": 10, "model.dropout": 0.0})
    model = AlexNet(cfg.model, 224)
    with torch.no_grad():  # biases of 1 and weights of 0.01 leave little signal in a fresh net: liven it up
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.05 if p.ndim > 1 else 0.1))
    return model


def grouped_key_parts(towers: TwoTowerAlexNet, key: str) -> list[torch.Tensor]:
    """The tower modules' tensors that make up grouped parameter `key`, tower 1 first (written out here:
    features.3.weight is towers.features[3][0].weight followed by towers.features[3][1].weight)."""
    section, index, name = key.split(".")
    return [getattr(m, name) for m in getattr(towers, section)[int(index)]]


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = max(a.abs().max().item(), 1e-12)
    return (a - b).abs().max().item() <= 1e-5 * scale


def test_forward_and_backward_equal_the_grouped_model():
    grouped = paper_model()
    towers = TwoTowerAlexNet.from_grouped(paper_model(), CPU2)
    # the towers really are split: conv2 (grouped) sees 48 maps, conv3 (dense) all 256, fc6 half the units
    assert towers.features[4][0].in_channels == 48 and towers.features[8][0].in_channels == 256
    assert towers.classifier[0][0].out_features == 128 and towers.classifier[0][0].in_features == 9216

    x = torch.randn(3, 3, 224, 224)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_grouped, out_towers = grouped(x1), towers(x2)
    assert out_grouped.abs().max() > 1e-3  # a live signal, not zeros agreeing with zeros
    assert close(out_grouped, out_towers)
    target = torch.randint(0, 10, (3,))
    nn.functional.cross_entropy(out_grouped, target).backward()
    nn.functional.cross_entropy(out_towers, target).backward()
    assert close(x1.grad, x2.grad)
    for key, p in grouped.named_parameters():
        assert p.grad.abs().max() > 0, key
        assert close(p.grad, torch.cat([t.grad for t in grouped_key_parts(towers, key)])), key
    with torch.no_grad():
        assert close(grouped.embed(x), towers.embed(x))


def test_state_dict_has_the_grouped_layout_both_ways():
    grouped = paper_model(seed=1)
    towers = TwoTowerAlexNet.from_grouped(paper_model(seed=2), CPU2)
    towers.load_state_dict(grouped.state_dict())  # a grouped checkpoint loads into the towers
    for key, value in grouped.state_dict().items():
        assert torch.equal(torch.cat([t.detach() for t in grouped_key_parts(towers, key)]), value), key
    saved = towers.state_dict()
    assert list(saved) == list(grouped.state_dict())
    for key, value in grouped.state_dict().items():
        assert torch.equal(saved[key], value), key
    back = towers.to_grouped()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(back(x), grouped(x))


def test_training_moves_between_towers_and_grouped_as_if_never_moved(shapes_store, tmp_path):
    small = {"train.epochs": 2, "optim.batch_size": 16, "data.crop": 32, "train.log_every": 4,
             "model.widths": [16, 32, 32, 32, 32], "model.fc": [64, 64], "optim.lr": 0.02, "model.dropout": 0.0,
             "train.precision": "fp32"}  # on every CPU kind: the comparison below is of float32 summation order

    def cfg(**extra):
        return build_config("demo", overrides={**small, **extra})

    whole = tmp_path / "whole"
    assert train(cfg(), str(shapes_store), whole, progress=False) == 0
    parts = tmp_path / "parts"
    # grouped steps 0-4, the towers (through the command line) steps 5-18, grouped again to the end (24)
    assert train(cfg(**{"train.max_steps": 5}), str(shapes_store), parts, progress=False) == 0
    assert cli_main(["train", "--preset", "demo", "--data", str(shapes_store), "--out", str(parts), "--resume",
                     "auto", "--towers", "cpu,cpu", "--no-progress",
                     *[f"{k}={json.dumps(v)}" for k, v in {**small, "train.max_steps": 19}.items()]]) == 0
    assert train(cfg(), str(shapes_store), parts, "auto", progress=False) == 0

    a = torch.load(whole / "last.pt", weights_only=True)
    b = torch.load(parts / "last.pt", weights_only=True)
    assert b["run"]["global_step"] == 24
    torch.manual_seed(0)
    initial = AlexNet(cfg(**{"model.num_classes": 4}).model, 32).state_dict()
    for key in a["model"]:
        moved = (a["model"][key] - initial[key]).abs().max().item()
        assert moved > 1e-5, key
        assert (a["model"][key] - b["model"][key]).abs().max().item() <= 1e-3 * moved, key
    # the optimizer state (the paper's velocity) came back in the grouped layout, tower 1's half first
    for i, state in a["optimizer"]["state"].items():
        assert torch.allclose(state["velocity"], b["optimizer"]["state"][i]["velocity"], atol=1e-7, rtol=1e-3)


@pytest.mark.parametrize("towers, preset, says", [
    ("cpu", "demo", "give two devices"),
    ("cpu,cpu,cpu", "demo", "give two devices"),
    ("cuda:97,cuda:98", "demo", "cuda:97"),
    ("cpu,cpu", "one-tower", "two-tower model"),
])
def test_bad_towers_are_one_line_errors(shapes_store, tmp_path, capsys, towers, preset, says):
    status = cli_main(["train", "--preset", preset, "--data", str(shapes_store), "--out", str(tmp_path / "run"),
                       "--towers", towers])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "run").exists()


def test_towers_with_several_processes_are_refused(shapes_store, tmp_path, capsys):
    status = cli_main(["train", "--preset", "demo", "--data", str(shapes_store), "--out", str(tmp_path / "run"),
                       "--towers", "cpu,cpu", "--nproc", "2"])
    assert status == 2 and "one process" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_towers_across_a_gpu_and_the_cpu_equal_the_grouped_model():
    grouped = paper_model().double()
    towers = TwoTowerAlexNet.from_grouped(paper_model().double(), [torch.device("cuda:0"), torch.device("cpu")])
    assert towers.features[0][0].weight.is_cuda and not towers.features[0][1].weight.is_cuda
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    out_grouped = grouped(x)
    out_towers = towers(x.cuda())
    assert out_towers.is_cuda
    assert close(out_grouped, out_towers.cpu())
    out_grouped.sum().backward()
    out_towers.sum().backward()
    for key, p in grouped.named_parameters():
        assert close(p.grad, torch.cat([t.grad.cpu() for t in grouped_key_parts(towers, key)])), key
