"""Training end to end on a generated set: the loss falls, the run's files exist, resume is exact."""

import json

import pytest
import torch

from alexnet.config import build_config
from alexnet.train import train

# a small net of the demo preset's shape, with the paper's ingredients
SMALL = {"train.epochs": 3, "optim.batch_size": 16, "data.crop": 32, "train.log_every": 4,
         "model.widths": [16, 32, 32, 32, 32], "model.fc": [64, 64], "optim.lr": 0.005, "optim.milestones": []}


def small_cfg(**extra):
    return build_config("demo", overrides={**SMALL, **extra})


def weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def learn_store(tmp_path_factory):
    """80 training images per class: enough for a loss that visibly falls in a few seconds."""
    from alexnet.prepare.synthetic import write_image_folder
    from alexnet.prepare.writer import prepare

    root = tmp_path_factory.mktemp("learn")
    write_image_folder(root / "img", 80, 12, 40, 0, ("disc", "square", "h-stripes", "cross"))
    prepare(root / "img", root / "store", size=36, workers=1, progress=False)
    return root / "store"


def test_short_run_learns_and_writes_its_files(learn_store, tmp_path):
    run = tmp_path / "run"
    cfg = small_cfg(**{"train.epochs": 10, "model.dropout": 0.0})
    assert train(cfg, str(learn_store), run, progress=False) == 0
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "curves.png", "tensorboard"):
        assert (run / name).exists(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(epochs) == 10
    assert epochs[-1]["train_loss"] < 0.8 * epochs[0]["train_loss"]
    assert epochs[-1]["val_images"] == 48  # 4 classes x 12, every image counted once
    assert min(r["val_top1_error"] for r in epochs) < 50.0  # chance is 75%
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


def test_large_batch_mode_scales_the_rate_with_the_batch_and_says_so(shapes_store, tmp_path, capsys):
    """optim.lr_scaling=linear: lr x batch/128, reached by the linear warm-up; the log says so."""
    cfg = small_cfg(**{"optim.lr_scaling": "linear", "optim.batch_size": 32, "optim.warmup_epochs": 1, "optim.lr": 0.02,
                       "train.epochs": 2, "train.log_every": 3})
    run = tmp_path / "run"
    assert train(cfg, str(shapes_store), run, progress=False) == 0
    assert "large-batch mode: lr 0.02 x 32/128 = 0.005, linear warm-up over 1 epochs" in capsys.readouterr().out
    steps = 192 // 32  # images in the shapes store's train split / batch
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in logged if r["kind"] == "train"}
    # the lr logged at global step s is the one its last step (s - 1) used: 0.005 * min(1, (s - 1) / steps)
    assert set(lrs) == {3, 6, 9, 12}
    for s, lr in lrs.items():
        assert lr == pytest.approx(0.02 * 32 / 128 * min(1.0, (s - 1) / steps), rel=1e-6)


