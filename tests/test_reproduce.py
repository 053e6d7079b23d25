"""`alexnet reproduce figure1|ablations` on a tiny generated set, and the arithmetic behind their reports."""

import dataclasses
import json
import math
import re

import pytest
from conftest import run_cli
from PIL import Image

from alexnet.config import PRESETS, parse_assignments
from alexnet.data.store import open_store
from alexnet.reproduce.ablations import VARIANTS, reproduce_ablations, variant_config
from alexnet.reproduce.figure1 import (
    Curve,
    Figure1Options,
    _config,
    crossing_epoch,
    fastest,
    grid_extension,
    reproduce_figure1,
)

# Tiny nets so that every run takes about a second on one core.
FIGURE1_TINY = ["model.widths=[4,4,8]", "optim.batch_size=16", "train.threads=1"]
CIFAR_TINY = ["model.widths=[8,8,8,8,8]", "model.fc=[16,16]", "optim.batch_size=16", "train.threads=1"]


@pytest.fixture(scope="module")
def store32(tmp_path_factory):
    """4 classes of generated 32x32 shapes, 32 train and 8 val images each, prepared at size 32."""
    from alexnet.prepare.synthetic import write_image_folder
    from alexnet.prepare.writer import prepare

    root = tmp_path_factory.mktemp("repro")
    folder = write_image_folder(root / "images", train_per_class=32, val_per_class=8, size=32, seed=1,
                                classes=("disc", "square", "h-stripes", "cross"))
    return prepare(folder, root / "store", size=32, workers=1, progress=False).root


def epoch_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "epoch"]


def test_crossing_epoch_hand_computed():
    # 30% after epoch 2, 20% after epoch 3: 25% is crossed half way, at 2.5
    assert crossing_epoch([50.0, 30.0, 20.0, 10.0], 25.0) == (3, 2.5)
    assert crossing_epoch([24.0, 10.0], 25.0) == (1, 1.0)
    assert crossing_epoch([25.0], 25.0) == (1, 1.0)  # "at or below"
    assert crossing_epoch([90.0, 80.0], 25.0) == (None, None)
    k, x = crossing_epoch([60.0, 40.0, 35.0, 15.0], 25.0)
    assert k == 4 and math.isclose(x, 3 + (35 - 25) / (35 - 15))


def _curve(lr, crossing):
    return Curve("relu", lr, [], [], None if crossing is None else math.ceil(crossing), crossing)


def test_fastest_rate_fewest_epochs_then_smaller_rate():
    curves = {0.001: _curve(0.001, 7.5), 0.003: _curve(0.003, 4.2), 0.01: _curve(0.01, None)}
    assert fastest(curves) == 0.003
    assert fastest({0.01: _curve(0.01, 3.0), 0.003: _curve(0.003, 3.0)}) == 0.003
    assert fastest({0.01: _curve(0.01, None)}) is None


def test_grid_grows_one_step_past_a_winning_edge():
    used = {"low": 0, "high": 0}
    # winner 0.01 at the top of 0.001, 0.003, 0.01: next 0.01 * (0.01 / 0.003)
    assert grid_extension([0.001, 0.003, 0.01], 0.01, used, 2) == pytest.approx(0.01 * 0.01 / 0.003)
    assert grid_extension([0.001, 0.003, 0.01], 0.001, used, 2) == pytest.approx(0.001 * 0.001 / 0.003)
    assert grid_extension([0.001, 0.003, 0.01], 0.003, used, 2) is None  # inside: done
    assert grid_extension([0.001, 0.003, 0.01], None, used, 2) is None  # nothing reached the target
    used = {"low": 2, "high": 0}
    assert grid_extension([0.001, 0.003], 0.001, used, 2) is None  # that side is spent


