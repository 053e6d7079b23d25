"""The network against independent computations: layer formulas, torchvision, separate towers."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import alexnet
from alexnet.config import build_config
from alexnet.model import AlexNet


def conv_params(cin, cout, k, groups=1):
    return k * k * (cin // groups) * cout + cout


def test_paper_parameter_count_from_layer_formulas():
    expected = (
        conv_params(3, 96, 11)
        + conv_params(96, 256, 5, groups=2)
        + conv_params(256, 384, 3)
        + conv_params(384, 384, 3, groups=2)
        + conv_params(384, 256, 3, groups=2)
        + (6 * 6 * 256 * 4096 + 4096)
        + (4096 * 4096 + 4096)
        + (4096 * 1000 + 1000)
    )
    assert expected == 60_965_224  # SPEC section 1
    model = alexnet.build_model("paper")
    assert sum(p.numel() for p in model.parameters()) == expected
    ungrouped = alexnet.build_model("paper", split=[False] * 5)
    assert sum(p.numel() for p in ungrouped.parameters()) == 62_378_344


def test_one_tower_parameter_count_and_torchvision_count():
    model = alexnet.build_model("one-tower")
    tv = torchvision.models.alexnet(weights=None)
    n = sum(p.numel() for p in model.parameters())
    assert n == 61_100_840 == sum(p.numel() for p in tv.parameters())


def test_conv1_maps_are_55_and_last_conv_6x6():
    model = alexnet.build_model("paper").eval()
    x = torch.randn(1, 3, 224, 224)
    a = model.features[0](x)
    assert a.shape == (1, 96, 55, 55)
    assert model.features(x).shape == (1, 256, 6, 6)
    assert model(x).shape == (1, 1000)


def test_one_tower_loads_torchvision_state_dict_with_identical_logits():
    torch.manual_seed(0)
    tv = torchvision.models.alexnet(weights=None).eval()
    ours = alexnet.build_model("one-tower").eval()
    assert list(ours.state_dict().keys()) == list(tv.state_dict().keys())
    ours.load_state_dict(tv.state_dict())  # strict: same keys and shapes
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=0)


def test_dropout_sits_after_fc6_and_fc7_in_paper_and_before_in_torchvision_layout():
    paper = [type(m).__name__ for m in alexnet.build_model("paper").classifier]
    assert paper == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    tv_layout = [type(m).__name__ for m in alexnet.build_model("one-tower").classifier]
    assert tv_layout == [type(m).__name__ for m in torchvision.models.alexnet().classifier]


def test_paper_initialisation():
    torch.manual_seed(1)
    model = alexnet.build_model("paper")
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    fcs = [m for m in model.classifier if isinstance(m, nn.Linear)]
    ones = [False, True, False, True, True]
    for conv, one in zip(convs, ones):
        assert torch.all(conv.bias == (1.0 if one else 0.0))
    assert torch.all(fcs[0].bias == 1) and torch.all(fcs[1].bias == 1) and torch.all(fcs[2].bias == 0)
    w = fcs[0].weight  # 37.7M samples of N(0, 0.01^2): mean and std within a tiny tolerance
    assert abs(w.mean().item()) < 1e-5
    assert abs(w.std().item() - 0.01) < 1e-5


def _lrn(x):  # torch's own LRN, the per-tower reference
    return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(x)


@pytest.mark.parametrize("tower_convs", ["grouped", "split", "auto"])
def test_grouped_towers_equal_two_separate_half_networks(tower_convs):
    torch.manual_seed(0)
    model = alexnet.build_model("paper", dropout=0.0, tower_convs=tower_convs).eval()
    f = model.features
    c1, c2, c3, c4, c5 = (m for m in f if isinstance(m, nn.Conv2d))
    fc6, fc7, fc8 = (m for m in model.classifier if isinstance(m, nn.Linear))
    x = torch.randn(2, 3, 224, 224) * 50

    def half(t, conv, inp, full_input=False):
        n = conv.out_channels // 2
        w, b = conv.weight[t * n:(t + 1) * n], conv.bias[t * n:(t + 1) * n]
        return F.relu(F.conv2d(inp, w, b, conv.stride, conv.padding))

    pool = lambda a: F.max_pool2d(a, 3, 2)  # noqa: E731
    towers = []
    for t in range(2):
        a = pool(_lrn(half(t, c1, x)))
        a = pool(_lrn(half(t, c2, a)))
        towers.append(a)
    both = torch.cat(towers, 1)  # conv3 sees both towers
    outs = []
    for t in range(2):
        a = half(t, c3, both)
        a = half(t, c4, a)
        a = pool(half(t, c5, a))
        outs.append(a)
    h = torch.cat(outs, 1).flatten(1)
    h = F.relu(fc6(h))
    h = F.relu(fc7(h))
    expected = fc8(h)
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, expected.detach(), rtol=1e-4, atol=1e-4)


def test_switches():
    m = alexnet.build_model("paper", activation="tanh", lrn=False, pooling="plain", dropout=0.3)
    kinds = [type(x).__name__ for x in m.features]
    assert "LocalResponseNorm" not in kinds and "ReLU" not in kinds and "Tanh" in kinds
    pools = [x for x in m.features if isinstance(x, nn.MaxPool2d)]
    assert all(p.kernel_size == 2 and p.stride == 2 for p in pools)
    assert [x.p for x in m.classifier if isinstance(x, nn.Dropout)] == [0.3, 0.3]
    one = alexnet.build_model("paper", towers=1)
    widths = [x.out_channels for x in one.features if isinstance(x, nn.Conv2d)]
    assert widths == [48, 128, 192, 192, 256]  # half width except the last conv (paper section 3.2)
    assert all(x.groups == 1 for x in one.features if isinstance(x, nn.Conv2d))
    ten = alexnet.build_model("paper", num_classes=10)
    assert ten.classifier[-1].out_features == 10


@pytest.mark.parametrize("preset,size", [("cifar", 28), ("figure1", 32), ("demo", 32)])
def test_small_presets_run(preset, size):
    cfg = build_config(preset)
    model = AlexNet(cfg.model, cfg.data.crop)
    assert cfg.data.crop == size
    out = model(torch.randn(3, 3, size, size))
    assert out.shape == (3, 10)
    emb = model.eval().embed(torch.randn(3, 3, size, size))
    assert emb.ndim == 2


def test_embed_is_fc7_after_relu():
    torch.manual_seed(0)
    model = alexnet.build_model("paper").eval()
    x = torch.randn(1, 3, 224, 224)
    e = model.embed(x)
    assert e.shape == (1, 4096)
    # the logits are fc8 applied to the embedding
    torch.testing.assert_close(model.classifier[-1](e), model(x))


@pytest.mark.parametrize("tower_convs", ["split", "auto"])
def test_split_tower_convolutions_give_the_grouped_gradients(tower_convs):
    torch.manual_seed(1)
    grouped = alexnet.build_model("cifar", dropout=0.0, tower_convs="grouped").double()
    split = alexnet.build_model("cifar", dropout=0.0, tower_convs=tower_convs).double()
    split.load_state_dict(grouped.state_dict())  # the same parameters, the same names
    x = torch.randn(3, 3, 28, 28, dtype=torch.float64) * 50
    for model in (grouped, split):
        model(x).square().sum().backward()
    for (name, a), b in zip(grouped.named_parameters(), split.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-10, msg=name)


def test_tower_convolution_modes_choose_their_calls():
    """How many convolutions compute each layer, per mode and device, as TowerConv2d's docstring says."""
    on_cpu = torch.zeros(1, 3, 8, 8)
    on_meta = torch.zeros(1, 3, 8, 8, device="meta")  # stands for any device that is not the CPU
    calls = {}
    for mode in ("grouped", "split", "auto"):
        convs = [m for m in alexnet.build_model("paper", tower_convs=mode).features if isinstance(m, nn.Conv2d)]
        calls[mode] = ([c.pieces(on_cpu) for c in convs], [c.pieces(on_meta) for c in convs])
    assert calls["grouped"] == ([1, 1, 1, 1, 1], [1, 1, 1, 1, 1])
    assert calls["split"] == ([2, 2, 2, 2, 2], [2, 2, 2, 2, 2])
    assert calls["auto"] == ([2, 1, 1, 1, 1], [1, 1, 1, 1, 1])  # only conv1, only on the CPU
    one_tower = [m for m in alexnet.build_model("one-tower", tower_convs="split").features
                 if isinstance(m, nn.Conv2d)]
    assert [c.pieces(on_cpu) for c in one_tower] == [1, 1, 1, 1, 1]


