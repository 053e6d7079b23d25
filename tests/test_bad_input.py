"""Bad input on every command, through the real command line: one line, exit status 2, nothing changed.

Each case runs `python -m alexnet ...` in a fresh process and must end with exit status 2, exactly one line
on stderr naming the problem, no traceback, and every file that existed before (a store, a finished run,
checkpoints, images) byte for byte as it was. A crafted checkpoint whose pickle would run a shell command
(creating a file) is refused by every command that reads checkpoints, and the file never appears.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexnet.config import build_config
from alexnet.prepare.synthetic import write_image_folder
from alexnet.prepare.writer import prepare
from alexnet.train import train

SMALL = {"optim.batch_size": 16, "data.crop": 32, "model.widths": [16, 32, 32, 32, 32], "model.fc": [64, 64],
         "train.max_steps": 2, "train.threads": 1}
SMALL_ARGS = "optim.batch_size=8 data.crop=32 model.widths=[16,32,32,32,32] model.fc=[64,64]"


class Payload:
    """Unpickling this would run `touch MARKER`: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def world(shapes_store, shapes_folder, tmp_path_factory) -> dict[str, str]:
    """Things a user points commands at, good and bad; every path a case may name."""
    w = tmp_path_factory.mktemp("world")
    run = w / "run"
    assert train(build_config("demo", overrides=SMALL), str(shapes_store), run, progress=False) == 0
    fig1 = w / "figure1-run"
    assert train(build_config("figure1", overrides={"optim.batch_size": 16, "train.max_steps": 1,
                                                    "train.threads": 1}), str(shapes_store), fig1,
                 progress=False) == 0
    three = write_image_folder(w / "three-classes", train_per_class=8, val_per_class=4, size=40, seed=1,
                               classes=("disc", "square", "cross"))
    prepare(three, w / "store3", size=36, workers=1, progress=False)
    marker = w.parent / f"{w.name}-PAYLOAD-RAN"
    torch.save({"format": "alexnet-checkpoint/1", "model": Payload(marker)}, w / "evil.pt")
    (w / "not-an-image.jpg").write_text("this is text, not a JPEG\n")
    (w / "plain.txt").write_text("a file where a folder is expected\n")
    (w / "bad.yaml").write_text("lr: [unclosed\n")
    (w / "garbage.pt").write_bytes(bytes(range(256)) * 12)
    (w / "not-a-demo").mkdir()
    (w / "not-a-demo" / "keep.txt").write_text("someone's file\n")
    image = sorted((shapes_folder / "val" / "disc").iterdir())[0]
    return {"w": str(w), "store": str(shapes_store), "images": str(shapes_folder), "ckpt": str(run / "last.pt"),
            "run": str(run), "fig1": str(fig1 / "last.pt"), "store3": str(w / "store3"),
            "train3": str(three / "train"), "img": str(image), "marker": str(marker)}