def test_the_grid_grows_towards_the_lowest_error_when_no_rate_reached_the_target():
    from alexnet.reproduce.figure1 import leading

    curves = {0.001: Curve("tanh", 0.001, [60.0, 50.0], [], None, None),
              0.01: Curve("tanh", 0.01, [50.0, 30.0], [], None, None),
              1.0: Curve("tanh", 1.0, [90.0], [], None, None, diverged=True)}
    assert leading(curves) == 0.01
    curves[0.003] = _curve(0.003, 4.5)
    assert leading(curves) == 0.003  # a rate that reached it leads
    assert leading({1.0: Curve("tanh", 1.0, [], [], None, None, diverged=True)}) is None


def test_paper_setting_is_the_default_and_the_heuristic_an_option():
    paper = _config("tanh", 0.001, 30, Figure1Options())
    assert paper.model.init == "paper" and paper.model.init_std == 0.01 and paper.data.normalize == "mean-image"
    assert paper.optim.schedule == "constant" and paper.optim.momentum == 0.9 and paper.optim.weight_decay == 0
    assert paper.model.activation == "tanh" and paper.optim.lr == 0.001
    drop = _config("relu", 0.01, 30, Figure1Options(lr_drop=True))
    assert drop.optim.schedule == "plateau" and drop.optim.patience == 2 and drop.optim.min_improvement == 0.5
    modern = _config("relu", 0.01, 30, Figure1Options(setting="modern"))
    assert modern.data.normalize == "imagenet" and modern.model.init == "torchvision"
    assert modern.optim.schedule == "plateau"


def test_each_variant_removes_exactly_its_ingredient():
    base = variant_config(VARIANTS[0], 0, None, {}).to_dict()
    expected = {
        "no-lrn": {("model", "lrn"): False},
        "plain-pooling": {("model", "pooling"): "plain"},
        "one-tower": {("model", "towers"): 1},
        "no-pca": {("data", "pca_std"): 0.0},
        "no-dropout": {("model", "dropout"): 0.0},
        "no-crops-flips": {("data", "random_crop"): False, ("data", "flip"): False},
    }
    assert {v.name for v in VARIANTS} == {"all", *expected}
    for variant in VARIANTS[1:]:
        cfg = variant_config(variant, 0, None, {}).to_dict()
        changed = {(s, k): cfg[s][k] for s in ("model", "data", "optim", "train") for k in cfg[s]
                   if cfg[s][k] != base[s][k]}
        assert changed == expected[variant.name], variant.name


def test_milestones_scale_with_the_epoch_budget():
    preset = PRESETS["cifar-ingredients"]
    epochs0, milestones0 = preset["train"]["epochs"], preset["optim"]["milestones"]
    cfg = variant_config(VARIANTS[0], 2, 10, {})
    assert cfg.train.epochs == 10 and cfg.train.seed == 2
    assert cfg.optim.milestones == sorted({max(1, round(m * 10 / epochs0)) for m in milestones0})
    same = variant_config(VARIANTS[0], 0, epochs0, {})
    assert same.optim.milestones == milestones0


def test_figure1_writes_its_plot_and_prints_the_ratio(store32, tmp_path):
    out = tmp_path / "f1"
    # 1e6 makes the ReLU net's loss non-finite at once: that rate diverges and cannot win
    proc = run_cli("reproduce", "figure1", "--data", str(store32), "--out", str(out), "--max-epochs", "2",
                   "--target", "99", "--sweep", "0.001,1e6", "--max-extend", "0", "--jobs", "2", *FIGURE1_TINY)
    assert proc.returncode == 0, proc.stderr
    assert "relu: lr 1e+06 diverged (non-finite loss)" in proc.stdout
    assert "chosen: relu: lr 0.001, 99% training error after 1 epochs" in proc.stdout
    # every net is below 99% after one epoch, so each stops there and the ratio is 1
    for activation in ("relu", "tanh"):
        records = epoch_records(out / f"{activation}-lr0.001")
        assert len(records) == 1 and records[0]["train_top1_error"] <= 99
    assert re.search(r"^ratio tanh/ReLU: 1\.0 in whole epochs, 1\.0 interpolated \(paper: 6\)$", proc.stdout, re.M)
    table = (out / "figure1.md").read_text()
    assert "| 1e+06 | diverged |" in table and "| 0.001 | **1 (1.00)** | **1 (1.00)** |" in table
    with Image.open(out / "figure1.png") as img:
        assert img.format == "PNG" and img.width > 300


