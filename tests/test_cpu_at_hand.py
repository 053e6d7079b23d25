"""Precision and layout chosen for the CPU at hand (features injected, both branches), and training to a time
budget: the duration syntax, the epoch arithmetic against hand computations, and a budgeted run that resumes with
its own epoch count."""

import json
import math
import re

import pytest
import torch
import yaml
from conftest import run_cli

from alexnet.budget import parse_duration, plan_epochs, replan_epochs
from alexnet.config import PRESETS, build_config
from alexnet.errors import UserError
from alexnet.hardware import CpuFeatures, auto_channels_last, auto_precision, emulated_bf16_warning
from alexnet.runtime import settle_auto
from alexnet.train import train

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
AVX2 = CpuFeatures(avx2=True)  # AMD Zen 3, Intel Skylake client: no AVX-512, no bf16 arithmetic
AVX512 = CpuFeatures(avx2=True, avx512=True)  # Intel Skylake-SP, Ice Lake: AVX-512 but no bf16 arithmetic
ZEN4 = CpuFeatures(avx2=True, avx512=True, avx512_bf16=True)
AMX = CpuFeatures(avx2=True, avx512=True, avx512_bf16=True, amx=True)
GRAVITON3 = CpuFeatures(arm_bf16=True)
ARM_OLD = CpuFeatures()  # Graviton 2, Neoverse N1: no bf16


@pytest.mark.parametrize(("features", "precision", "layout", "kind"), [
    (AVX2, "fp32", "on", "AVX2"),
    (AVX512, "fp32", "on", "AVX-512"),
    (ZEN4, "bf16", "on", "AVX-512 BF16"),
    (AMX, "bf16", "on", "AMX"),
    (GRAVITON3, "bf16", "on", "ARM BF16"),
    (ARM_OLD, "fp32", "on", "basic"),
])
def test_auto_follows_the_cpus_bf16_arithmetic(features, precision, layout, kind):
    assert auto_precision(CPU, features) == precision
    assert auto_channels_last(CPU, features) == layout
    assert features.kind == kind
    # a GPU takes bf16 and channels_last whatever the host CPU
    assert auto_precision(CUDA, features) == "bf16" and auto_channels_last(CUDA, features) == "on"


@pytest.mark.parametrize(("isa", "kind"), [("AVX2", "AVX2"), ("avx2_vnni", "AVX2"), ("AVX512_CORE", "AVX-512"),
                                           ("AVX512_CORE_BF16", "AVX-512 BF16"), ("ALL", "AMX"), ("", "AMX"),
                                           ("SSE41", "basic")])
def test_onednns_isa_cap_holds_the_features_to_it(isa, kind):
    from alexnet.hardware import capped

    assert capped(AMX, isa).kind == kind
    assert capped(AMX, isa).native_bf16 == (kind in ("AVX-512 BF16", "AMX"))
    assert capped(AVX2, "AVX512_CORE_BF16") == AVX2  # a cap never adds what the CPU lacks


def test_bf16_asked_for_on_a_cpu_that_emulates_it_warns_in_one_line():
    warning = emulated_bf16_warning("bf16", CPU, AVX2)
    assert "emulated" in warning and "AVX2" in warning and "\n" not in warning
    assert emulated_bf16_warning("bf16", CPU, ZEN4) == ""
    assert emulated_bf16_warning("fp32", CPU, AVX2) == ""
    assert emulated_bf16_warning("bf16", CUDA, AVX2) == ""


def test_no_preset_fixes_a_cpu_precision_or_layout():
    """Every preset leaves precision and layout to `auto`, so none runs emulated bf16 unless asked."""
    for name in PRESETS:
        cfg = build_config(name)
        assert cfg.train.precision == "auto" and cfg.train.channels_last == "auto", name


def test_settle_auto_writes_the_choice_into_the_config_and_a_resume_keeps_the_runs_own():
    cfg = build_config("cifar")
    said = settle_auto(cfg, CPU, AVX2)
    assert (cfg.train.precision, cfg.train.channels_last) == ("fp32", "on")
    assert any("fp32" in line and "AVX2" in line for line in said)
    # resumed on a bf16 machine, the run keeps the arithmetic it was started with
    cfg = build_config("cifar")
    settle_auto(cfg, CPU, ZEN4, saved={"precision": "fp32", "channels_last": "off"})
    assert (cfg.train.precision, cfg.train.channels_last) == ("fp32", "off")
    # a run saved when `auto` meant fp32 and channels_last on the CPU resumes as it ran
    cfg = build_config("cifar")
    settle_auto(cfg, CPU, ZEN4, saved={"precision": "auto", "channels_last": "auto"})
    assert (cfg.train.precision, cfg.train.channels_last) == ("fp32", "on")
    # an explicit bf16 on an emulating CPU is kept, with the warning
    cfg = build_config("cifar", overrides={"train.precision": "bf16"})
    said = settle_auto(cfg, CPU, AVX2)
    assert cfg.train.precision == "bf16" and any("emulated" in line for line in said)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400), ("1d", 86400), (" 45M ", 2700)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30", "m", "30x", "-5m", "0s", "1h-30m", "", "1e3s", "400d"])
