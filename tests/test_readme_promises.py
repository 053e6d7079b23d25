"""Promises README makes that no other test checks, each against an expectation written out here: `alexnet.load`,
`summary`'s multiply-adds counted by hand, `config`'s output read back by `--config`, the `one-tower` export
dividing by torchvision's std inside the file, export writing nothing when the saved file disagrees with the eager
model, and `import-torchvision --classes`."""

import json

import numpy as np
import pytest
import torch
import torchvision
import yaml
from conftest import run_cli

import alexnet
from alexnet.config import PRESETS, build_config
from alexnet.errors import UserError
from alexnet.tools.export import _write_checked
from alexnet.tools.inference import load_model
from alexnet.train import train

SMALL = {"train.epochs": 1, "optim.batch_size": 16, "data.crop": 32, "model.widths": [16, 32, 32, 32, 32],
         "model.fc": [64, 64], "train.threads": 1}


def test_alexnet_load_gives_the_trained_model_in_eval_mode_and_its_config(shapes_store, tmp_path):
    run = tmp_path / "run"
    assert train(build_config("demo", overrides=SMALL), str(shapes_store), run, progress=False) == 0
    model, cfg = alexnet.load(str(run / "best.pt"))
    assert not model.training and cfg.preset == "demo" and cfg.model.widths == [16, 32, 32, 32, 32]
    saved = torch.load(run / "best.pt", weights_only=True)["model"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # eval mode: dropout off, the same logits twice


def test_summary_multiply_adds_are_the_layer_formulas_by_hand():
    """The paper net, worked by hand: a conv layer does side^2 x maps x (input maps it sees x k^2) multiply-adds,
    a split layer sees half the maps below (its own tower), an FC layer inputs x outputs.
    conv1 55^2 x 96 x (3 x 11^2); conv2 27^2 x 256 x (48 x 5^2); conv3 13^2 x 384 x (256 x 3^2);
    conv4 13^2 x 384 x (192 x 3^2); conv5 13^2 x 256 x (192 x 3^2); fc6 9216 x 4096; fc7 4096^2; fc8 4096 x 1000."""
    by_hand = (55**2 * 96 * 3 * 121 + 27**2 * 256 * 48 * 25 + 13**2 * 384 * 256 * 9 + 13**2 * 384 * 192 * 9
               + 13**2 * 256 * 192 * 9 + 9216 * 4096 + 4096 * 4096 + 4096 * 1000)
    assert by_hand == 724_406_816
    r = run_cli("summary", "--preset", "paper", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["macs"] == by_hand


@pytest.mark.parametrize("preset", ["cifar", "photos", "cifar-convnet"])
def test_configs_printed_by_config_read_back_with_dash_dash_config(preset, tmp_path):
    printed = run_cli("config", "--preset", preset, "lr=0.037", "dropout=0.3")
    assert printed.returncode == 0, printed.stderr
    path = tmp_path / "c.yaml"
    path.write_text(printed.stdout)
    data = yaml.safe_load(printed.stdout)
    assert data["optim"]["lr"] == 0.037 and data["model"]["dropout"] == 0.3
    # read back on top of the plain defaults, the file alone gives the same config as the preset and overrides
    again = build_config("paper", path)
    want = build_config(preset, overrides={"lr": 0.037, "dropout": 0.3})
    assert {k: v for k, v in again.to_dict().items() if k != "preset"} == \
           {k: v for k, v in want.to_dict().items() if k != "preset"}


def test_a_one_tower_export_divides_by_torchvisions_std_inside_the_file(tmp_path):
    """The .pt2 file of an imported torchvision net takes uint8 crops and must give torchvision's logits for
    (crop / 255 - mean) / std: the division by std inside the file, written out here."""
    torch.manual_seed(0)
    reference = torchvision.models.alexnet(weights=None).eval()
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    assert run_cli("import-torchvision", str(tmp_path / "tv.pth"), "-o", str(tmp_path / "tv.pt")).returncode == 0
    out = tmp_path / "tv.pt2"
    r = run_cli("export", str(tmp_path / "tv.pt"), "--format", "export", "-o", str(out))
    assert r.returncode == 0, r.stderr
    crops = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    x = ((crops.float() / 255 - mean) / std).permute(0, 3, 1, 2)
    with torch.no_grad():
        want = reference(x)
        got = torch.export.load(str(out)).module()(crops)
        without_std = reference(((crops.float() / 255 - mean)).permute(0, 3, 1, 2))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-4 * max(1.0, want.abs().max().item()))
    assert not torch.allclose(want, without_std, atol=1e-3)  # the check can tell the division is missing


class _CropsToLogits(torch.nn.Module):
    """uint8 crops (N, 28, 28, 3) -> 10 logits: a real module to trace, save and load back."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(28 * 28 * 3, 10)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.linear(crops.float().flatten(1) / 255)


@pytest.mark.parametrize("shift", [0.0, 1e-3])
def test_export_writes_nothing_when_the_saved_file_disagrees(tmp_path, shift):
    """A real TorchScript file of the reference, or of a copy whose bias is shifted by `shift`, is written, loaded
    back and run. Agreement (shift 0) replaces the old file; a disagreement of 1e-3 (ten times the 1e-4
    tolerance README states, on logits below 1 in size) leaves the old file byte for byte and no other file."""
    cfg = build_config("cifar")
    assert cfg.data.crop == 28  # the crops random_crops(cfg) makes for the check
    torch.manual_seed(0)
    reference = _CropsToLogits().eval()
    exported = _CropsToLogits().eval()
    exported.load_state_dict(reference.state_dict())
    with torch.no_grad():
        exported.linear.weight.mul_(1e-3)  # logits well below 1: the absolute tolerance applies
        reference.linear.weight.mul_(1e-3)
        exported.linear.bias.fill_(0.1)
        reference.linear.bias.fill_(0.1)
        exported.linear.bias[3] += shift

    def write(tmp: str) -> None:
        torch.jit.save(torch.jit.trace(exported, torch.zeros(2, 28, 28, 3, dtype=torch.uint8)), tmp)

    def run_saved(tmp: str, crops: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.jit.load(tmp)(crops).numpy()

    out = tmp_path / "net.torchscript.pt"
    out.write_bytes(b"the previous export")
    if shift == 0.0:
        agreement = _write_checked(out, cfg, reference, write, run_saved, "TorchScript")
        assert agreement.max_abs_difference < 1e-6
        crops = torch.randint(0, 256, (4, 28, 28, 3), dtype=torch.uint8)
        with torch.no_grad():
            np.testing.assert_allclose(torch.jit.load(str(out))(crops).numpy(), reference(crops).numpy(), atol=1e-6)
    else:
        with pytest.raises(UserError, match="disagrees with the eager model.*no file written"):
            _write_checked(out, cfg, reference, write, run_saved, "TorchScript")
        assert out.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left beside it


def test_import_torchvision_with_classes_gives_a_head_of_its_own(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.alexnet(weights=None, num_classes=3).eval()
    torch.save(reference.state_dict(), tmp_path / "tv3.pth")
    (tmp_path / "classes.txt").write_text("n02000001 first dog\nn02000002\nn02000003 third dog\n")
    r = run_cli("import-torchvision", str(tmp_path / "tv3.pth"), "-o", str(tmp_path / "tv3.pt"), "--classes",
                str(tmp_path / "classes.txt"))
    assert r.returncode == 0, r.stderr
    model, cfg, info = load_model(tmp_path / "tv3.pt")
    assert cfg.model.num_classes == 3 and info.classes == ["n02000001", "n02000002", "n02000003"]
    assert info.class_names[0] == "first dog" and info.class_names[2] == "third dog"
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    # a class file whose count differs from the head is refused in one line
    (tmp_path / "two.txt").write_text("a\nb\n")
    bad = run_cli("import-torchvision", str(tmp_path / "tv3.pth"), "-o", str(tmp_path / "x.pt"), "--classes",
                  str(tmp_path / "two.txt"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.pt").exists()


def test_every_preset_named_in_readmes_table_exists():
    readme = (__import__("pathlib").Path(__file__).parents[1] / "README.md").read_text()
    for preset in PRESETS:
        assert f"| `{preset}` |" in readme, preset


def test_the_colour_share_of_kernels_worked_by_hand():
    """Per pixel (R, G, B): (1, 1, 1) is grey: 0. (1, -1, 0) has mean 0: all colour, 1. (2, 1, 0) has mean 1,
    colour part (1, 0, -1): 2 of the 5 of its squared norm, 0.4."""
    from alexnet.tools.kernels import colour_report, colour_share

    def kernel(rgb):
        return np.broadcast_to(np.asarray(rgb, dtype=np.float32)[:, None, None], (3, 5, 5))

    weight = np.stack([kernel((1, 1, 1)), kernel((1, -1, 0)), kernel((2, 1, 0)), kernel((0, 0, 0))])
    np.testing.assert_allclose(colour_share(weight), [0.0, 1.0, 0.4, 0.0], atol=1e-12)
    towers = colour_report(weight, 2)
    assert [t["kernels"] for t in towers] == [2, 2]
    assert towers[0]["mean"] == pytest.approx(0.5) and towers[0]["mostly_colour"] == 1
    assert towers[1]["mean"] == pytest.approx(0.2) and towers[1]["mostly_colour"] == 0


def test_kernels_colour_prints_each_towers_share(shapes_store, tmp_path):
    run = tmp_path / "run"
    assert train(build_config("demo", overrides=SMALL), str(shapes_store), run, progress=False) == 0
    r = run_cli("kernels", str(run / "best.pt"), "-o", str(tmp_path / "k.png"), "--colour", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    from alexnet.tools.kernels import colour_share

    weight = torch.load(run / "best.pt", weights_only=True)["model"]["features.0.weight"].numpy()
    shares = colour_share(weight)
    assert [t["kernels"] for t in got["towers"]] == [8, 8]  # 16 conv1 maps, two towers
    assert got["towers"][0]["mean"] == pytest.approx(shares[:8].mean())
    assert got["towers"][1]["mean"] == pytest.approx(shares[8:].mean())
    assert (tmp_path / "k.png").is_file()