def test_figure1_grows_the_grid_and_reports_a_net_that_misses_the_target(store32, tmp_path):
    out = tmp_path / "f1"
    # target 99%: every rate reaches it after one epoch, so the smallest wins each time and the grid grows
    # downwards, one step (x 1/10) at a time, twice
    opts = Figure1Options(target=99, max_epochs=1, rates=(0.001, 0.01), max_extend=2,
                          overrides=parse_assignments(FIGURE1_TINY), activations=("relu",))
    store = open_store(store32)
    lines = []
    alone, no_ratio = reproduce_figure1(store, out, opts, say=lines.append)
    assert sorted(p.name for p in out.glob("relu-lr*")) == ["relu-lr0.0001", "relu-lr0.001", "relu-lr0.01",
                                                            "relu-lr1e-05"]
    assert alone[0].lr == 1e-05 and no_ratio == "" and not (out / "figure1.png").exists()
    # target 0.5%: nothing reaches it; each run ends at max_epochs and the report says so
    out2 = tmp_path / "f2"
    opts2 = dataclasses.replace(opts, target=0.5, max_epochs=2, rates=(0.01,), activations=("relu", "tanh"))
    curves, ratio = reproduce_figure1(store, out2, opts2, say=lines.append)
    errors = [r["train_top1_error"] for r in epoch_records(out2 / "relu-lr0.01")]
    assert len(errors) == 2 and min(errors) > 0.5  # 4 classes, 2 tiny epochs: nowhere near 0.5% error
    assert curves[0].errors == errors and curves[0].epochs_to_target is None
    assert f"relu: lr 0.01, did not reach 0.5% in 2 epochs (last {errors[-1]:.2f}%" in "\n".join(lines)
    assert ratio == "ReLU did not reach 0.5% within 2 epochs: no ratio"
    assert (out2 / "figure1.png").is_file()
    # a second call reuses the finished runs (nothing retrained)
    stamp = (out2 / "relu-lr0.01" / "metrics.jsonl").stat().st_mtime_ns
    reproduce_figure1(store, out2, opts2, say=lines.append)
    assert (out2 / "relu-lr0.01" / "metrics.jsonl").stat().st_mtime_ns == stamp


def test_figure1_rate_drop_heuristic_divides_the_rate_on_a_stall(store32, tmp_path):
    # target 0.5% is out of reach; with patience 2 and 0.5 points, a run of 5 epochs at a tiny rate stalls
    opts = Figure1Options(target=0.5, max_epochs=5, rates=(1e-7,), max_extend=0, lr_drop=True,
                          overrides=parse_assignments(FIGURE1_TINY), activations=("relu",))
    reproduce_figure1(open_store(store32), tmp_path, opts, say=lambda line: None)
    rates = [r["lr"] for r in epoch_records(tmp_path / "relu-lr1e-07")]
    assert rates[0] == pytest.approx(1e-7) and rates[-1] < rates[0]
    constant = dataclasses.replace(opts, lr_drop=False)
    reproduce_figure1(open_store(store32), tmp_path / "c", constant, say=lambda line: None)
    assert [r["lr"] for r in epoch_records(tmp_path / "c" / "relu-lr1e-07")] == pytest.approx([1e-7] * 5)


