"""benchmarks/gpu_session.sh, the one prepared GPU session, run end to end in its dry mode on the CPU: every part
runs (training steps of every preset, the long runs capped, the GPU benchmarks' arguments) and leaves its log,
so that device minutes go to measuring and not to debugging the script."""

import os
import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("paper", "one-tower", "photos", "cifar", "cifar-ingredients", "figure1", "cifar-convnet", "demo")


def test_the_gpu_session_runs_every_part_in_its_dry_mode(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), "--dry"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200,
                          env=dict(os.environ, OUT=str(out), WORK=str(work), OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    summary = dict(line.split(": ", 1) for line in (out / "summary.txt").read_text().splitlines() if ": exit" in line)
    expected = ["tests", *[f"steps-{p}" for p in PRESETS], "lrn", "pipe", "lrn-cifar-lrn", "lrn-cifar-no-lrn",
                "ablations", "photos"]
    assert sorted(summary) == sorted(expected)
    failed = {name: result for name, result in summary.items() if not result.startswith("exit 0 ")}
    assert not failed, {name: (work / f"{name}.log").read_text()[-1500:] for name in failed}
    for preset in PRESETS:  # each short run trained and saved
        assert (work / "runs" / preset / "last.pt").is_file(), preset
    # what comes back: the summary and one archive of the logs and results, without checkpoints or images
    assert sorted(p.name for p in out.iterdir()) == ["session.tgz", "summary.txt"]
    with tarfile.open(out / "session.tgz") as tar:
        names = set(tar.getnames())
    assert "./machine.json" in names and "./long/photos/config.yaml" in names
    assert "./runs/paper/config.yaml" in names and not any(n.endswith(".pt") for n in names)
