"""What a week-long run meets, made to happen for real to a real `alexnet train` process.

SIGKILL at timed moments and inside a checkpoint write, SIGTERM and SIGINT, a NaN loss, a full disk, a
read-only or unwritable checkpoint folder, a store changed under the run. The reference for "exact" is an
uninterrupted run of the same config that kept a checkpoint after every step: a resumed run must end with
the same weights bit for bit, and a checkpoint written at step N must equal the reference's step N.

Moments no outside signal can hit reliably (half-way through writing a checkpoint, between the rename and
the link update) use the documented test hooks of alexnet.faults. The full disk and the read-only folder
are real: a small tmpfs and a read-only bind mount in a private mount namespace (`unshare`), which
disappear with the process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexnet.checkpoint import CheckpointManager, atomic_save, load_checkpoint
from alexnet.cli import main as cli_main
from alexnet.config import build_config
from alexnet.errors import UserError
from alexnet.train import train

STEPS_PER_EPOCH = 12  # 192 training images of the shapes store, batches of 16
EPOCHS = 2
# the small net of tests/test_train.py; one thread so that every process computes the same floats
OVERRIDES = {"train.epochs": EPOCHS, "optim.batch_size": 16, "data.crop": 32, "train.log_every": 1,
             "model.widths": [16, 32, 32, 32, 32], "model.fc": [64, 64], "optim.lr": 0.02, "train.threads": 1}
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
TIMEOUT = 240  # seconds for one process; generous: two cores are shared with other test processes


def cli_overrides(**extra) -> list[str]:
    values = {**OVERRIDES, **extra}
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def train_argv(store: Path, out: Path, *flags: str, **extra) -> list[str]:
    return [sys.executable, "-m", "alexnet", "train", "--preset", "demo", "--data", str(store), "--out", str(out),
            "--no-progress", *flags, *cli_overrides(**extra)]


def start(store: Path, out: Path, *flags: str, env: dict | None = None, **extra) -> subprocess.Popen:
    return subprocess.Popen(train_argv(store, out, *flags, **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**ENV, **(env or {})})


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out, err


def newest_logged_step(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [0]
    for line in lines:
        try:
            steps.append(json.loads(line).get("step", 0))
        except ValueError:
            pass  # a line being written right now
    return max(steps)


def wait_for_step(proc: subprocess.Popen, run: Path, step: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while newest_logged_step(run) < step:
        assert proc.poll() is None, f"the run ended before step {step}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no step {step} within {TIMEOUT} s"
        time.sleep(0.02)


def model_of(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(path: Path, reference: Path) -> None:
    a, b = model_of(path), model_of(reference)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{path} differs from {reference} in {key}"


def leftovers(run: Path) -> list[Path]:
    """Temporary files of interrupted writes."""
    return [p for p in run.rglob("*") if p.name.endswith((".tmp", ".link"))]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def sha256_of_files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def reference(shapes_store, tmp_path_factory) -> dict[int, Path]:
    """The uninterrupted run, a checkpoint after every step: {step: checkpoint}."""
    run = tmp_path_factory.mktemp("reference") / "run"
    cfg = build_config("demo", overrides={**OVERRIDES, "train.checkpoint_every": 1, "train.keep_last": 1000})
    assert train(cfg, str(shapes_store), run, progress=False) == 0
    saved = {int(p.name[5:14]): p for p in (run / "checkpoints").glob("step-*.pt")}
    assert sorted(saved) == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    return saved


FINAL = EPOCHS * STEPS_PER_EPOCH


# --------------------------------------------------------------------------------------------- SIGKILL
def test_sigkill_at_many_points_then_resume_ends_bit_identical(shapes_store, reference, tmp_path):
    run = tmp_path / "run"
    every_step = {"train.checkpoint_every": 1}  # frequent saves: timed kills often land inside one
    kills = 0

    # 1. a kill at a timed moment of epoch 1 (mid-step or mid-save, whichever it is)
    proc = start(shapes_store, run, **every_step)
    wait_for_step(proc, run, 3)
    proc.send_signal(signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL
    kills += 1

    # 2.-4. kills inside the checkpoint write: half of the temporary file written; the file complete but not
    # yet renamed; renamed but last.pt not yet updated
    for hook in ("2:write", "1:replace", "3:link"):
        before = CheckpointManager(run).numbered()
        rc, out, err = finish(start(shapes_store, run, "--resume", "auto", env={"ALEXNET_FAULT_KILL_IN_SAVE": hook},
                                    **every_step))
        assert rc == -signal.SIGKILL, (hook, out, err)
        assert "resumed from" in out or not before
        kills += 1
        newest = CheckpointManager(run).numbered()[0]
        load_checkpoint(newest)  # the newest numbered file is always a whole checkpoint
        if hook.endswith("write") or hook.endswith("replace"):
            assert [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")], "the cut-off write"
        if hook.endswith("link"):  # last.pt still names the previous checkpoint: resume looks past it
            assert torch.load(run / "last.pt", weights_only=True)["run"]["global_step"] < int(newest.name[5:14])

    # 5. storage damage: the newest checkpoint is cut in half; resume falls back to the one before and says so
    newest = CheckpointManager(run).numbered()[0]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    proc = start(shapes_store, run, "--resume", "auto", **every_step)
    wait_for_step(proc, run, STEPS_PER_EPOCH + 2)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    rc, out, err = finish(proc)
    assert rc == -signal.SIGKILL
    assert f"{newest} is not a readable alexnet checkpoint" in err and "falling back" in err
    assert not newest.exists() and newest.with_name(newest.name + ".unused").exists()  # set aside, not deleted
    kills += 1

    # 6. one more timed kill late in epoch 2, then run to the end
    proc = start(shapes_store, run, "--resume", "auto", **every_step)
    wait_for_step(proc, run, FINAL - 3)
    proc.send_signal(signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL
    kills += 1
    rc, out, err = finish(start(shapes_store, run, "--resume", "auto", **every_step))
    assert rc == 0, err
    assert "Traceback" not in err

    assert_same_weights(run / "last.pt", reference[FINAL])
    assert load_checkpoint(run / "last.pt")["run"]["global_step"] == FINAL
    assert leftovers(run) == []  # temporary files of killed writes are cleaned up
    assert len(CheckpointManager(run).numbered()) == 2  # train.keep_last
    # each step logged once, though several processes logged some of them before being killed
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == list(range(1, FINAL + 1))
    assert kills == 6


# --------------------------------------------------------------------------------------------- SIGTERM / SIGINT
def test_sigterm_and_sigint_checkpoint_at_a_step_boundary_and_resume_exactly(shapes_store, reference, tmp_path):
    run = tmp_path / "run"
    stops = []
    for sig, status, at, flags in ((signal.SIGTERM, 143, 4, ()), (signal.SIGINT, 130, STEPS_PER_EPOCH + 3,
                                                                   ("--resume", "auto"))):
        proc = start(shapes_store, run, *flags)
        wait_for_step(proc, run, at)
        proc.send_signal(sig)
        rc, out, err = finish(proc)
        assert rc == status, err
        assert "Traceback" not in err
        line = out.strip().splitlines()[-1]
        name = signal.Signals(sig).name
        assert line.startswith(f"{name}: checkpoint saved at step ") and line.endswith("resume with --resume auto")
        step = int(line.split("at step ")[1].split(";")[0])
        ckpt = load_checkpoint(run / "last.pt")
        assert ckpt["run"]["global_step"] == step >= at
        # the checkpoint holds exactly the state after `step` steps, mid-epoch position included
        assert ckpt["run"]["step_in_epoch"] in (step % STEPS_PER_EPOCH, STEPS_PER_EPOCH)
        assert_same_weights(run / "last.pt", reference[step])
        stops.append(step)
    rc, out, err = finish(start(shapes_store, run, "--resume", "auto"))
    assert rc == 0, err
    assert f"resumed from {run / 'checkpoints'}" in out
    assert_same_weights(run / "last.pt", reference[FINAL])
    assert stops[0] < STEPS_PER_EPOCH < stops[1]  # one stop inside each epoch


def test_a_second_process_may_not_write_into_a_running_run(shapes_store, tmp_path, capsys):
    run = tmp_path / "run"
    proc = start(shapes_store, run, **{"train.epochs": 1000})  # runs until killed
    try:
        wait_for_step(proc, run, 2)
        assert cli_main(train_argv(shapes_store, run, "--resume", "auto")[3:]) == 2
        assert error_lines(capsys.readouterr().err) == [
            f"alexnet train: error: {run} is being written by another training process: wait for it to end "
            "or choose another --out"]
    finally:
        proc.kill()
        proc.communicate()
    # the lock dies with its process, even by SIGKILL: the run continues
    assert cli_main(train_argv(shapes_store, run, "--resume", "auto", **{"train.max_steps": 1})[3:]) == 0


# --------------------------------------------------------------------------------------------- NaN / inf
def test_nan_loss_stops_with_one_line_naming_the_step_and_keeps_the_last_good_checkpoint(
        shapes_store, reference, tmp_path):
    run = tmp_path / "run"
    rc, out, err = finish(start(shapes_store, run, env={"ALEXNET_FAULT_NAN_AT_STEP": "7"},
                                **{"train.checkpoint_every": 5}))
    assert rc == 2
    assert len(error_lines(err)) == 1 and "Traceback" not in err
    assert "non-finite at step 7" in err and "last good checkpoint (step 5)" in err
    assert [p.name for p in CheckpointManager(run).numbered()] == ["step-000000005.pt"]
    assert_same_weights(run / "last.pt", reference[5])


def test_diverging_learning_rate_skipped_steps_then_stop(shapes_store, tmp_path, capsys):
    # lr 1e6 really diverges: every step after the first is non-finite, so skipping cannot help
    status = cli_main(["train", "--preset", "demo", "--data", str(shapes_store), "--out", str(tmp_path / "run"),
                       "--no-progress", "--lr", "1e6",
                       *cli_overrides(**{"train.on_nonfinite": "skip", "train.max_nonfinite": 3})])
    err = capsys.readouterr().err
    assert status == 2
    assert error_lines(err) == ["alexnet train: error: 3 non-finite steps in a row up to step 4: lower the "
                                "learning rate; no checkpoint was written"]


def test_skip_mode_skips_one_bad_step_and_counts_it(shapes_store, tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_FAULT_NAN_AT_STEP", "7")
    run = tmp_path / "run"
    cfg = build_config("demo", overrides={**OVERRIDES, "train.epochs": 1, "train.on_nonfinite": "skip"})
    assert train(cfg, str(shapes_store), run, progress=False) == 0
    state = load_checkpoint(run / "last.pt")["run"]
    assert (state["global_step"], state["nonfinite_skipped"], state["nonfinite_in_row"]) == (STEPS_PER_EPOCH, 1, 0)
    assert all(torch.isfinite(w).all() for w in model_of(run / "last.pt").values())


# --------------------------------------------------------------------------------------------- disk full, no permission
def unshare_available() -> bool:
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


def in_private_mounts(script: str, tmp_path: Path) -> None:
    """Run a shell script in a private mount namespace (its mounts vanish with it)."""
    assert shutil.which("unshare") and unshare_available(), "these tests need `unshare -Urm` (util-linux)"
    (tmp_path / "script.sh").write_text("set -u\n" + script)
    done = subprocess.run(["unshare", "-Urm", "sh", str(tmp_path / "script.sh")], capture_output=True, text=True,
                          timeout=3 * TIMEOUT, env=ENV)
    assert done.returncode == 0, done.stderr


def shell_train(folder: Path, name: str, store: Path, out: Path, *flags: str, **extra) -> str:
    """A shell line running `alexnet train`, its exit status and output kept as FOLDER/NAME.rc/.out/.err."""
    argv = " ".join(f"'{a}'" for a in train_argv(store, out, *flags, **extra))
    return f"{argv} > {folder}/{name}.out 2> {folder}/{name}.err; echo $? > {folder}/{name}.rc\n"


def results(tmp_path: Path, name: str) -> tuple[int, str, str]:
    return (int((tmp_path / f"{name}.rc").read_text()), (tmp_path / f"{name}.out").read_text(),
            (tmp_path / f"{name}.err").read_text())


def test_disk_full_keeps_the_previous_checkpoint_and_stops_after_three_failures(shapes_store, reference, tmp_path):
    ckpt = reference[1].stat().st_size
    disk = tmp_path / "disk"
    disk.mkdir()
    # room for one checkpoint and the logs, not for a second checkpoint beside it
    size = (int(1.5 * ckpt) + 96 * 1024) // 4096 * 4096
    in_private_mounts(
        f"mount -t tmpfs -o size={size} tmpfs {disk}\n"
        + shell_train(tmp_path, "full", shapes_store, disk / "run", **{"train.checkpoint_every": 2})
        + f"ls -A {disk}/run/checkpoints > {tmp_path}/listing\n"
        f"cp -a {disk}/run {tmp_path}/copy\n", tmp_path)
    rc, out, err = results(tmp_path, "full")
    assert rc == 2
    lines = error_lines(err)
    assert "Traceback" not in err
    assert lines[-1].startswith("alexnet train: error: 3 checkpoint saves in a row failed (No space left on device)")
    assert lines[-1].endswith("the one of step 2 is kept")
    assert [line.split(" not saved")[0] for line in lines[:-1]] == [
        "alexnet: warning: checkpoint of step 4", "alexnet: warning: checkpoint of step 6"]
    assert (tmp_path / "listing").read_text().split() == ["step-000000002.pt"]  # and no temporary file
    assert_same_weights(tmp_path / "copy" / "last.pt", reference[2])


def test_disk_full_for_a_moment_warns_and_training_goes_on(shapes_store, reference, tmp_path):
    ckpt = reference[1].stat().st_size
    disk = tmp_path / "disk"
    disk.mkdir()
    size = (int(2.5 * ckpt) + 96 * 1024) // 4096 * 4096
    err_file = tmp_path / "moment.err"
    run_it = shell_train(tmp_path, "moment", shapes_store, disk / "run",
                         **{"train.checkpoint_every": 2, "train.keep_last": 1, "train.epochs": 1})
    # a filler file leaves room for one checkpoint only; it goes as soon as the first save has failed
    in_private_mounts(
        f"mount -t tmpfs -o size={size} tmpfs {disk}\n"
        f"head -c {ckpt} /dev/zero > {disk}/filler\n"
        f"( {run_it} ) &\n"
        f"while ! grep -q 'not saved' {err_file} 2>/dev/null; do\n"
        f"  [ -e {tmp_path}/moment.rc ] && break; sleep 0.01\n"
        "done\n"
        f"rm {disk}/filler\n"
        "wait\n"
        f"cp -a {disk}/run {tmp_path}/copy\n", tmp_path)
    rc, out, err = results(tmp_path, "moment")
    assert rc == 0, err
    lines = error_lines(err)
    assert 1 <= len(lines) <= 2 and all("not saved (No space left on device)" in line for line in lines), err
    assert_same_weights(tmp_path / "copy" / "last.pt", reference[STEPS_PER_EPOCH])
    assert leftovers(tmp_path / "copy") == []


def test_read_only_checkpoints_folder_leaves_it_untouched(shapes_store, reference, tmp_path):
    run = tmp_path / "run"
    cfg = build_config("demo", overrides={**OVERRIDES, "train.checkpoint_every": 2, "train.max_steps": 4})
    assert train(cfg, str(shapes_store), run, progress=False) == 0
    ckpts, elsewhere = run / "checkpoints", tmp_path / "elsewhere"
    elsewhere.mkdir()
    before = sha256_of_files(ckpts)
    in_private_mounts(
        f"mount --bind {ckpts} {ckpts} && mount -o remount,bind,ro {ckpts}\n"
        + shell_train(tmp_path, "ro", shapes_store, run, "--resume", "auto", **{"train.checkpoint_every": 2})
        + f"mount --bind {elsewhere} {elsewhere} && mount -o remount,bind,ro {elsewhere}\n"
        + shell_train(tmp_path, "start", shapes_store, elsewhere / "new"), tmp_path)
    rc, out, err = results(tmp_path, "ro")
    assert rc == 2 and "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 3 and all("not saved (Read-only file system)" in line for line in lines[:2])
    assert lines[-1].startswith("alexnet train: error: 3 checkpoint saves in a row failed (Read-only file system)")
    assert lines[-1].endswith("the one of step 4 is kept")
    assert sha256_of_files(ckpts) == before  # the same two files, byte for byte, and nothing else
    assert_same_weights(run / "last.pt", reference[4])
    rc, out, err = results(tmp_path, "start")  # a new run in a read-only folder cannot even start
    assert rc == 2
    assert error_lines(err) == [f"alexnet train: error: cannot write to {elsewhere / 'new'} (Read-only file system): "
                                "choose a writable --out or free some space"]


def test_permission_denied_at_the_write_call_leaves_the_checkpoints_as_they_were(shapes_store, tmp_path,
                                                                                   monkeypatch, capsys):
    # root ignores file modes, so EACCES comes from the documented hook at the write call
    run = tmp_path / "run"
    cfg = build_config("demo", overrides={**OVERRIDES, "train.checkpoint_every": 2, "train.max_steps": 4})
    assert train(cfg, str(shapes_store), run, progress=False) == 0
    before = sha256_of_files(run / "checkpoints")
    capsys.readouterr()
    monkeypatch.setenv("ALEXNET_FAULT_SAVE_ERRNO", "EACCES")
    status = cli_main(train_argv(shapes_store, run, "--resume", "auto", **{"train.checkpoint_every": 2})[3:])
    assert status == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 3
    assert lines[-1].startswith("alexnet train: error: 3 checkpoint saves in a row failed (Permission denied)")
    assert sha256_of_files(run / "checkpoints") == before
    assert leftovers(run) == []


# --------------------------------------------------------------------------------------------- the store
def test_store_truncated_before_the_run_is_refused(shapes_store, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(shapes_store, store)
    images = store / "train" / "images.npy"
    os.truncate(images, images.stat().st_size - 1000)
    assert cli_main(train_argv(store, tmp_path / "run")[3:]) == 2
    err = capsys.readouterr().err
    whole = 128 + 192 * 36 * 36 * 3  # .npy header + N x S x S x 3 bytes
    assert error_lines(err) == [f"alexnet train: error: {images} is truncated or changed ({whole - 1000} bytes, "
                                f"the manifest says {whole}): prepare the store again"]
    assert not (tmp_path / "run").exists()


def test_store_changed_under_a_running_run_stops_it_and_its_resume(shapes_store, tmp_path, capsys):
    store = tmp_path / "store"
    shutil.copytree(shapes_store, store)
    run = tmp_path / "run"
    proc = start(store, run)
    wait_for_step(proc, run, 3)
    with open(store / "train" / "images.npy", "r+b") as f:  # same size, other pixels
        f.seek(-5000, os.SEEK_END)
        inverted = bytes(255 - b for b in f.read(4000))
        f.seek(-5000, os.SEEK_END)
        f.write(inverted)
    assert (store / "train" / "images.npy").stat().st_size == (shapes_store / "train" / "images.npy").stat().st_size
    rc, out, err = finish(proc)
    assert rc == 2  # at the next epoch's check, instead of training on other images
    assert len(error_lines(err)) == 1 and "changed since the store was prepared" in err
    assert cli_main(train_argv(store, run, "--resume", "auto")[3:]) == 2  # and so does its resume
    assert "changed since the store was prepared" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- checkpoint files
def weights_only_state(value: torch.Tensor) -> dict:
    """The smallest dict that is a checkpoint an inference command can read: weights, classes, statistics."""
    return {"config": {}, "model": {"weights": value}, "classes": ["a", "b"], "class_names": ["a", "b"],
            "mean": torch.zeros(2, 2, 3), "pca_eigenvalues": torch.ones(3), "pca_eigenvectors": torch.eye(3)}


def test_newest_valid_falls_back_past_garbage_and_refuses_when_nothing_loads(tmp_path, capsys):
    manager = CheckpointManager(tmp_path / "run", keep_last=3)
    for step in (10, 20, 30):
        manager.save(weights_only_state(torch.full((3,), float(step))), step, is_best=step == 20)
    assert [p.name for p in manager.numbered()] == ["step-000000030.pt", "step-000000020.pt", "step-000000010.pt"]
    assert os.path.samefile(tmp_path / "run" / "last.pt", manager.numbered()[0])
    assert os.path.samefile(tmp_path / "run" / "best.pt", manager.numbered()[1])
    manager.numbered()[0].write_bytes(os.urandom(5000))  # garbage in the newest
    path, ckpt = manager.newest_valid()
    assert path.name == "step-000000020.pt" and torch.equal(ckpt["model"]["weights"], torch.full((3,), 20.0))
    assert "step-000000030.pt is not a readable alexnet checkpoint" in capsys.readouterr().err
    for p in manager.numbered():
        p.write_bytes(b"")
    with pytest.raises(UserError, match="none of the 3 checkpoints"):
        manager.newest_valid()


def test_a_bit_flipped_in_a_saved_tensor_is_caught_by_the_checksum(tmp_path, capsys):
    manager = CheckpointManager(tmp_path / "run", keep_last=3)
    values = torch.arange(1000, dtype=torch.float32)
    for step in (1, 2):
        manager.save(weights_only_state(values + step), step, is_best=False)
    newest = manager.numbered()[0]
    raw = bytearray(newest.read_bytes())
    at = raw.find((values + 2).numpy().tobytes()[400:440])  # torch.save stores tensor bytes as they are
    assert at > 0
    raw[at + 3] ^= 0x10  # one bit of one float
    newest.write_bytes(bytes(raw))
    assert torch.load(newest, weights_only=True)["model"]["weights"][100] != values[100] + 2  # torch loads it as is
    with pytest.raises(UserError, match="does not match the checksum recorded when it was saved"):
        load_checkpoint(newest)
    path, ckpt = manager.newest_valid()  # --resume auto goes back to the intact one
    assert path.name == "step-000000001.pt" and torch.equal(ckpt["model"]["weights"], values + 1)
    assert "step-000000002.pt is damaged" in capsys.readouterr().err


def test_keep_last_prunes_old_saves_but_best_survives_as_a_link(tmp_path):
    manager = CheckpointManager(tmp_path / "run", keep_last=2)
    for step in range(1, 6):
        manager.save(weights_only_state(torch.full((2,), float(step))), step, is_best=step == 2)
    assert [p.name for p in manager.numbered()] == ["step-000000005.pt", "step-000000004.pt"]
    assert torch.equal(load_checkpoint(tmp_path / "run" / "best.pt", "cpu")["model"]["weights"], torch.full((2,), 2.0))
    assert torch.equal(load_checkpoint(tmp_path / "run" / "last.pt", "cpu")["model"]["weights"], torch.full((2,), 5.0))


def test_a_failed_atomic_save_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "ckpt.pt"
    atomic_save({"format": "alexnet-checkpoint/1", "v": torch.ones(2)}, target)
    before = target.read_bytes()

    class Unpicklable:  # torch.save fails part-way through writing the temporary file
        def __reduce__(self):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_save({"format": "alexnet-checkpoint/1", "v": torch.zeros(2), "x": Unpicklable()}, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