def snapshot(*folders: str) -> dict[str, str]:
    """Every file under the folders: path -> sha256 of its bytes (and so its size)."""
    found = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                found[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


T = "train --preset demo --data {store} --out new"
# (command line, words the one-line message must contain). Each of these runs as its own `python -m alexnet`.
CLI_CASES = [
    # train: types, ranges, paths, keys, checkpoints
    (f"{T} --epochs abc", "argument --epochs: invalid int value: 'abc'"),
    (f"{T} --epochs 0", "train.epochs must be positive"),
    (f"{T} --lr -0.1", "optim.lr must be positive"),
    (f"{T} --batch-size 0", "optim.batch_size must be positive"),
    (f"{T} lrn=maybe", "config key 'model.lrn' takes a bool, got 'maybe'"),
    (f"{T} no.such.key=1", "unknown config key 'no.such.key'"),
    (f"{T} --config {{w}}/bad.yaml", "is not valid YAML at line 2"),
    ("train --data /no/such/data --out new", "data '/no/such/data' does not exist"),
    ("train --preset demo --data {store} --out {run}", "already holds a run: continue it with --resume auto"),
    ("train --preset demo --data {store} --out {w}/plain.txt", "is a file: choose a directory"),
    (f"{T} --resume {{w}}/evil.pt", "asks to run Python code (posix.system)"),
    (f"{T} --resume {{fig1}}", "the checkpoint is of preset 'figure1', this run is 'demo'"),
    (f"train --preset demo --data {{store3}} --out new --resume {{ckpt}} {SMALL_ARGS}",
     "the checkpoint was trained on 4 classes, the data has 3 and they differ"),
    # eval
    ("eval missing.pt --data {store}", "checkpoint missing.pt does not exist"),
    ("eval {w}/evil.pt --data {store}", "asks to run Python code (posix.system)"),
    ("eval {ckpt} --data {store3}", "the data's 3 classes are not the 4 classes the checkpoint was trained on"),
    ("eval {ckpt} --data {store} --batch-size -1", "--batch-size must be positive"),
    # summary, config, demo, prepare
    ("summary --preset nope", "unknown preset 'nope'"),
    ("config --preset cifar lr=-1", "optim.lr must be positive"),
    ("demo --out {w}/not-a-demo", "exists and is not a demo directory"),
    ("prepare /no/such/images --out s", "/no/such/images does not exist"),
    ("prepare {images} --out {store}", "already holds a store; pass --overwrite"),
    ("prepare {images} --out s --size 0", "--size must be between 1 and 4096, not 0"),
    # predict, retrieve, kernels, plot, export, import-torchvision, reproduce
    ("predict {ckpt} {w}/not-an-image.jpg", "not-an-image.jpg is not a usable image"),
    ("predict {w}/evil.pt {img}", "asks to run Python code (posix.system)"),
    ("retrieve {ckpt} --index {store} --query store:99999", "--query store:99999"),
    ("kernels {ckpt} -o /no/such/folder/k.png", "-o /no/such/folder/k.png"),
    ("plot /no/such/run", "is not a run directory"),
    ("export {ckpt} --format safetensors -o {w}/plain.txt", "already exists: choose another -o or pass --overwrite"),
    ("import-torchvision {ckpt} -o x.pt", "does not hold a state_dict"),
    ("reproduce ablations --data {store} --seeds 0", "--seeds and --epochs must be positive"),
    # the command itself
    ("", "the following arguments are required: COMMAND"),
    ("no-such-command", "argument COMMAND: invalid choice: 'no-such-command'"),
]
# More of the same, run through alexnet.cli.main one after another in a single process (torch is imported
# once instead of once per case): same checks, the files compared once after all of them.
BATCH_CASES = [
    (f"{T} --lr inf", "config key 'optim.lr' takes a finite number, got inf"),
    (f"{T} optim.batch_size=1000", "fewer than one batch of 1000"),
    (f"{T} data.crop=64", "data.crop must not exceed data.image_size"),
    (f"{T} model.dropout=1.5", "model.dropout must be in [0, 1)"),
    (f"{T} lr=fast", "config key 'optim.lr' takes a float, got 'fast'"),
    (f"{T} novalue", "expected key=value, got 'novalue'"),
    (f"{T} --preset nope", "unknown preset 'nope'"),
    (f"{T} --config missing.yaml", "config file missing.yaml does not exist"),
    (f"{T} --nproc 0", "--nproc must be at least 1"),
    (f"{T} --device tpu", "unknown device 'tpu'"),
    (f"{T} --towers cpu", "give two devices separated by a comma"),
    ("train --data {w}/plain.txt --out new", "is not a folder, a tar archive or a CIFAR-10 archive"),
    (f"{T} --resume missing.pt", "--resume missing.pt: no such checkpoint"),
    (f"{T} --resume {{w}}/garbage.pt", "is not a readable alexnet checkpoint"),
    ("eval {run} --data {store}", "is a directory: give a .pt file"),
    ("eval {w}/plain.txt --data {store}", "is not a readable alexnet checkpoint"),
    ("eval {ckpt} --data {store} --split test", "has no 'test' split"),
    ("eval {ckpt} --data /no/such/store", "data '/no/such/store' does not exist"),
    ("summary model.widths=[1,2]", "model.kernels has 5 entries but model.widths has 2"),
    ("summary model.towers=3", "model.towers must be 1 or 2"),
    ("demo --epochs 0", "must be positive"),
    ("demo --out {w}/plain.txt", "is a file: choose a folder"),
    ("prepare {w}/plain.txt --out s", "is not a folder, a tar archive or a CIFAR-10 archive"),
    ("prepare {images} --out s --size -5", "--size must be between 1 and 4096, not -5"),
    ("prepare {images} --out s --size big", "argument --size: invalid int value: 'big'"),
    ("prepare {images} --out s --workers 0", "--workers must be at least 1"),
    ("prepare {images} --out {w}/plain.txt", "is a file; give a folder for the store"),
    ("predict {ckpt} missing.jpg", "missing.jpg does not exist"),
    ("predict {ckpt} {img} --top 0", "--top must be at least 1"),
    ("retrieve {ckpt} --index {store} --query {img} -k 0", "-k and --batch-size must be positive"),
    ("retrieve {ckpt} --index /no/such/store --query {img}", "data '/no/such/store' does not exist"),
    ("retrieve {ckpt} --index {store} --query {w}/not-an-image.jpg", "is not a usable image"),
    ("kernels missing.pt", "checkpoint missing.pt does not exist"),
    ("plot {images}", "has no metrics.jsonl"),
    ("export {ckpt} --format pdf", "argument --format: invalid choice: 'pdf'"),
    ("export {w}/evil.pt --format onnx -o e.onnx", "asks to run Python code (posix.system)"),
    ("import-torchvision missing.pth -o x.pt", "missing.pth does not exist"),
    ("import-torchvision {w}/plain.txt -o x.pt", "is not a readable state_dict file"),
    ("reproduce figure1 --data /no/such/data", "data '/no/such/data' does not exist"),
    ("reproduce figure1 --data {store} --max-epochs 0", "must be positive"),
    ("reproduce figure1 --data {store} --sweep abc", "--sweep abc: give learning rates separated by commas"),
]


def assert_one_line_error(status: int, out: str, err: str, expected: str) -> None:
    assert status == 2, (out, err)
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("alexnet") and ": error: " in lines[0]
    assert expected in lines[0]


def watched(world: dict[str, str]) -> dict[str, str]:
    return snapshot(world["w"], world["store"], world["images"])


@pytest.mark.parametrize(("line", "expected"), CLI_CASES, ids=[c[0][:60] for c in CLI_CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(world, line, expected, tmp_path):
    argv = [a.format(**world) for a in line.split()]
    before = watched(world)
    done = subprocess.run([sys.executable, "-m", "alexnet", *argv], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert_one_line_error(done.returncode, done.stdout, done.stderr, expected)
    assert watched(world) == before
    assert not Path(world["marker"]).exists()  # the pickled payload never ran


BATCH_RUNNER = """
import contextlib, io, json, sys, traceback
from alexnet.cli import main
results = []
for argv in json.load(open(sys.argv[1])):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse
            status = exc.code
        except BaseException:
            status, err = -1, io.StringIO(traceback.format_exc())
    results.append([status, out.getvalue(), err.getvalue()])
json.dump(results, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def batch_results(world, tmp_path_factory) -> dict[str, tuple[int, str, str]]:
    folder = tmp_path_factory.mktemp("batch")
    before = watched(world)
    (folder / "runner.py").write_text(BATCH_RUNNER)
    (folder / "cases.json").write_text(json.dumps([[a.format(**world) for a in line.split()]
                                                   for line, _ in BATCH_CASES]))
    subprocess.run([sys.executable, "runner.py", "cases.json", "results.json"], cwd=folder, check=True,
                   timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert watched(world) == before
    assert not Path(world["marker"]).exists()
    results = json.loads((folder / "results.json").read_text())
    return {line: tuple(r) for (line, _), r in zip(BATCH_CASES, results)}


@pytest.mark.parametrize(("line", "expected"), BATCH_CASES, ids=[c[0][:60] for c in BATCH_CASES])
def test_more_bad_input_in_one_process(batch_results, line, expected):
    assert_one_line_error(*batch_results[line], expected)


def test_the_table_covers_every_command():
    import pkgutil

    import alexnet.commands

    commands = {m.name.replace("_", "-") for m in pkgutil.iter_modules(alexnet.commands.__path__)}
    tried = {line.split()[0] for line, _ in CLI_CASES if line}
    assert commands <= tried, f"commands without a bad-input case on the real command line: {commands - tried}"
    assert len(CLI_CASES) >= 30 and len(CLI_CASES) + len(BATCH_CASES) >= 70


def test_the_payload_is_real_when_loaded_unsafely(tmp_path):
    # the control for the refusals above: the same pickle, loaded the unsafe way, does run its command
    marker = tmp_path / "ran"
    torch.save({"format": "alexnet-checkpoint/1", "model": Payload(marker)}, tmp_path / "evil.pt")
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(tmp_path / 'evil.pt')!r}, "
                    "weights_only=False)"], check=True, timeout=120)
    assert marker.exists()