def test_bad_durations_are_refused(text):
    with pytest.raises(UserError):
        parse_duration(text)


def test_the_epoch_count_fits_the_budget_by_hand():
    # 30 minutes, 60 s spent setting up, epochs of 135 s (120 s training + 15 s validation):
    # (1800 - 60) / 135 = 12.9 -> 12 epochs, 1620 s, ending at 1680 s
    assert plan_epochs(1800, 60, 135) == 12
    assert plan_epochs(1800, 60, 1800) == 1  # even a budget shorter than an epoch trains one
    # after 3 epochs and 400 s in all, epochs measured at 130 s: 1400 s left buys 10 more -> 13
    assert replan_epochs(1800, 400, 3, 130) == 13
    # the budget already spent: no more epochs than those done
    assert replan_epochs(1800, 1850, 7, 130) == 7


def test_budget_on_the_command_line_is_checked_in_one_line(shapes_store, tmp_path):
    bad = run_cli("train", "--preset", "demo", "--data", str(shapes_store), "--out", str(tmp_path / "r"),
                  "--budget", "ten minutes")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "90s, 30m, 2h" in bad.stderr
    both = run_cli("train", "--preset", "demo", "--data", str(shapes_store), "--out", str(tmp_path / "r"),
                   "--budget", "10m", "--epochs", "3")
    assert both.returncode == 2 and "--epochs" in both.stderr
    assert not (tmp_path / "r").exists()


def test_dry_run_prints_the_count_the_budget_buys(shapes_store, tmp_path):
    done = run_cli("train", "--preset", "demo", "--data", str(shapes_store), "--out", str(tmp_path / "r"),
                   "--budget", "2m", "--dry-run", "--json", "train.threads=1")
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)
    epoch_s = r["budget_epoch_train_s"] + r["budget_epoch_val_s"]
    assert r["budget_epochs"] == max(1, math.floor(120 / epoch_s))
    assert r["budget_total_s"] == pytest.approx(r["budget_epochs"] * epoch_s)
    assert not (tmp_path / "r").exists()


def test_a_budgeted_run_resumes_with_the_epoch_count_it_chose(shapes_store, tmp_path):
    """A budget of ten days buys thousands of epochs of this small net; the run stops after 5 steps (max_steps),
    and the resumed run keeps the count written into the config and the checkpoint (a new estimate would almost
    never give the same number), and the linear schedule's rate follows that count."""
    small = {"optim.batch_size": 16, "data.crop": 32, "train.log_every": 1, "train.threads": 1,
             "model.widths": [16, 32, 32, 32, 32], "model.fc": [64, 64], "optim.schedule": "linear",
             "optim.warmup_epochs": 0.0, "train.budget_s": 864000.0}
    run = tmp_path / "run"
    cfg = build_config("demo", overrides={**small, "train.max_steps": 5})
    assert train(cfg, str(shapes_store), run, progress=False) == 0
    chosen = yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"]
    assert chosen > 100
    cfg = build_config("demo", overrides={**small, "train.max_steps": 8})
    assert train(cfg, str(shapes_store), run, resume="auto", progress=False) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == chosen
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps_per_epoch = 192 // 16
    for r in records:
        if r["kind"] == "train":  # lr x (1 - progress / epochs), progress in epochs at the step's start
            progress = (r["step"] - 1) / steps_per_epoch
            assert r["lr"] == pytest.approx(0.02 * (1 - progress / chosen), rel=1e-9), r


def test_a_recount_after_the_first_epoch_is_written_into_config_yaml(shapes_store, tmp_path, capsys):
    """After the first epoch the count is planned again from the measured epoch (a budget of ten days: millions
    of epochs, so the new count differs from the start's estimate); RUN/config.yaml must then say what the
    checkpoint holds, the count the run goes on with, not the one it started with."""
    small = {"optim.batch_size": 16, "data.crop": 32, "train.threads": 1, "model.widths": [16, 32, 32, 32, 32],
             "model.fc": [64, 64], "optim.warmup_epochs": 0.0, "train.budget_s": 864000.0}
    run = tmp_path / "run"
    steps_per_epoch = 192 // 16
    cfg = build_config("demo", overrides={**small, "train.max_steps": steps_per_epoch + 2})
    assert train(cfg, str(shapes_store), run, progress=False) == 0
    printed = capsys.readouterr().out
    start = int(re.search(r"^budget [^:]+: (\d+) epochs of about", printed, re.MULTILINE).group(1))
    assert f"epochs in all (was {start})" in printed, printed
    on_disk = yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"]
    held = torch.load(run / "last.pt", map_location="cpu", weights_only=False)["config"]["train"]["epochs"]
    assert on_disk == held != start