def test_ablations_table_has_every_variant_and_a_rerun_skips_finished_runs(store32, tmp_path):
    out = tmp_path / "abl"
    args = ["reproduce", "ablations", "--data", str(store32), "--out", str(out), "--seeds", "1", "--epochs", "1",
            *CIFAR_TINY]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    table = (out / "ablations.md").read_text()
    run_dirs = {v.name: next(out.glob(f"{v.name}-e1-n128-seed0-*")) for v in VARIANTS}
    for v in VARIANTS:
        last = epoch_records(run_dirs[v.name])[-1]
        row = next(line for line in table.splitlines() if line.startswith(f"| {v.removed} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == f"{last['val_top1_error']:.2f}" and cells[2] == f"{last['val_top5_error']:.2f}"
        assert cells[5] == v.paper
    base = epoch_records(run_dirs["all"])[-1]["val_top1_error"]
    no_lrn = epoch_records(run_dirs["no-lrn"])[-1]["val_top1_error"]
    assert f"| {no_lrn - base:+.2f} |" in next(line for line in table.splitlines() if "local response" in line)

    stamps = {p: p.stat().st_mtime_ns for d in run_dirs.values() for p in d.rglob("*") if p.is_file()}
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skipped ") == len(VARIANTS)
    assert not re.search(r"^training ", again.stdout, re.M)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (out / "ablations.md").read_text() == table


def test_ablations_mean_and_std_over_seeds(store32, tmp_path):
    out = tmp_path / "abl"
    # seed 1 alone first (as a parallel process would), then the table over both seeds reuses it
    alone = reproduce_ablations(open_store(store32), out, 2, 1, parse_assignments(CIFAR_TINY), VARIANTS[:1],
                                train_images=100, say=lambda line: None, only_seed=1)
    assert not list(out.glob("all-e1-n100-seed0-*")) and "1 seed(s)" in alone
    seed1_metrics = next(out.glob("all-e1-n100-seed1-*")) / "metrics.jsonl"
    stamp = seed1_metrics.stat().st_mtime_ns
    text = reproduce_ablations(open_store(store32), out, 2, 1, parse_assignments(CIFAR_TINY), VARIANTS[:1],
                               train_images=100, say=lambda line: None)
    assert seed1_metrics.stat().st_mtime_ns == stamp  # reused, not trained again
    runs = [next(out.glob(f"all-e1-n100-seed{s}-*")) for s in (0, 1)]
    assert all(r["step"] == 100 // 16 for r in map(lambda d: epoch_records(d)[-1], runs))  # 100 images, batch 16
    errs = [epoch_records(d)[-1]["val_top1_error"] for d in runs]
    mean = (errs[0] + errs[1]) / 2
    std = math.sqrt(((errs[0] - mean) ** 2 + (errs[1] - mean) ** 2) / (2 - 1))  # sample std, n - 1
    assert f"| nothing (the cifar-ingredients preset) | {mean:.2f} ± {std:.2f} |" in text
    assert "1 epochs on 100 training images, 2 seed(s)" in text
    assert (out / "ablations.md").read_text() == text


@pytest.mark.parametrize("args, message", [
    (["ablations", "--only", "no-such"], "unknown variant no-such"),
    (["ablations", "--seeds", "0"], "--seeds and --epochs must be positive"),
    (["ablations", "--train-images", "-5"], "--train-images at least 0"),
    (["ablations", "--seeds", "2", "--seed", "2"], "--seed 2 is outside the seeds 0..1"),
    (["figure1", "--jobs", "0"], "--max-epochs and --jobs must be positive"),
    (["figure1", "--target", "120"], "--target is a training error in percent"),
    (["figure1", "--sweep", "0.01,fast"], "--sweep 0.01,fast: give learning rates separated by commas"),
    (["figure1", "model.no_such_key=1"], "unknown config key"),
])
def test_bad_input_is_one_line_and_exit_status_2(store32, tmp_path, args, message):
    proc = run_cli("reproduce", *args, "--data", str(store32), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_run_stops_where_an_earlier_rate_reached_the_target(store32, tmp_path):
    # target 99%: the first rate gets there in epoch 1, so the second stops after 1 epoch whatever it does
    opts = Figure1Options(target=99, max_epochs=4, rates=(0.001, 1e-9), max_extend=0,
                          overrides=parse_assignments(FIGURE1_TINY), activations=("relu",))
    reproduce_figure1(open_store(store32), tmp_path, opts, say=lambda line: None)
    assert len(epoch_records(tmp_path / "relu-lr1e-09")) == 1 and len(epoch_records(tmp_path / "relu-lr0.001")) == 1
    # unreachable target: no rate reaches it, each runs to max_epochs
    opts = dataclasses.replace(opts, target=0.5, max_epochs=2)
    reproduce_figure1(open_store(store32), tmp_path / "b", opts, say=lambda line: None)
    assert [len(epoch_records(tmp_path / "b" / f"relu-lr{lr:g}")) for lr in (1e-9, 0.001)] == [2, 2]


def test_reproductions_show_progress_on_a_terminal_and_not_with_no_progress(store32, tmp_path):
    from conftest import run_cli_on_terminal

    abl = ["reproduce", "ablations", "--data", str(store32), "--seeds", "1", "--epochs", "1", "--only", "all",
           *CIFAR_TINY]
    status, _, shown = run_cli_on_terminal(*abl, "--out", str(tmp_path / "a1"))
    assert status == 0, shown
    assert "epoch 1/1" in shown and "/8 [" in shown  # the run's bar over its 128 / 16 = 8 steps
    status, _, quiet = run_cli_on_terminal(*abl, "--out", str(tmp_path / "a2"), "--no-progress")
    assert status == 0 and "epoch 1/1" not in quiet and "/8 [" not in quiet
    # several runs at once in worker processes: one bar over the runs, none from the workers
    fig = ["reproduce", "figure1", "--data", str(store32), "--max-epochs", "1", "--sweep", "0.001,0.01",
           "--max-extend", "0", "--jobs", "2", *FIGURE1_TINY]
    status, _, shown = run_cli_on_terminal(*fig, "--out", str(tmp_path / "f1"))
    assert status == 0, shown
    assert "figure1 runs" in shown and "/4 [" in shown and "epoch 1/1" not in shown
    status, _, quiet = run_cli_on_terminal(*fig, "--out", str(tmp_path / "f2"), "--no-progress")
    assert status == 0 and "figure1 runs" not in quiet


def test_the_ratio_is_tanhs_epochs_over_relus_and_a_bound_when_tanh_never_got_there():
    """Curves that cross the target at different epochs, the ratio written out by hand: tanh is the numerator
    (a ratio taken the other way round would print 0.2 here), and whole epochs and interpolated crossings are
    each divided by their own kind."""
    from alexnet.reproduce.figure1 import ratio_line

    relu = Curve("relu", 0.01, [40.0, 30.0, 20.0], [1.0] * 3, *crossing_epoch([40.0, 30.0, 20.0], 25.0))
    tanh_errors = [80.0, 70.0, 60.0, 50.0, 45.0, 40.0, 35.0, 30.0, 28.0, 26.0, 24.0, 22.0]
    tanh = Curve("tanh", 0.01, tanh_errors, [1.0] * 12, *crossing_epoch(tanh_errors, 25.0))
    assert (relu.epochs_to_target, relu.crossing) == (3, 2.5)
    assert (tanh.epochs_to_target, tanh.crossing) == (11, 10.5)
    line = ratio_line(relu, tanh, 25.0)
    assert line == f"ratio tanh/ReLU: {11 / 3:.1f} in whole epochs, {10.5 / 2.5:.1f} interpolated (paper: 6)"
    assert line.startswith("ratio tanh/ReLU: 3.7 in whole epochs, 4.2 interpolated")
    # tanh still above the target after its 12 epochs: a lower bound of 12 / 3
    slow = Curve("tanh", 0.01, [50.0] * 12, [1.0] * 12, None, None)
    assert ratio_line(relu, slow, 25.0) == ("ratio tanh/ReLU > 4.0 (tanh did not reach 25% in 12 epochs; "
                                           "paper: 6)")
