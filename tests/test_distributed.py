"""Data parallelism on torch.distributed: real torchrun processes on localhost, gloo on the CPU.

The expectations are independent of the code under test: one process training the same global batch (the
loader gives each rank its share of the batch and augmentation is a function of the sample index, so two
processes see exactly the samples and crops of one), a count of validation errors made here by hand, and
runs that never stopped. Dropout is 0 in these runs: its masks are drawn per process (seeded per rank),
so with dropout on, one and two processes train different, equally valid, nets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from alexnet.cli import main as cli_main
from alexnet.config import build_config
from alexnet.model import AlexNet
from alexnet.parallel.ddp import JOB_FILE, elastic_resume, mark_elastic_job
from alexnet.train import train

# 192 training images / batch 16 = 12 steps per epoch; 33 validation images: 17 + 16 over two ranks, so the
# ranks even run different numbers of evaluation batches (3 and 2 of 8)
SETTINGS = {"train.epochs": 2, "optim.batch_size": 16, "data.crop": 32, "train.log_every": 4,
            "model.widths": [16, 32, 32, 32, 32], "model.fc": [64, 64], "model.num_classes": 4,
            "optim.lr": 0.02, "model.dropout": 0.0, "train.limit_val": 33, "train.threads": 1,
            "train.precision": "fp32"}  # float32 on every CPU kind: the comparisons below are of summation order
VAL_IMAGES, STEPS = 33, 24
# Float32 sums in another order (gradients averaged over 2 ranks vs summed over one batch) may differ in the
# last bits: each tensor must agree to a thousandth of how far training moved it.
RELATIVE = 1e-3


def settings(**extra) -> dict:
    return {**SETTINGS, **extra}


def cli_args(**extra) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in settings(**extra).items()]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", weights_only=True)["model"]


def epochs(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "epoch"]


def initial_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # what a run of seed 0 starts from
    return AlexNet(build_config("demo", overrides=settings()).model, 32).state_dict()


def assert_same_training(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> float:
    """Every tensor moved in training (so agreement means something) and agrees with `expected`."""
    assert expected.keys() == got.keys()
    initial = initial_weights()
    worst = 0.0
    for key in expected:
        moved = (expected[key] - initial[key]).abs().max().item()
        difference = (expected[key] - got[key]).abs().max().item()
        assert moved > 1e-5, f"{key} did not learn"
        assert difference <= RELATIVE * moved, f"{key}: differs by {difference:.3g}, moved {moved:.3g}"
        worst = max(worst, difference)
    return worst


def launch(*args: str) -> subprocess.Popen:
    """A launcher (alexnet or torchrun) in its own process group, as a scheduler would start it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)