def test_build_model_with_torchvision_weights_from_the_hub_cache(tmp_path, monkeypatch):
    """weights="torchvision" reads torchvision's file from torch's hub cache (here a file made in the test) and
    gives torchvision's logits; nothing is downloaded."""
    import torchvision

    import alexnet

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # so get_dir() is $TORCH_HOME/hub
    assert Path(torch.hub.get_dir()) == tmp_path / "hub"
    from alexnet.errors import UserError

    with pytest.raises(UserError, match="is not there"):
        alexnet.build_model("one-tower", weights="torchvision")
    torch.manual_seed(3)
    reference = torchvision.models.alexnet().eval()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / alexnet.TORCHVISION_WEIGHTS)
    ours = alexnet.build_model("one-tower", weights="torchvision")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))
    with pytest.raises(UserError, match="one-tower preset"):
        alexnet.build_model("paper", weights="torchvision")
    # the same through torch.hub from this checkout
    repo = Path(__file__).resolve().parents[1]
    hub_model = torch.hub.load(str(repo), "alexnet", source="local", preset="one-tower", weights="torchvision")
    with torch.no_grad():
        torch.testing.assert_close(hub_model(x), reference(x))
    demo = torch.hub.load(str(repo), "alexnet", source="local", preset="demo", lrn=False)
    assert not any(type(m).__name__ == "LocalResponseNorm" for m in demo.modules())


def test_build_model_with_a_checkpoint_gives_its_weights(shapes_store, tmp_path):
    import alexnet
    from alexnet.config import build_config
    from alexnet.errors import UserError
    from alexnet.train import train

    overrides = {"optim.batch_size": 16, "data.crop": 32, "model.widths": [16, 32, 32, 32, 32],
                 "model.fc": [64, 64], "train.max_steps": 2, "train.threads": 1}
    assert train(build_config("demo", overrides=overrides), str(shapes_store), tmp_path / "run", progress=False) == 0
    model = alexnet.build_model("demo", weights=str(tmp_path / "run" / "last.pt"))
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    with pytest.raises(UserError, match="holds a 'demo' model, not 'paper'"):
        alexnet.build_model("paper", weights=str(tmp_path / "run" / "last.pt"))
