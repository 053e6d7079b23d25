"""`alexnet eval` as the README promises it: ten crops, several checkpoints averaged in probability, on a set
of 7 classes (so that top-5 is not trivially right), against the same numbers computed here by hand; and the
parameter counts README's preset table gives."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from alexnet.config import PRESETS, build_config
from alexnet.data.store import open_store
from alexnet.model import AlexNet, count_parameters
from alexnet.prepare.synthetic import write_image_folder
from alexnet.prepare.writer import prepare
from alexnet.train import train

CLASSES = ("disc", "square", "h-stripes", "cross", "ring", "checker", "triangle")


@pytest.fixture(scope="module")
def seven(tmp_path_factory):
    root = tmp_path_factory.mktemp("seven")
    folder = write_image_folder(root / "images", train_per_class=12, val_per_class=5, size=40, seed=4,
                                classes=CLASSES)
    store = prepare(folder, root / "store", size=36, workers=1, progress=False).root
    runs = []
    for seed in (0, 1):
        overrides = {"optim.batch_size": 16, "data.crop": 32, "data.normalize": "mean-image",
                     "model.widths": [16, 32, 32, 32, 32], "model.fc": [64, 64], "train.max_steps": 6,
                     "optim.lr": 0.0005, "train.threads": 1, "train.seed": seed,
                     "train.precision": "fp32"}  # the checkpoints evaluate in float32, as the hand computation
        run = root / f"run{seed}"
        assert train(build_config("demo", overrides=overrides), str(store), run, progress=False) == 0
        runs.append(run / "last.pt")
    return store, runs


def ten_views_by_hand(image: np.ndarray, mean: np.ndarray, crop: int) -> list[np.ndarray]:
    """The paper's ten views of one (S, S, 3) image minus the mean image: 4 corners and the centre, each mirrored."""
    size = image.shape[0]
    far, centre = size - crop, (size - crop) // 2
    x = image.astype(np.float32) - mean
    views = []
    for top, left in ((0, 0), (0, far), (far, 0), (far, far), (centre, centre)):
        v = x[top:top + crop, left:left + crop]
        views += [v, v[:, ::-1]]
    return views


def test_eval_ten_crops_of_two_checkpoints_averaged_in_probability(seven):
    store_path, checkpoints = seven
    r = run_cli("eval", *map(str, checkpoints), "--data", str(store_path), "--ten-crop", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    store = open_store(store_path)
    val = store.split("val")
    mean = store.mean
    probs = np.zeros((len(val), len(CLASSES)))
    for path in checkpoints:
        ckpt = torch.load(path, weights_only=True)
        cfg = build_config("demo", overrides={k: v for s in ("model", "data") for k, v in
                                              ((f"{s}.{k}", v) for k, v in ckpt["config"][s].items())})
        model = AlexNet(cfg.model, 32)
        model.load_state_dict(ckpt["model"])
        model.eval()
        for i in range(len(val)):
            views = np.stack(ten_views_by_hand(np.asarray(val.images[i]), mean, 32))
            with torch.no_grad():
                logits = model(torch.from_numpy(views.copy()).permute(0, 3, 1, 2))
            probs[i] += torch.softmax(logits.double(), dim=1).mean(0).numpy() / len(checkpoints)
    labels = np.asarray(val.labels)
    ranked = np.argsort(-probs, axis=1)
    top1 = 100 * (1 - np.mean(ranked[:, 0] == labels))
    top5 = 100 * (1 - np.mean([labels[i] in ranked[i, :5] for i in range(len(labels))]))
    assert got["images"] == len(val) == 35 and got["views"] == 10
    assert got["top1_error"] == pytest.approx(top1) and got["top5_error"] == pytest.approx(top5)
    assert 0 < got["top5_error"] < got["top1_error"] or got["top1_error"] == 0  # top-5 is not trivially right


def test_readme_parameter_counts_are_the_presets():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([\w-]+)` \| .* \| ([\d,]+) \|$", text, flags=re.M))
    assert set(rows) == set(PRESETS)
    for preset, count in rows.items():
        cfg = build_config(preset)
        assert count_parameters(AlexNet(cfg.model, cfg.data.crop)) == int(count.replace(",", "")), preset


class FixedLogits(torch.nn.Module):
    """A net whose every view of every image gets the same logits: a model with confident, large outputs."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


def test_models_are_averaged_in_probability_not_in_logits():
    """Logits where the two averages rank differently, worked by hand:
    A = [10, 0, 9] -> p = [0.731, 0.000033, 0.269];  B = [0, 10.5, 9] -> p = [0.000022, 0.818, 0.182]
    mean of p = [0.366, 0.409, 0.226]: class 1.  mean of logits = [5, 5.25, 9]: class 2."""
    from alexnet.config import DataConfig
    from alexnet.data.augment import ColourStats
    from alexnet.evaluate import predict_probs

    a, b = [10.0, 0.0, 9.0], [0.0, 10.5, 9.0]
    by_hand = (np.exp(a) / np.exp(a).sum() + np.exp(b) / np.exp(b).sum()) / 2
    assert by_hand.argmax() == 1 and np.mean([a, b], axis=0).argmax() == 2
    cfg = DataConfig(image_size=8, crop=8)
    stats = ColourStats.build(torch.zeros(8, 8, 3), torch.eye(3), torch.ones(3), "mean-image", torch.device("cpu"))
    images = torch.zeros(4, 8, 8, 3, dtype=torch.uint8)
    for ten_crop in (False, True):
        probs = predict_probs([FixedLogits(a), FixedLogits(b)], images, cfg, [stats, stats], ten_crop)
        assert probs.shape == (4, 3)
        np.testing.assert_allclose(probs.numpy(), np.tile(by_hand, (4, 1)), rtol=1e-5)
        assert (probs.argmax(1) == 1).all()