def wait_for_checkpoint(run: Path, proc: subprocess.Popen, after_step: int = 0, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        saved = [int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("step-*.pt")]
        if any(s > after_step for s in saved):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the job ended before a checkpoint past step {after_step}:\n{proc.stdout.read()}")
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("no checkpoint appeared")


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def worker_of_rank(agent_pid: int, rank: int) -> int:
    for pid in children(agent_pid):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no worker of rank {rank} under process {agent_pid}")


@pytest.fixture(scope="module")
def one_process(shapes_store, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("one") / "run"
    assert train(build_config("demo", overrides=settings()), str(shapes_store), run, progress=False) == 0
    return run


def test_two_processes_train_validate_and_log_as_one(shapes_store, one_process, tmp_path):
    # one launch for all of it: the file stays quick, also when xdist splits a module between workers
    run = tmp_path / "run"
    done = run_cli("train", "--nproc", "2", "--preset", "demo", "--data", str(shapes_store), "--out", str(run),
                   "--no-progress", *cli_args())
    assert done.returncode == 0, done.stdout + done.stderr

    # the same weights as one process with the same global batch
    difference = assert_same_training(weights(one_process), weights(run))
    print(f"max |w(1 process) - w(2 processes)| after {STEPS} steps: {difference:.3g}")

    # the epoch's training metrics cover both ranks; rank 0 alone logs, prints and saves
    one, two = epochs(one_process), epochs(run)
    assert [r["epoch"] for r in two] == [0, 1]
    assert done.stdout.count("epoch 1/2") == 1 and done.stdout.count("epoch 2/2") == 1
    for a, b in zip(one, two):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["train_top1_error"] == pytest.approx(a["train_top1_error"])
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "train"] == [4, 8, 12, 16, 20, 24]  # log_every 4, once each
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000000012.pt", "step-000000024.pt"]

    # validation counts every image once; the last one used the final weights, so count its errors here:
    # centre crops of the first 33 images, minus the mean image
    from alexnet.data.store import open_store

    assert [r["val_images"] for r in two] == [VAL_IMAGES, VAL_IMAGES]
    store = open_store(shapes_store)
    val = store.split("val")
    crop, off = 32, (store.size - 32) // 2
    images = torch.from_numpy(val.images[:VAL_IMAGES, off:off + crop, off:off + crop].copy()).float()
    mean = torch.from_numpy(store.mean[off:off + crop, off:off + crop].copy())
    model = AlexNet(build_config("demo", overrides=settings()).model, crop)
    model.load_state_dict(weights(run))
    with torch.no_grad():
        predicted = model.eval()((images - mean).permute(0, 3, 1, 2)).argmax(1)
    errors = int((predicted != torch.from_numpy(val.labels[:VAL_IMAGES])).sum())
    assert two[-1]["val_top1_error"] == pytest.approx(100.0 * errors / VAL_IMAGES)


def test_checkpoints_move_between_process_counts_and_sigterm_stops_all_ranks(shapes_store, one_process, tmp_path):
    run = tmp_path / "run"
    cfg = build_config("demo", overrides=settings(**{"train.max_steps": 5}))
    assert train(cfg, str(shapes_store), run, progress=False) == 0  # 1 process: steps 0-4

    # 2 processes resume it, checkpointing every 2 steps, and get SIGTERM (the launcher's whole group)
    job = launch("-m", "alexnet", "train", "--nproc", "2", "--preset", "demo", "--data", str(shapes_store),
                 "--out", str(run), "--resume", "auto", "--no-progress", *cli_args(**{"train.checkpoint_every": 2}))
    wait_for_checkpoint(run, job, after_step=5)
    os.killpg(job.pid, signal.SIGTERM)
    out, _ = job.communicate(timeout=120)
    assert job.returncode == 143, out
    assert "resumed from" in out and "(epoch 1, step 5)" in out
    stopped = [line for line in out.splitlines() if line.startswith("SIGTERM: checkpoint saved at step")]
    assert len(stopped) == 1, out  # rank 0 speaks for both
    stop_step = int(stopped[0].split("step ")[1].split(";")[0])
    assert 6 < stop_step < STEPS
    assert (run / "checkpoints" / f"step-{stop_step:09d}.pt").is_file()

    # 1 process finishes it: the same weights as never stopping, never changing the process count
    assert train(build_config("demo", overrides=settings()), str(shapes_store), run, "auto", progress=False) == 0
    difference = assert_same_training(weights(one_process), weights(run))
    print(f"1 -> 2 -> 1 processes, stopped at step {stop_step}: max |dw| = {difference:.3g}")
    assert [r["epoch"] for r in epochs(run)] == [0, 1]


def test_a_killed_rank_restarts_the_job_which_resumes_and_completes(shapes_store, one_process, tmp_path):
    run = tmp_path / "run"
    job = launch("-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--max-restarts=1",
                 "-m", "alexnet", "train", "--preset", "demo", "--data", str(shapes_store), "--out", str(run),
                 "--no-progress", *cli_args(**{"train.checkpoint_every": 2}))
    wait_for_checkpoint(run, job)
    os.kill(worker_of_rank(job.pid, 1), signal.SIGKILL)
    out, _ = job.communicate(timeout=240)
    assert job.returncode == 0, out
    resumed = [line for line in out.splitlines() if line.startswith("resumed from")]
    assert len(resumed) == 1, out
    difference = assert_same_training(weights(one_process), weights(run))
    print(f"2 processes, rank 1 killed, restarted: max |dw| = {difference:.3g}")
    assert [r["epoch"] for r in epochs(run)] == [0, 1]


def test_a_restarted_worker_resumes_only_the_run_its_job_started(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / JOB_FILE).write_text("job-a\n")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert elastic_resume(run) is None  # the first attempt decides for itself
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert elastic_resume(run) == "auto"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")  # a job refused this directory: its restart is too
    assert elastic_resume(run) is None


def test_the_job_mark_is_never_rewritten_in_place_while_other_ranks_read_it(tmp_path, monkeypatch):
    """A restarted rank 0 leaves its own job's mark as it is; a new job replaces the file whole, so a rank
    that opened the old mark still reads all of it (a file truncated in place would show it the new text,
    or nothing)."""
    run = tmp_path / "run"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    mark_elastic_job(run)
    first = (run / JOB_FILE).stat()
    mark_elastic_job(run)  # the same job restarted
    again = (run / JOB_FILE).stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")
    with open(run / JOB_FILE) as reader:
        mark_elastic_job(run)
        assert reader.read() == "job-a\n"
    assert (run / JOB_FILE).read_text() == "job-b\n" and sorted(p.name for p in run.iterdir()) == [JOB_FILE]


def test_launch_refuses_a_batch_that_does_not_split(shapes_store, tmp_path, capsys):
    status = cli_main(["train", "--nproc", "2", "--preset", "demo", "--data", str(shapes_store),
                       "--out", str(tmp_path / "run"), "-b", "15"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "does not split evenly over 2 processes" in err
    assert not (tmp_path / "run").exists()


def collectives_per_rank(shapes_store: Path, tmp_path: Path, log_every: int) -> list[int]:
    """all_reduce calls of each of two ranks over one whole run (2 epochs of 12 steps)."""
    counts = tmp_path / f"counts-{log_every}"
    counts.mkdir()
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", COUNT_DIR=str(counts))
    helper = Path(__file__).with_name("count_collectives.py")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(helper), "train", "--preset", "demo", "--data", str(shapes_store), "--out",
                           str(tmp_path / f"run-{log_every}"), "--no-progress",
                           *cli_args(**{"train.log_every": log_every})],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads((counts / f"rank-{r}.json").read_text()) for r in (0, 1)]


def test_ranks_meet_only_at_log_steps_and_epoch_ends(shapes_store, tmp_path):
    # The stop request (a signal on any rank) is agreed on with one all_reduce at each log step, not at every
    # step: over 24 steps, log_every 4 makes 24/4 = 6 such meetings and log_every 12 makes 24/12 = 2. Everything
    # else (epoch sums, validation counts, the agreement at each epoch end) is the same in both runs.
    every_4 = collectives_per_rank(shapes_store, tmp_path, 4)
    every_12 = collectives_per_rank(shapes_store, tmp_path, 12)
    assert every_4[0] == every_4[1] and every_12[0] == every_12[1]  # a collective every rank makes
    assert every_4[0] - every_12[0] == STEPS // 4 - STEPS // 12
    # and in all far fewer than one per step (a per-step agreement alone would be 24)
    assert every_4[0] < STEPS
