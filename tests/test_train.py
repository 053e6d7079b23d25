"""Training end to end on a generated set: the loss falls, the run's files exist, resume is exact."""

import json

import torch

from alexnet.config import build_config
from alexnet.train import train

# a small net of the demo preset's shape, with the paper's ingredients
SMALL = {"train.epochs": 3, "optim.batch_size": 16, "data.crop": 32, "train.log_every": 4,
         "model.widths": [16, 32, 32, 32, 32], "model.fc": [64, 64], "optim.lr": 0.02}


def small_cfg(**extra):
    return build_config("demo", overrides={**SMALL, **extra})


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_short_run_learns_and_writes_its_files(shapes_store, tmp_path):
    run = tmp_path / "run"
    assert train(small_cfg(**{"train.epochs": 6}), str(shapes_store), run, progress=False) == 0
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "curves.png", "tensorboard"):
        assert (run / name).exists(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(epochs) == 6
    assert epochs[-1]["train_loss"] < 0.8 * epochs[0]["train_loss"]
    assert epochs[-1]["val_images"] == 48  # 4 classes x 12, every image counted once
    assert min(r["val_top1_error"] for r in epochs) < 60.0  # chance is 75%
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["classes"] == ["cross", "disc", "h-stripes", "square"]  # sorted folder names


def test_resume_mid_epoch_equals_never_stopping_bit_for_bit(shapes_store, tmp_path):
    whole = tmp_path / "whole"
    assert train(small_cfg(), str(shapes_store), whole, progress=False) == 0
    parts = tmp_path / "parts"
    # 12 steps per epoch (192 // 16): stop inside epoch 1, then inside epoch 2, then finish
    assert train(small_cfg(**{"train.max_steps": 5}), str(shapes_store), parts, progress=False) == 0
    assert train(small_cfg(**{"train.max_steps": 19}), str(shapes_store), parts, "auto", progress=False) == 0
    assert train(small_cfg(), str(shapes_store), parts, "auto", progress=False) == 0
    a, b = weights(whole / "last.pt"), weights(parts / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