def test_dry_run_reports_the_run_and_writes_nothing(shapes_store, tmp_path):
    import json

    from conftest import run_cli

    from alexnet.config import build_config
    from alexnet.data.store import open_store
    from alexnet.model import AlexNet, count_parameters

    before = sorted(p.name for p in tmp_path.iterdir())
    args = ["train", "--preset", "demo", "--data", str(shapes_store), "--out", str(tmp_path / "run"), "--dry-run",
            "--json", "optim.batch_size=16", "train.threads=1", "train.epochs=3"]
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    n_train = len(open_store(shapes_store).split("train"))
    cfg = build_config("demo", overrides={"model.num_classes": 4})
    assert report["parameters"] == count_parameters(AlexNet(cfg.model, cfg.data.crop))
    assert report["steps_per_epoch"] == n_train // 16 and report["batch_size"] == 16
    assert report["total_seconds_estimate"] == pytest.approx(3 * (n_train // 16) * report["step_seconds"])
    # weights + gradients + velocities alone are 12 bytes a parameter: the estimate is at least that
    assert report["memory_bytes_estimate"] > 12 * report["parameters"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run folder, no stores/, nothing
    # an existing run is refused as a real run would be, and a bad key too
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("x: 1\n")
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 2 and "already holds a run" in again.stderr


def test_validation_shows_progress_over_every_image(shapes_store, capsys):
    from alexnet.config import build_config
    from alexnet.data.augment import ColourStats
    from alexnet.data.loader import BatchLoader
    from alexnet.data.store import open_store
    from alexnet.evaluate import evaluate
    from alexnet.model import AlexNet

    store = open_store(shapes_store)
    cfg = build_config("demo", overrides={"model.num_classes": 4, "data.image_size": 36, "data.crop": 32})
    val = store.split("val")
    loader = BatchLoader(val.images, val.labels, 16, torch.device("cpu"))
    stats = ColourStats.build(torch.from_numpy(store.mean), torch.from_numpy(store.pca_eigenvectors),
                              torch.from_numpy(store.pca_eigenvalues), cfg.data.normalize, torch.device("cpu"))
    quiet = evaluate([AlexNet(cfg.model, 32)], loader, cfg.data, [stats], ten_crop=True)
    assert capsys.readouterr().err == ""
    shown = evaluate([AlexNet(cfg.model, 32)], loader, cfg.data, [stats], ten_crop=True, progress=True)
    err = capsys.readouterr().err
    assert "validation (ten crops)" in err and f"0/{len(val)} " in err  # a bar over every image of the split
    assert shown["images"] == quiet["images"] == len(val)


def test_tensorboard_holds_conv1_kernels_each_epoch_and_the_hparams(shapes_store, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from alexnet.config import build_config
    from alexnet.plots import kernel_grid
    from alexnet.train import train

    overrides = {"optim.batch_size": 16, "data.crop": 32, "model.widths": [16, 32, 32, 32, 32], "model.fc": [64, 64],
                 "train.epochs": 2, "train.threads": 1, "train.limit_train": 64, "train.limit_val": 16}
    run = tmp_path / "run"
    assert train(build_config("demo", overrides=overrides), str(shapes_store), run, progress=False) == 0
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    images = events.Images("conv1/kernels")
    assert [i.step for i in images] == [4, 8]  # after each epoch: 64 images / 16 = 4 steps each
    weight = torch.load(run / "last.pt", weights_only=True)["model"]["features.0.weight"]
    grid, _ = kernel_grid(weight.float().numpy(), 2)
    from io import BytesIO

    from PIL import Image

    last = Image.open(BytesIO(images[-1].encoded_image_string))
    assert last.size == (grid.shape[1], grid.shape[0])  # the same tiling as `alexnet kernels`
    hparams = EventAccumulator(str(run / "tensorboard" / "hparams"))
    hparams.Reload()
    (best,) = hparams.Scalars("hparam/best_val_top1_error")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert best.value == pytest.approx(min(r["val_top1_error"] for r in records if r["kind"] == "epoch"))
    raw = b"".join(p.read_bytes() for p in (run / "tensorboard" / "hparams").glob("events.*"))
    assert b"_hparams_/experiment" in raw and b"optim.lr" in raw and b"model.widths" in raw  # the config


def test_linear_schedule_in_a_run_falls_step_by_step_to_zero(shapes_store, tmp_path):
    """optim.schedule=linear: step s (from 0) of n in all trains at lr x (1 - s / n); the epoch record gives its
    last step's rate."""
    cfg = small_cfg(**{"optim.schedule": "linear", "optim.lr": 0.02, "train.epochs": 3, "train.log_every": 1,
                       "optim.batch_size": 32})
    run = tmp_path / "run"
    assert train(cfg, str(shapes_store), run, progress=False) == 0
    steps = 192 // 32
    n = 3 * steps
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_lrs = {r["step"]: r["lr"] for r in logged if r["kind"] == "train"}
    assert sorted(train_lrs) == list(range(1, n + 1))
    for s, lr in train_lrs.items():  # logged at global step s: the rate step s - 1 used
        assert lr == pytest.approx(0.02 * (1 - (s - 1) / n), rel=1e-9, abs=1e-12)
    epochs = [r for r in logged if r["kind"] == "epoch"]
    assert [r["lr"] for r in epochs] == pytest.approx([0.02 * (1 - ((e + 1) * steps - 1) / n) for e in range(3)])


def test_demo_shows_progress_on_a_terminal_and_not_with_no_progress(tmp_path):
    from conftest import run_cli_on_terminal

    args = ["demo", "--epochs", "1", "--train-per-class", "8", "--val-per-class", "2", "optim.batch_size=16",
            "train.threads=1"]
    status, stdout, shown = run_cli_on_terminal(*args, "--out", str(tmp_path / "a"))
    assert status == 0, shown
    assert "ten-crop validation error" in stdout
    assert "epoch 1/1" in shown and "%|" in shown, shown  # the training bar, on the terminal (stderr)
    status, quiet_stdout, quiet = run_cli_on_terminal(*args, "--out", str(tmp_path / "b"), "--no-progress")
    assert status == 0, quiet
    assert "epoch 1/1" not in quiet and "%|" not in quiet, quiet
    # the same result either way: the bars change no figure
    error = [line for line in stdout.splitlines() if line.startswith("ten-crop validation error")][0]
    quiet_error = [line for line in quiet_stdout.splitlines() if line.startswith("ten-crop validation error")][0]
    assert error.split(" in ")[0] == quiet_error.split(" in ")[0]
