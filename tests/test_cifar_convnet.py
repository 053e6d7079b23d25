"""The paper's CIFAR-10 net (preset cifar-convnet): the locally connected layer against a loop written here,
cuda-convnet's update rule against a step computed by hand, the layer list against the config files, and
`alexnet reproduce lrn-cifar` on a tiny generated set."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from torch import nn

from alexnet.config import build_config
from alexnet.model import AlexNet, LocallyConnected2d, count_parameters
from alexnet.optim import build_optimizer


def local_by_loop(x, weight, bias, stride, padding):
    """out[n, o, y, x] = bias[o, y, x] + sum over c, i, j of weight[y, x, o, c, i, j] * padded[n, c, y*s+i, x*s+j]."""
    side = weight.shape[0]
    k = weight.shape[-1]
    padded = F.pad(x, (padding,) * 4)
    out = torch.zeros(x.shape[0], weight.shape[2], side, side, dtype=x.dtype)
    for y in range(side):
        for xx in range(side):
            patch = padded[:, :, y * stride:y * stride + k, xx * stride:xx * stride + k]  # (N, C, k, k)
            for o in range(weight.shape[2]):
                out[:, o, y, xx] = (patch * weight[y, xx, o]).sum(dim=(1, 2, 3)) + bias[o, y, xx]
    return out


@pytest.mark.parametrize("stride,padding,size,k", [(1, 1, 6, 3), (2, 0, 7, 3), (1, 2, 5, 5)])
def test_locally_connected_forward_and_backward_match_a_loop(stride, padding, size, k):
    torch.manual_seed(0)
    layer = LocallyConnected2d(3, 4, k, stride, padding, size).double()
    nn.init.normal_(layer.weight)
    nn.init.normal_(layer.bias)
    x = torch.randn(2, 3, size, size, dtype=torch.double, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = layer.weight.detach().clone().requires_grad_(True)
    b_ref = layer.bias.detach().clone().requires_grad_(True)
    out = layer(x)
    ref = local_by_loop(x_ref, w_ref, b_ref, stride, padding)
    assert out.shape == ref.shape == (2, 4, (size + 2 * padding - k) // stride + 1,
                                      (size + 2 * padding - k) // stride + 1)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.weight.grad, w_ref.grad)
    torch.testing.assert_close(layer.bias.grad, b_ref.grad)


def test_locally_connected_does_not_share_weights():
    # a convolution's output is unchanged when the input is shifted along with it; a local layer's is not,
    # and changing one position's filters changes that position's output only
    layer = LocallyConnected2d(1, 1, 3, 1, 1, 4)
    x = torch.randn(1, 1, 4, 4)
    before = layer(x).detach()
    with torch.no_grad():
        layer.weight[2, 1] += 1.0
    after = layer(x).detach()
    changed = (after != before)[0, 0]
    assert changed[2, 1] and changed.sum() == 1


def test_preset_layers_follow_cuda_convnet_conv_local_11pct():
    cfg = build_config("cifar-convnet")
    model = AlexNet(cfg.model, cfg.data.crop)
    kinds = [type(m).__name__ for m in model.features]
    assert kinds == ["TowerConv2d", "ReLU", "LocalResponseNorm", "MaxPool2d",
                     "TowerConv2d", "ReLU", "LocalResponseNorm", "MaxPool2d",
                     "LocallyConnected2d", "ReLU", "LocallyConnected2d", "ReLU"]
    # shapes: 24 -> conv 24 -> pool ceil((24-3)/2)+1 = 12 -> conv 12 -> pool ceil(9/2)+1 = 6 -> local 6 -> 6
    x = torch.zeros(2, 3, 24, 24)
    sides = []
    for m in model.features:
        x = m(x)
        sides.append(tuple(x.shape[1:]))
    assert sides[3] == (64, 12, 12) and sides[7] == (64, 6, 6) and sides[-1] == (32, 6, 6)
    # parameters: conv1 64*3*25+64, conv2 64*64*25+64, local3 36*32*64*9 + 32*36, local4 36*32*32*9 + 32*36,
    # fc10 32*36*10 + 10
    expected = (64 * 75 + 64) + (64 * 64 * 25 + 64) + (36 * 32 * 576 + 1152) + (36 * 32 * 288 + 1152) + (1152 * 10 + 10)
    assert count_parameters(model) == expected == 1_116_490
    # cuda-convnet's LRN: 1 + (0.001 / 5) * sum of squares over 5 maps, to the power 0.75
    lrn = model.features[2]
    a = torch.rand(1, 64, 2, 2) * 30
    padded = F.pad(a.pow(2), (0, 0, 0, 0, 2, 2))
    window = sum(padded[:, i:i + 64] for i in range(5))
    torch.testing.assert_close(lrn(a), a / (1 + 0.001 / 5 * window) ** 0.75)
    # initW per layer, biases 0
    convs = [m for m in model.features if hasattr(m, "weight")]
    stds = [m.weight.std().item() for m in convs]
    assert stds[0] == pytest.approx(1e-4, rel=0.1) and stds[1] == pytest.approx(0.01, rel=0.05)
    assert stds[2] == pytest.approx(0.04, rel=0.02) and stds[3] == pytest.approx(0.04, rel=0.02)
    assert model.classifier[0].weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert all(float(m.bias.detach().abs().max()) == 0 for m in [*convs, model.classifier[0]])


def test_one_step_is_cuda_convnets_update():
    """inc <- mom inc + (eps / batch) * summed gradient - wc eps w;  w <- w + inc, with each layer's eps and wc
    (Weights::update and bpropWeights in cuda-convnet), written out here for two steps. cuda-convnet's
    gradient is that of the log-probability it maximises: minus the gradient of the summed cross-entropy."""
    cfg = build_config("cifar-convnet")
    torch.manual_seed(0)
    model = AlexNet(cfg.model, cfg.data.crop)
    opt = build_optimizer(model, cfg.optim)
    layers = [m for m in model.modules() if isinstance(getattr(m, "weight", None), nn.Parameter)]
    wc = {id(m.weight): w for m, w in zip(layers, [0.0, 0.0, 0.004, 0.004, 0.004])}
    eps = {id(m.weight): 0.001 for m in layers} | {id(m.bias): 0.002 for m in layers}
    x, y = torch.randn(8, 3, 24, 24) * 60, torch.randint(0, 10, (8,))
    inc = {id(p): torch.zeros_like(p) for p in model.parameters()}
    for _ in range(2):
        expected = {}
        model.zero_grad()
        F.cross_entropy(model(x), y, reduction="sum").backward()  # cuda-convnet's cost: summed over the batch
        for p in model.parameters():
            inc[id(p)] = 0.9 * inc[id(p)] + eps[id(p)] / 8 * -p.grad - wc.get(id(p), 0.0) * eps[id(p)] * p.detach()
            expected[id(p)] = p.detach() + inc[id(p)]
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()  # ours: the batch mean
        opt.step()
        for p in model.parameters():
            torch.testing.assert_close(p.detach(), expected[id(p)], rtol=1e-5, atol=1e-7)


def test_layer_weight_decay_needs_one_value_per_layer():
    from alexnet.errors import UserError

    with pytest.raises(UserError, match="one value per weighted layer: 5"):
        build_config("cifar-convnet", None, {"optim.layer_weight_decay": [0.0, 0.004]})


@pytest.fixture(scope="module")
def store32(tmp_path_factory):
    from alexnet.prepare.synthetic import write_image_folder
    from alexnet.prepare.writer import prepare

    root = tmp_path_factory.mktemp("lrncifar")
    folder = write_image_folder(root / "images", train_per_class=40, val_per_class=10, size=32, seed=3,
                                classes=("disc", "square", "h-stripes", "cross"))
    return prepare(folder, root / "store", size=32, workers=1, progress=False).root


def test_reproduce_lrn_cifar_trains_both_nets_per_seed_and_writes_results(store32, tmp_path):
    out = tmp_path / "lc"
    args = ["reproduce", "lrn-cifar", "--data", str(store32), "--out", str(out), "--seeds", "2",
            "train.epochs=2", "optim.milestones=[1]", "optim.batch_size=32", "train.threads=1"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    runs = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name.startswith("short-"))
    assert runs == ["short-lrn-seed0", "short-lrn-seed1", "short-no_lrn-seed0", "short-no_lrn-seed1"]
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"lrn", "no_lrn"}
    for net in ("lrn", "no_lrn"):
        errors = results[net]["errors"]
        assert len(errors) == 2 and all(0 <= e <= 100 for e in errors)
        assert results[net]["mean"] == pytest.approx(sum(errors) / 2)
        # 40 validation images: every error is a whole number of images
        assert all(abs(e * 40 / 100 - round(e * 40 / 100)) < 1e-6 for e in errors)
    cfg = yaml_config(out / "short-no_lrn-seed1" / "config.yaml")
    assert cfg["model"]["lrn"] is False and cfg["train"]["seed"] == 1 and cfg["preset"] == "cifar-convnet"
    assert yaml_config(out / "short-lrn-seed0" / "config.yaml")["model"]["lrn"] is True
    table = (out / "lrn-cifar.md").read_text()
    rows = {cells[1].strip(): cells for cells in (line.split("|") for line in table.splitlines())
            if len(cells) > 3 and cells[1].strip() in ("with LRN", "without LRN")}
    for net, name in (("lrn", "with LRN"), ("no_lrn", "without LRN")):  # the table says what results.json holds
        assert rows[name][2].strip() == ", ".join(f"{e:.2f}" for e in results[net]["errors"])
        assert rows[name][3].strip() == f"{sum(results[net]['errors']) / 2:.2f}"
    difference = sum(results["no_lrn"]["errors"]) / 2 - sum(results["lrn"]["errors"]) / 2
    assert f"Difference (without - with): {difference:+.2f} points" in table
    # a re-run skips the finished runs and gives the same table
    again = run_cli(*args)
    assert again.returncode == 0 and again.stdout.count("skipped") == 4
    assert (out / "lrn-cifar.md").read_text() == table


def yaml_config(path):
    import yaml

    return yaml.safe_load(path.read_text())


def test_paper_schedule_holds_out_then_folds_in_from_phase1_weights(store32, tmp_path, capsys):
    from alexnet.config import parse_assignments
    from alexnet.data.store import open_store
    from alexnet.reproduce.lrn_cifar import PaperSchedule, reproduce_lrn_cifar

    store = open_store(store32)
    sched = PaperSchedule(patience=1, max_phase1_epochs=3, fold_epochs=1, low_rate_epochs=(1, 1))
    overrides = parse_assignments(["optim.batch_size=32", "train.threads=1"])
    lines = []
    _, data = reproduce_lrn_cifar(store, tmp_path, 1, "paper", overrides, only_net="lrn", say=lines.append,
                                  paper=sched)
    phase1 = [json.loads(r) for r in (tmp_path / "paper-lrn-seed0" / "phase1" / "metrics.jsonl").read_text()
              .splitlines()]
    final = [json.loads(r) for r in (tmp_path / "paper-lrn-seed0" / "final" / "metrics.jsonl").read_text()
             .splitlines()]
    p1_epochs = [r for r in phase1 if r["kind"] == "epoch"]
    f_epochs = [r for r in final if r["kind"] == "epoch"]
    # phase 1 validates on the 20% held out of the 160 training images: 32 images
    assert 1 <= len(p1_epochs) <= 3 and all(r["val_images"] == 32 for r in p1_epochs)
    # phases 2-3: 1 + 1 + 1 epochs on the whole training split, rates 0.001, 1e-4, 1e-5
    assert [r["lr"] for r in f_epochs] == pytest.approx([0.001, 0.0001, 0.00001])
    assert all(r["val_images"] == 40 for r in f_epochs)
    printed = capsys.readouterr().out
    assert f"starting from {tmp_path / 'paper-lrn-seed0' / 'phase1' / 'last.pt'}" in printed
    # phase 2 starts where phase 1 ended, not from a fresh init: its first loss is below phase 1's first
    assert f_epochs[0]["train_loss"] < p1_epochs[0]["train_loss"]
    assert len(data["lrn"]["errors"]) == 1
    # and the weights and velocities a run starting from phase 1 holds are phase 1's last, tensor for tensor,
    # where a fresh set-up of the same config holds others
    import torch
    import yaml

    from alexnet.config import config_from_dict
    from alexnet.parallel.ddp import DistContext
    from alexnet.reproduce.lrn_cifar import start_from
    from alexnet.train import set_up

    last = tmp_path / "paper-lrn-seed0" / "phase1" / "last.pt"
    saved = torch.load(last, weights_only=True)
    cfg = config_from_dict(yaml.safe_load((tmp_path / "paper-lrn-seed0" / "final" / "config.yaml").read_text()))
    run = set_up(cfg, store, tmp_path / "fresh", DistContext(device=torch.device("cpu")), progress=False)
    assert not all(torch.equal(run.model.state_dict()[k], v) for k, v in saved["model"].items())
    start_from(last)(run)
    for k, v in saved["model"].items():
        assert torch.equal(run.model.state_dict()[k], v), k
    velocities = [run.optimizer.state[p]["velocity"] for p in run.model.parameters()]
    assert any(v.abs().sum() > 0 for v in velocities)  # phase 1's, not a fresh optimizer's zeros


def test_lrn_cifar_shows_each_run_and_the_multiview_test_on_a_terminal(store32, tmp_path):
    from conftest import run_cli_on_terminal

    args = ["reproduce", "lrn-cifar", "--data", str(store32), "--seeds", "1", "--only", "lrn", "train.epochs=1",
            "optim.milestones=[]", "optim.batch_size=32", "train.threads=1"]
    status, stdout, shown = run_cli_on_terminal(*args, "--out", str(tmp_path / "a"))
    assert status == 0, shown
    assert "epoch 1/1" in shown and "validation (ten crops)" in shown  # the run's steps, then the ten views
    status, stdout, quiet = run_cli_on_terminal(*args, "--out", str(tmp_path / "b"), "--no-progress")
    assert status == 0, quiet
    assert "epoch 1/1" not in quiet and "validation" not in quiet
    assert json.loads((tmp_path / "b" / "results.json").read_text())["lrn"]["errors"] == \
        json.loads((tmp_path / "a" / "results.json").read_text())["lrn"]["errors"]  # bars change no figure
