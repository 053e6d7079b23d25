"""Damaged and hostile inputs, generated here, on every surface that reads outside data.

Each case is a file or folder built on the fly (an archive cut short, a manifest edited, a checkpoint with the
right marker and the wrong contents, a config of nested aliases, an output path that is an input...) and the
command a user would run on it. All cases run through the console entry point in one process (torch is
imported once; `alexnet.cli.main` per case, each with its own environment), under a timeout, and each must
end with exit status 2, one line on stderr naming the problem, no traceback, and every input file unchanged
(a checksum before and after). Inputs whose right outcome is a success with the bad part skipped (a FIFO or a
link to /dev/zero in an image folder) are checked for that instead.

The first tests are the cases that went wrong silently before these checks existed: a truncated tar read as a
complete smaller one, training resumed on a store of other classes, a CIFAR-10 label of -1 read as class 9, and
a figure written over the image it was made from.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from datagen import add_bytes, cifar_batches, encode, make_cifar_folder, pattern
from test_bad_input import BATCH_RUNNER, assert_one_line_error, snapshot

from alexnet.config import build_config
from alexnet.prepare.synthetic import write_image_folder
from alexnet.prepare.writer import prepare
from alexnet.train import train

SMALL = {"optim.batch_size": 16, "data.crop": 32, "model.widths": [16, 32, 32, 32, 32], "model.fc": [64, 64],
         "train.max_steps": 2, "train.threads": 1}


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alexnet", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))


# ------------------------------------------------------------------------------------------- the four cases


def class_folder_tar(path: Path, classes: tuple[str, ...], per_class: int) -> Path:
    with tarfile.open(path, "w") as tar:
        for c, name in enumerate(classes):
            for i in range(per_class):
                add_bytes(tar, f"{name}/{name}_{i}.png", encode(pattern(24, 24, 10 * c + i)))
    return path


def member_offsets(path: Path) -> list[tuple[str, int, int]]:
    """(name, header offset, data end) of every member, from tarfile: where a cut lands."""
    with tarfile.open(path) as tar:
        return [(m.name, m.offset, m.offset_data + m.size) for m in tar]


@pytest.mark.parametrize("where", ["inside a header", "inside the data", "at a member boundary"])
def test_a_truncated_tar_is_refused_naming_the_last_complete_member(tmp_path, where):
    full = class_folder_tar(tmp_path / "full.tar", ("a", "b", "c"), 3)
    members = member_offsets(full)
    # cut within the 5th member (class b): the classes after it would silently vanish
    name, header, data_end = members[4]
    cut = {"inside a header": header + 200, "inside the data": data_end - 10, "at a member boundary": header}[where]
    cut_tar = tmp_path / "cut.tar"
    cut_tar.write_bytes(full.read_bytes()[:cut])
    if where != "inside the data":  # what makes it dangerous: tarfile itself reads it as a complete archive
        assert [m.name for m in tarfile.open(cut_tar)] == [m[0] for m in members[:4]]
    proc = cli("prepare", str(cut_tar), "--out", str(tmp_path / "store"))
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "truncated" in line and len(line.splitlines()) == 1
    assert members[3][0] in line  # the last member that is whole
    assert not (tmp_path / "store").exists()
    # the whole archive prepares: 3 classes, 9 images
    assert cli("prepare", str(full), "--out", str(tmp_path / "ok")).returncode == 0
    manifest = json.loads((tmp_path / "ok" / "manifest.json").read_text())
    assert manifest["classes"] == ["a", "b", "c"] and manifest["splits"]["train"]["count"] == 9


def test_resume_on_a_store_of_other_classes_is_refused(tmp_path):
    four = write_image_folder(tmp_path / "four", train_per_class=8, val_per_class=2, size=40, seed=0,
                              classes=("disc", "square", "h-stripes", "cross"))
    other = write_image_folder(tmp_path / "other", train_per_class=8, val_per_class=2, size=40, seed=0,
                               classes=("disc", "ring", "h-stripes", "cross"))  # same count, one differs
    prepare(four, tmp_path / "s4", size=36, workers=1, progress=False)
    prepare(other, tmp_path / "s-other", size=36, workers=1, progress=False)
    run = tmp_path / "run"
    assert train(build_config("demo", overrides=SMALL), str(tmp_path / "s4"), run, progress=False) == 0
    before = snapshot(str(run))
    args = ["optim.batch_size=16", "data.crop=32", "model.widths=[16,32,32,32,32]", "model.fc=[64,64]",
            "train.max_steps=4", "train.threads=1"]
    proc = cli("train", "--preset", "demo", "--data", str(tmp_path / "s-other"), "--out", str(run), "--resume",
               "auto", *args)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "trained on 4 classes, the data has 4 and they differ" in line
    assert "class 2 is 'h-stripes' in the checkpoint but 'disc' in the data" not in line  # sorted: see below
    # sorted class ids: cross, disc, h-stripes, square against cross, disc, h-stripes, ring: index 3 differs
    assert "class 3 is 'square' in the checkpoint but 'ring' in the data" in line
    assert snapshot(str(run)) == before
    # the run's own store resumes
    ok = cli("train", "--preset", "demo", "--data", str(tmp_path / "s4"), "--out", str(run), "--resume", "auto",
             *args)
    assert ok.returncode == 0, ok.stderr


def test_a_negative_cifar_label_is_refused_not_read_as_class_9(tmp_path):
    batches = cifar_batches(6)
    batches["data_batch_3"]["labels"][2] = -1
    make_cifar_folder(tmp_path / "cifar-10-batches-py", batches)
    proc = cli("prepare", str(tmp_path / "cifar-10-batches-py"), "--out", str(tmp_path / "store"))
    assert proc.returncode == 2 and "data_batch_3 has the label -1" in proc.stderr, proc.stderr
    assert not (tmp_path / "store").exists()
    batches["data_batch_3"]["labels"][2] = 9  # the same batches with the label in range prepare
    make_cifar_folder(tmp_path / "good" / "cifar-10-batches-py", batches)
    good = cli("prepare", str(tmp_path / "good" / "cifar-10-batches-py"), "--out", str(tmp_path / "store"))
    assert good.returncode == 0, good.stderr


def test_a_panel_never_replaces_a_file_and_never_its_own_input(shapes_store, shapes_folder, tmp_path):
    run = tmp_path / "run"
    assert train(build_config("demo", overrides=SMALL), str(shapes_store), run, progress=False) == 0
    image = tmp_path / "photo.png"
    image.write_bytes((sorted((shapes_folder / "val" / "disc").iterdir())[0]).read_bytes())
    before = image.read_bytes()
    ckpt = str(run / "last.pt")
    same = cli("predict", ckpt, str(image), "--panel", str(image), "--overwrite")
    assert same.returncode == 2 and "is one of this command's inputs" in same.stderr
    existing = tmp_path / "panel.png"
    existing.write_bytes(b"someone's figure")
    kept = cli("predict", ckpt, str(image), "--panel", str(existing))
    assert kept.returncode == 2 and "already exists: choose another --panel or pass --overwrite" in kept.stderr
    assert image.read_bytes() == before and existing.read_bytes() == b"someone's figure"
    replaced = cli("predict", ckpt, str(image), "--panel", str(existing), "--overwrite")
    assert replaced.returncode == 0 and existing.read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------------- the generated suite


def _edit_json(path: Path, change) -> None:  # noqa: ANN001
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _store_copy(src: Path, dst: Path, change=None) -> str:  # noqa: ANN001
    import shutil

    shutil.copytree(src, dst)
    if change is not None:
        change(dst)
    return str(dst)


def _checkpoint_copy(src: Path, dst: Path, change, resign: bool) -> str:  # noqa: ANN001
    """A copy of a checkpoint with `change` made; `resign` records the checksum of the changed content, as a
    crafted file would (so that the checks behind the checksum are reached), else the old checksum stays (a file
    damaged on disk)."""
    from alexnet.checkpoint import with_checksum

    ckpt = torch.load(src, weights_only=True)
    change(ckpt)
    torch.save(with_checksum(ckpt) if resign else ckpt, dst)
    return str(dst)


@pytest.fixture(scope="module")
def hostile(shapes_store, shapes_folder, tmp_path_factory):
    """Build every hostile input and the command line for each: (argv, env, words the message must hold)."""
    w = tmp_path_factory.mktemp("hostile")
    run = w / "run"
    assert train(build_config("demo", overrides=SMALL), str(shapes_store), run, progress=False) == 0
    ckpt = run / "last.pt"
    store = Path(shapes_store)
    image = sorted((shapes_folder / "val" / "disc").iterdir())[0]
    cases: list[tuple[list[str], dict, str]] = []

    def case(argv: list[str], expected: str, env: dict | None = None) -> None:
        cases.append(([str(a) for a in argv], env or {}, expected))

    # --- archives: truncated, garbage, compressed garbage
    full = class_folder_tar(w / "full.tar", ("a", "b"), 2)
    raw = full.read_bytes()
    for i, (_name, header, end) in enumerate(member_offsets(full)[1:], start=1):
        for cut, label in ((header + 100, "header"), (end - 1, "data")):
            p = w / f"cut-{i}-{label}.tar"
            p.write_bytes(raw[:cut])
            case(["prepare", p, "--out", w / f"o-cut-{i}-{label}"], "truncated")
    (w / "fake.tar.gz").write_bytes(b"\x1f\x8b" + os.urandom(300))
    case(["prepare", w / "fake.tar.gz", "--out", w / "o-gz"], "compressed")

    # --- CIFAR-10 batches: labels, names, data
    def cifar(tag: str, change, expected: str) -> None:  # noqa: ANN001
        batches = copy.deepcopy(base_batches)
        change(batches)
        folder = w / f"cifar-{tag}" / "cifar-10-batches-py"
        make_cifar_folder(folder, batches)
        case(["prepare", folder, "--out", w / f"o-cifar-{tag}"], expected)

    base_batches = cifar_batches(4)
    cifar("neg", lambda b: b["data_batch_1"]["labels"].__setitem__(0, -1), "has the label -1")
    cifar("float", lambda b: b["data_batch_2"]["labels"].__setitem__(1, 3.7), "has the label 3.7")
    cifar("bool", lambda b: b["test_batch"]["labels"].__setitem__(0, True), "has the label True")
    cifar("big", lambda b: b["data_batch_4"]["labels"].__setitem__(3, 10), "has the label 10 but")
    cifar("dup", lambda b: b["batches.meta"]["label_names"].__setitem__(1, "airplane"),
          "names the class 'airplane' twice")
    cifar("empty", lambda b: b["batches.meta"]["label_names"].__setitem__(2, ""), "has the class name ''")
    cifar("slash", lambda b: b["batches.meta"]["label_names"].__setitem__(2, "../x"), "has the class name '../x'")
    cifar("nonames", lambda b: b["batches.meta"].__setitem__("label_names", "airplane"), "no usable label_names")
    cifar("shape", lambda b: b["data_batch_5"].__setitem__("data", np.zeros((4, 100), np.uint8)), "not a CIFAR-10")
    cifar("dtype", lambda b: b["data_batch_5"].__setitem__("data", np.zeros((4, 3072), np.float64)), "not a CIFAR-10")
    cifar("count", lambda b: b["data_batch_5"]["labels"].append(1), "4 images but 5 labels")
    evil = w / "cifar-evil" / "cifar-10-batches-py"
    make_cifar_folder(evil, base_batches)
    (evil / "data_batch_2").write_bytes(pickle.dumps({"data": os.system}, protocol=2))
    case(["prepare", evil, "--out", w / "o-evil"], "unexpected object")

    # --- stores: manifest fields, split names, arrays
    def store_case(tag: str, change, expected: str, command: str = "eval") -> None:  # noqa: ANN001
        path = _store_copy(store, w / f"store-{tag}", change)
        if command == "eval":
            case(["eval", ckpt, "--data", path], expected)
        elif command == "retrieve":
            case(["retrieve", ckpt, "--index", path, "--query", "store:0", "--index-cache", w / f"idx-{tag}"],
                 expected)
        else:
            case(["train", "--preset", "demo", "--data", path, "--out", w / f"r-{tag}", "train.max_steps=1"],
                 expected)

    def manifest(change):  # noqa: ANN001, ANN202
        return lambda d: _edit_json(d / "manifest.json", change)

    store_case("traversal", manifest(lambda m: m["splits"].__setitem__("../../etc", m["splits"].pop("val"))),
               "named by plain folder names")
    store_case("size-str", manifest(lambda m: m.__setitem__("size", "36")), "field 'size'")
    store_case("size-neg", manifest(lambda m: m.__setitem__("size", -1)), "field 'size'", "retrieve")
    store_case("classes-dup", manifest(lambda m: m["classes"].__setitem__(1, m["classes"][0])), "field 'classes'")
    store_case("classes-type", manifest(lambda m: m.__setitem__("classes", "cross")), "field 'classes'", "train")
    store_case("names-short", manifest(lambda m: m["class_names"].pop()), "field 'class_names'")
    store_case("pca-shape", manifest(lambda m: m["pca"].__setitem__("eigenvalues", [1, 2])), "field 'pca'")
    store_case("pca-nan", manifest(lambda m: m["pca"]["eigenvectors"][0].__setitem__(0, float("nan"))),
               "field 'pca'", "train")
    store_case("count-type", manifest(lambda m: m["splits"]["train"].__setitem__("count", "many")),
               "field 'splits.train'")
    store_case("splits-list", manifest(lambda m: m.__setitem__("splits", ["train"])), "field 'splits'")
    store_case("no-classes", manifest(lambda m: m.pop("classes")), "lacks 'classes'")
    store_case("manifest-garbage", lambda d: (d / "manifest.json").write_bytes(os.urandom(64)), "is unreadable")
    store_case("labels-range", lambda d: np.save(d / "val" / "labels.npy",
                                                 np.load(d / "val" / "labels.npy") + 10), "holds the label")
    store_case("labels-neg", lambda d: np.save(d / "train" / "labels.npy",
                                               -np.load(d / "train" / "labels.npy") - 1), "holds the label", "train")
    store_case("labels-float", lambda d: np.save(d / "val" / "labels.npy",
                                                 np.load(d / "val" / "labels.npy").astype(np.float64)),
               "labels, not whole class indices")
    store_case("images-cut", lambda d: os.truncate(d / "val" / "images.npy", 1000), "truncated or changed",
               "retrieve")
    store_case("mean-nan", lambda d: np.save(d / "mean.npy", np.full((36, 36, 3), np.nan, np.float32)),
               "not finite")
    store_case("changed", lambda d: (d / "val" / "images.npy").write_bytes(
        (d / "val" / "images.npy").read_bytes()[:-1] + b"\x07"), "checksum mismatch")

    # --- checkpoints with the marker and the wrong contents
    def ckpt_case(tag: str, change, expected: str, commands=("eval", "predict", "export", "resume"),  # noqa: ANN001
                  resign: bool = True) -> None:
        path = _checkpoint_copy(ckpt, w / f"ckpt-{tag}.pt", change, resign)
        for command in commands:
            if command == "eval":
                case(["eval", path, "--data", store], expected)
            elif command == "predict":
                case(["predict", path, image], expected)
            elif command == "export":
                case(["export", path, "--format", "safetensors", "-o", w / f"x-{tag}.safetensors"], expected)
            else:
                case(["train", "--preset", "demo", "--data", store, "--out", w / f"r-ck-{tag}", "--resume", path,
                      *[f"{k}={json.dumps(v)}" for k, v in SMALL.items()]], expected)

    ckpt_case("no-classes", lambda c: c.pop("classes"), "'classes' is missing")
    ckpt_case("names-short", lambda c: c["class_names"].pop(), "'class_names' has 3 entries for 4 classes")
    ckpt_case("classes-fewer", lambda c: (c["classes"].pop(), c["class_names"].pop()),
              "names 3 classes for a net of 4 outputs", ("eval", "predict", "export"))
    ckpt_case("model-list", lambda c: c.__setitem__("model", [1, 2]), "'model' is missing or not a dict")
    ckpt_case("model-values", lambda c: c["model"].__setitem__("features.0.weight", "w"),
              "'model' is not a mapping of names to tensors")
    ckpt_case("mean-shape", lambda c: c.__setitem__("mean", torch.zeros(5)), "'mean' has shape")
    ckpt_case("mean-nan", lambda c: c["mean"].fill_(float("nan")), "'mean' holds values that are not finite")
    ckpt_case("pca", lambda c: c.__setitem__("pca_eigenvectors", torch.zeros(2, 2)), "'pca_eigenvectors' has shape")
    ckpt_case("run", lambda c: c["run"].__setitem__("epoch", "one"), "'run' is not a run state", ("resume",))
    ckpt_case("schedule", lambda c: c["schedule"].__setitem__("lr", float("inf")), "'schedule' is not",
              ("resume",))
    ckpt_case("optimizer", lambda c: c.__setitem__("optimizer", {"state": 3}), "'optimizer' is not",
              ("resume", "eval"))
    ckpt_case("bitflip", lambda c: c["model"]["features.0.weight"][0, 0, 0].add_(1.0),
              "does not match the checksum", resign=False)
    ckpt_case("renamed", lambda c: c["classes"].__setitem__(0, "someone-else"), "does not match the checksum",
              ("eval", "predict"), resign=False)
    ckpt_case("config", lambda c: c.__setitem__("config", {"model": {"widths": "big"}}), "holds no usable config",
              ("eval", "predict"))

    # --- configs
    def yaml_case(tag: str, text: bytes | str, expected: str) -> None:
        p = w / f"{tag}.yaml"
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        case(["summary", "--preset", "demo", "--config", p], expected)
        case(["train", "--preset", "demo", "--data", store, "--out", w / f"r-{tag}", "--config", p], expected)

    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefg", "bcdefgh"))
    yaml_case("laughs", laughs, "aliases (*name) are not accepted")
    yaml_case("deep", "model:\n  fc: " + "[" * 5000 + "]" * 5000 + "\n", "nests deeper than")
    yaml_case("latin1", b"optim:\n  lr: 0.01 # caf\xe9\n", "is not UTF-8 text")
    yaml_case("nan", "optim:\n  warmup_epochs: .nan\n", "takes a finite number")
    yaml_case("inf", "optim:\n  lr: .inf\n", "takes a finite number")
    yaml_case("list", "- lr\n- 0.1\n", "must hold a mapping")
    yaml_case("huge", "#" * (2 << 20), "larger than")
    for argv, expected in (
        (["model.widths=[100000,100000,100000,100000,100000]"], "parameters"),
        (["data.crop=4"], "too small for these layers"),
        (["model.strides=[0,1,1,1,1]"], "model.strides must be at least 1"),
        (["model.kernels=[0,3,3,3,3]"], "model.kernels"),
        (["model.pads=[-3,1,1,1,1]"], "model.pads at least 0"),
        (["seed=-5"], "train.seed must be"),
        (["seed=99999999999999999999999"], "train.seed must be"),
        (["data.image_size=100000", "data.crop=64"], "at most 4096"),
        (["optim.momentum=nan"], "takes a float"),
        (["optim.lr=1e400"], "takes a finite number"),
        (["model.local=[true,false]"], "model.local has 2 entries"),
        (["optim.layer_weight_decay=[0.1]"], "one value per weighted layer"),
    ):
        case(["summary", "--preset", "demo", *argv], expected)
    case(["train", "--preset", "demo", "--data", store, "--out", w / "r-nan", "optim.warmup_epochs=.nan"],
         "takes a finite number")

    # --- outputs: existing files, inputs, suffixes, folders that are files
    existing = w / "existing.png"
    existing.write_bytes(b"keep me")
    plotted = w / "plotted-run"  # a run with one finished epoch, for plot
    plotted.mkdir()
    (plotted / "metrics.jsonl").write_text(json.dumps({
        "kind": "epoch", "epoch": 0, "step": 4, "train_loss": 1.2, "train_top1_error": 50.0, "lr": 0.01,
        "epoch_time": 1.0, "val_top1_error": 45.0, "val_top5_error": 5.0, "lr_dropped": False}) + "\n")
    (w / "afile").write_text("a file\n")
    for argv, expected in (
        (["kernels", ckpt, "-o", existing], "already exists: choose another -o or pass --overwrite"),
        (["kernels", ckpt, "-o", w / "k.txt"], "cannot write a '.txt' file"),
        (["kernels", ckpt, "-o", w / "k"], "cannot write a 'suffix-less' file"),
        (["kernels", ckpt, "-o", ckpt, "--overwrite"], "cannot write a '.pt' file"),
        (["plot", plotted, "-o", existing], "already exists"),
        (["plot", plotted, "-o", w / "c.docx"], "cannot write a '.docx' file"),
        (["plot", plotted, "-o", plotted / "metrics.jsonl", "--overwrite"], "cannot write a '.jsonl' file"),
        (["predict", ckpt, image, "--panel", image, "--overwrite"], "is one of this command's inputs"),
        (["predict", ckpt, shapes_folder, "--panel", image, "--overwrite"], "is one of this command's inputs"),
        (["predict", ckpt, image, "--panel", w / "p.csv"], "cannot write a '.csv' file"),
        (["retrieve", ckpt, "--index", store, "--query", image, "--panel", image, "--overwrite"],
         "is one of this command's inputs"),
        (["export", ckpt, "--format", "onnx", "-o", ckpt, "--overwrite"], "is one of this command's inputs"),
        (["export", ckpt, "--format", "onnx", "-o", existing], "already exists"),
        (["train", "--preset", "demo", "--data", store, "--out", w / "afile" / "run"], "which is a file"),
        (["prepare", shapes_folder, "--out", w / "afile" / "store"], "is a part of the path a file"),
    ):
        case(argv, expected)

    # --- environment
    for env, expected in (({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a whole number"),
                          ({"RANK": "-1"}, "RANK=-1 must be at least 0"),
                          ({"LOCAL_RANK": "x"}, "LOCAL_RANK='x'"),
                          ({"TORCHELASTIC_RESTART_COUNT": "many"}, "TORCHELASTIC_RESTART_COUNT"),
                          ({"ALEXNET_FAULT_SAVE_ERRNO": "NOT_AN_ERRNO"}, "is not an errno name"),
                          ({"ALEXNET_FAULT_KILL_IN_SAVE": "soon"}, "give K or K:WHEN")):
        case(["train", "--preset", "demo", "--data", store, "--out", w / f"r-env-{len(cases)}",
              *[f"{k}={json.dumps(v)}" for k, v in SMALL.items()]], expected, env)

    # --- label files that are not UTF-8 text
    flat = w / "flat"
    flat.mkdir()
    (flat / "ILSVRC2012_val_00000001.JPEG").write_bytes(encode(pattern(24, 24, 1)))
    (w / "labels-latin1.csv").write_bytes("ImageId,PredictionString\nILSVRC2012_val_00000001,n01 caf\xe9\n"
                                          .encode("latin-1"))
    case(["prepare", flat, "--labels", w / "labels-latin1.csv", "--out", w / "o-latin1"], "is not UTF-8 text")
    (w / "labels.csv").write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n")
    (w / "synsets-latin1.txt").write_bytes("n01440764 caf\xe9\n".encode("latin-1"))
    case(["prepare", flat, "--labels", w / "labels.csv", "--synsets", w / "synsets-latin1.txt", "--out",
          w / "o-syn"], "synset mapping")

    # --- a linked .partial
    linked = w / "linked-store"
    linked.mkdir()
    (linked / ".partial").symlink_to(w / "elsewhere", target_is_directory=True)
    case(["prepare", shapes_folder, "--out", linked], "is a symbolic link")
    return {"w": w, "store": store, "images": shapes_folder, "cases": cases}


HOSTILE_RUNNER = BATCH_RUNNER.replace(
    "for argv in json.load(open(sys.argv[1])):",
    "import os\nbase = dict(os.environ)\nfor argv, env in json.load(open(sys.argv[1])):\n"
    "    os.environ.clear(); os.environ.update(base, **env)")


def test_every_hostile_input_is_one_line_exit_2_and_changes_nothing(hostile, tmp_path):
    cases = hostile["cases"]
    assert len(cases) >= 120
    watched = [str(hostile["w"]), str(hostile["store"]), str(hostile["images"])]
    before = snapshot(*watched)
    (tmp_path / "runner.py").write_text(HOSTILE_RUNNER)
    (tmp_path / "cases.json").write_text(json.dumps([[argv, env] for argv, env, _ in cases]))
    # one process for every case; a hang anywhere fails here
    subprocess.run([sys.executable, "runner.py", "cases.json", "results.json"], cwd=tmp_path, check=True,
                   timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    results = json.loads((tmp_path / "results.json").read_text())
    failures = []
    for (argv, env, expected), (status, out, err) in zip(cases, results):
        try:
            assert_one_line_error(status, out, err, expected)
        except AssertionError:
            failures.append(f"{' '.join(argv)} {env or ''}: exit {status}: {err.strip()[-300:]}")
    assert not failures, "\n".join(failures)
    assert snapshot(*watched) == before
    leftovers = [p.name for p in hostile["w"].iterdir() if p.name.startswith(("o-", "r-", "x-", "idx-"))]
    assert not leftovers, leftovers


def test_fifos_and_device_links_in_an_image_folder_are_skipped_without_hanging(tmp_path):
    root = write_image_folder(tmp_path / "images", train_per_class=4, val_per_class=0, size=32, seed=0,
                              classes=("disc", "square"))
    folder = root / "train"
    os.mkfifo(folder / "disc" / "waiting.png")
    (folder / "square" / "zero.png").symlink_to("/dev/zero")
    proc = cli("prepare", str(folder), "--out", str(tmp_path / "store"))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    skipped = json.dumps(manifest["splits"]["train"]["skipped"])
    assert "waiting.png" in skipped and "zero.png" in skipped and "not a regular file" in skipped
    assert manifest["splits"]["train"]["count"] == 8


def test_a_damaged_index_cache_is_rebuilt_not_trusted(shapes_store, tmp_path):
    run = tmp_path / "run"
    assert train(build_config("demo", overrides=SMALL), str(shapes_store), run, progress=False) == 0
    cache = tmp_path / "cache"
    args = ["retrieve", str(run / "last.pt"), "--index", str(shapes_store), "--query", "store:3", "-k", "3",
            "--index-cache", str(cache), "--json", "--no-progress"]
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    (npy,) = cache.glob("fc7-*.npy")
    good = npy.read_bytes()
    damaged = bytearray(good)
    damaged[-8:] = np.array([np.nan, np.nan], np.float32).tobytes()
    npy.write_bytes(bytes(damaged))
    second = cli(*args)
    assert second.returncode == 0 and "damaged: building it again" in second.stderr
    assert json.loads(second.stdout) == json.loads(first.stdout) and npy.read_bytes() == good
    npy.write_bytes(good[:-100])  # truncated
    third = cli(*args)
    assert third.returncode == 0 and "building it again" in third.stderr and npy.read_bytes() == good


# ------------------------------------------------- compressed archives cut short, paths of the wrong kind,
# ------------------------------------------------- environment variables, JSON nested past the recursion limit

DEEP_JSON = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError on this


def assert_refused(proc: subprocess.CompletedProcess, expected: str) -> None:
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, expected)


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz"])
def test_a_compressed_cifar_archive_cut_short_is_refused(tmp_path, suffix):
    from datagen import make_cifar_archive

    whole = tmp_path / f"cifar{suffix}"
    make_cifar_archive(whole, cifar_batches(20))
    data = whole.read_bytes()
    for fraction in (0.3, 0.9):  # inside the first batch, inside the last one
        cut = tmp_path / f"cut-{fraction}{suffix}"
        cut.write_bytes(data[: int(len(data) * fraction)])
        proc = cli("prepare", str(cut), "--out", str(tmp_path / "store"))
        assert_refused(proc, "is cut short or damaged")
        assert not (tmp_path / "store").exists() and cut.read_bytes() == data[: int(len(data) * fraction)]
    assert cli("prepare", str(whole), "--out", str(tmp_path / "store")).returncode == 0  # the whole one prepares


def test_an_ilsvrc_devkit_cut_short_is_refused(tmp_path):
    from datagen import make_devkit

    synsets = [(1, "n01000000", "one", 0), (2, "n02000000", "two", 0)]
    make_devkit(tmp_path / "devkit.tar.gz", synsets, [1, 2, 1, 2])
    for n in range(1, 5):
        (tmp_path / "val").mkdir(exist_ok=True)
        (tmp_path / "val" / f"ILSVRC2012_val_{n:08d}.JPEG").write_bytes(encode(pattern(8, 8, n), "JPEG"))
    data = (tmp_path / "devkit.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    proc = cli("prepare", str(tmp_path / "val"), "--devkit", str(tmp_path / "cut.tar.gz"), "--out",
               str(tmp_path / "store"))
    assert_refused(proc, "is cut short or damaged")
    assert not (tmp_path / "store").exists()


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _folder(path: Path) -> None:
    path.mkdir()


def _link(path: Path) -> None:
    path.symlink_to(path.parent / "elsewhere")


def _file(path: Path) -> None:
    path.write_text("someone's file")


@pytest.mark.parametrize(("name", "make", "expected"), [
    (".lock", _folder, ".lock is a folder, where the run keeps its lock file"),
    (".lock", _link, ".lock is a symbolic link, where the run keeps its lock file"),
    (".lock", _fifo, "is not a regular file (a pipe, socket or device), where the run keeps its lock file"),
    ("checkpoints", _file, "checkpoints is not a folder, where the run keeps its checkpoints"),
    ("tensorboard", _file, "tensorboard is not a folder, where the run keeps its tensorboard"),
    ("last.pt", _folder, "last.pt is a folder, where the run writes its last.pt"),
    ("metrics.jsonl", _link, "metrics.jsonl is a symbolic link, where the run writes its metrics.jsonl"),
    ("curves.png", _fifo, "curves.png is not a regular file, where the run writes its curves.png"),
])
def test_a_path_a_run_creates_that_exists_as_something_else_is_refused(shapes_store, tmp_path, name, make,
                                                                        expected):
    run = tmp_path / "run"
    run.mkdir()
    make(run / name)
    before = sorted(p.name for p in run.iterdir())
    proc = cli("train", "--preset", "demo", "--data", str(shapes_store), "--out", str(run), "--resume", "auto",
               *[f"{k}={v}" for k, v in SMALL.items()])
    assert_refused(proc, expected)
    assert sorted(p.name for p in run.iterdir()) == before and not (tmp_path / "elsewhere").exists()


def test_a_lock_that_prepare_or_the_cache_creates_existing_as_a_folder_is_refused(tmp_path):
    folder = write_image_folder(tmp_path / "images", train_per_class=2, val_per_class=1, size=16)
    out = tmp_path / "store"
    (out / ".partial.lock").mkdir(parents=True)
    assert_refused(cli("prepare", str(folder), "--out", str(out)),
                   ".partial.lock is a folder, where prepare keeps its lock file")
    assert (out / ".partial.lock").is_dir() and not (out / ".partial").exists()
    # `train --data FOLDER` prepares into the cache under a lock of its own, beside the store it makes
    cache = tmp_path / "cache"
    first = cli("train", "--preset", "demo", "--data", str(folder), "--out", str(tmp_path / "run"),
                "--cache", str(cache), "--dry-run")
    assert first.returncode == 0, first.stderr  # a dry run locates, never prepares: nothing in the cache yet
    from alexnet.prepare.resolve import cached_store_path

    target = cached_store_path(str(folder), cache, build_config("demo").data.image_size)
    target.parent.mkdir(parents=True)
    (target.parent / f".{target.name}.lock").mkdir()
    proc = cli("train", "--preset", "demo", "--data", str(folder), "--out", str(tmp_path / "run"), "--cache",
               str(cache), "train.max_steps=1")
    assert_refused(proc, "where the cache keeps its lock file")
    assert not target.exists()


@pytest.mark.parametrize(("variable", "value", "command"), [
    ("ALEXNET_PREPARE_CHUNK", "abc", "prepare"),
    ("ALEXNET_PREPARE_CHUNK", "0", "prepare"),
    ("ALEXNET_PREPARE_SAVE_SECONDS", "soon", "prepare"),
    ("ALEXNET_PREPARE_SAVE_SECONDS", "nan", "prepare"),
    ("ALEXNET_FAULT_NAN_AT_STEP", "x", "train"),
    ("ALEXNET_FAULT_KILL_IN_SAVE", "1:never", "train"),
    ("WORLD_SIZE", "two", "train"),
    ("LOCAL_RANK", "-1", "train"),
])
def test_an_environment_variable_that_does_not_parse_is_one_line_naming_it(shapes_store, tmp_path, variable,
                                                                           value, command):
    if command == "prepare":
        folder = write_image_folder(tmp_path / "images", train_per_class=2, val_per_class=1, size=16)
        argv = ["prepare", str(folder), "--out", str(tmp_path / "store")]
    else:
        argv = ["train", "--preset", "demo", "--data", str(shapes_store), "--out", str(tmp_path / "run"),
                *[f"{k}={v}" for k, v in SMALL.items()]]
    proc = cli(*argv, env={variable: value})
    assert_refused(proc, variable)
    assert not (tmp_path / "store").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_json_nested_past_the_recursion_limit_is_refused_or_passed_over(shapes_store, tmp_path):
    # a store's manifest: one line, nothing changed
    store = tmp_path / "store"
    _store_copy(shapes_store, store)
    (store / "manifest.json").write_text(DEEP_JSON)
    assert_refused(cli("train", "--preset", "demo", "--data", str(store), "--out", str(tmp_path / "r0")),
                   "manifest.json is unreadable")
    # a run's metrics.jsonl with such a line: resume passes over it as over a line cut by a crash
    run = tmp_path / "run"
    assert train(build_config("demo", overrides=SMALL), str(shapes_store), run, progress=False) == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write(DEEP_JSON + "\n")
    (run / "config.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")  # past PyYAML's recursion too
    resumed = cli("train", "--preset", "demo", "--data", str(shapes_store), "--out", str(run), "--resume", "auto",
                  *[f"{k}={v}" for k, v in {**SMALL, "train.max_steps": 3}.items()])
    assert resumed.returncode == 0 and "Traceback" not in resumed.stderr, resumed.stderr
    assert DEEP_JSON not in (run / "metrics.jsonl").read_text()
    # an exported file whose metadata says alexnet but whose config is nested past the limit
    from safetensors.torch import load_file, save_file

    exported = tmp_path / "model.safetensors"
    assert cli("export", str(run / "last.pt"), "--format", "safetensors", "-o", str(exported)).returncode == 0
    from safetensors import safe_open

    with safe_open(str(exported), framework="pt") as f:
        metadata = f.metadata()
    save_file(load_file(str(exported)), str(exported), metadata={**metadata, "config": DEEP_JSON})
    from alexnet.errors import UserError
    from alexnet.tools.export import load_safetensors

    with pytest.raises(UserError, match="its metadata or weights are damaged"):
        load_safetensors(exported)
