"""Preparing raw image sets into a store (alexnet.prepare.writer and `alexnet prepare`)."""

from __future__ import annotations

import ctypes
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from datagen import (
    add_bytes,
    centre,
    cifar_batches,
    encode,
    make_cifar_archive,
    make_cifar_folder,
    make_devkit,
    make_tar_of_tars,
    pattern,
    png_bomb,
    write,
)
from PIL import Image

from alexnet import cli
from alexnet.data.store import is_store, open_store
from alexnet.errors import UserError
from alexnet.prepare.writer import prepare

PYTHON = sys.executable


def _known_folder(root: Path) -> dict[str, list[np.ndarray]]:
    """Three classes of PNGs whose shorter side is 16, so the stored crop is known exactly."""
    shapes = {"cat": [(16, 16), (16, 24), (20, 16)], "ant": [(16, 16), (24, 16)], "bee": [(16, 21)]}
    expected: dict[str, list[np.ndarray]] = {}
    for c, (name, sizes) in enumerate(sorted(shapes.items())):
        expected[name] = []
        for i, (h, w) in enumerate(sizes):
            array = pattern(h, w, seed=10 * c + i)
            write(root / name / f"{i}.png", encode(array))
            expected[name].append(centre(array, 16))
    return expected


def _files(store_root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store_root)): p.read_bytes() for p in sorted(store_root.rglob("*.npy"))}


def _manifest(store_root: Path) -> dict:
    manifest = json.loads((store_root / "manifest.json").read_text())
    manifest.pop("created")
    return manifest


def test_store_holds_centre_crops_mean_and_pca(tmp_path):
    expected = _known_folder(tmp_path / "src")
    store = prepare(tmp_path / "src", tmp_path / "store", size=16, workers=1, progress=False)
    classes = sorted(expected)
    images = np.stack([a for c in classes for a in expected[c]])
    labels = [k for k, c in enumerate(classes) for _ in expected[c]]
    train = store.split("train")
    assert store.classes == classes == store.class_names and store.size == 16
    assert np.array_equal(np.asarray(train.images), images)
    assert train.labels.tolist() == labels and train.labels.dtype == np.int64
    assert store.manifest["splits"]["train"]["per_class"] == [len(expected[c]) for c in classes]
    assert not store.has_split("val")
    np.testing.assert_allclose(store.mean, images.mean(axis=0), rtol=1e-6)
    pixels = images.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(store.manifest["mean_rgb"], pixels.mean(axis=0), rtol=1e-12)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(pixels.T))
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    np.testing.assert_allclose(store.pca_eigenvalues, eigenvalues, rtol=1e-5)
    for i in range(3):  # columns are eigenvectors; the sign of each is a convention
        assert abs(float(store.pca_eigenvectors[:, i] @ eigenvectors[:, i])) == pytest.approx(1.0, abs=1e-5)
    store.verify()


def test_exact_sums_hold_for_chunks_of_more_than_257_images(tmp_path):
    # Per-position sums build up in uint16 blocks of 257 images (255 * 257 = 65535); 300 images with
    # saturated pixels in one chunk would overflow a block that is not flushed in time.
    arrays = []
    for i in range(300):
        array = pattern(4, 4, seed=i)
        array[0, :] = 255
        arrays.append(array)
        write(tmp_path / "src" / ("a" if i % 2 else "b") / f"{i:03d}.png", encode(array))
    store = prepare(tmp_path / "src", tmp_path / "store", size=4, workers=1, progress=False, chunk_size=300)
    images = np.stack([arrays[i] for i in range(1, 300, 2)] + [arrays[i] for i in range(0, 300, 2)])
    assert np.array_equal(np.asarray(store.split("train").images), images)
    np.testing.assert_allclose(store.mean, images.astype(np.float64).mean(axis=0), rtol=1e-6)
    assert store.mean[0].min() == pytest.approx(255.0)
    pixels = images.reshape(-1, 3).astype(np.float64)
    eigenvalues = np.linalg.eigvalsh(np.cov(pixels.T))[::-1]
    np.testing.assert_allclose(store.pca_eigenvalues, eigenvalues, rtol=1e-6)


def test_pool_of_workers_writes_the_same_store_as_one_process(tmp_path):
    for c in range(3):
        for i in range(7):
            write(tmp_path / "src" / f"class{c}" / f"{i}.jpg", encode(pattern(30, 40, seed=c * 10 + i), "JPEG"))
    write(tmp_path / "src" / "class1" / "broken.jpg", b"not an image")
    one = prepare(tmp_path / "src", tmp_path / "one", size=24, workers=1, progress=False, chunk_size=3)
    two = prepare(tmp_path / "src", tmp_path / "two", size=24, workers=2, progress=False, chunk_size=3)
    assert _files(one.root) == _files(two.root)
    assert _manifest(one.root) == _manifest(two.root)
    assert len(one.split("train")) == 21


def test_skipped_rows_are_filled_and_labels_follow_their_images(tmp_path):
    colours = {"a": (255, 0, 0), "b": (0, 255, 0), "c": (0, 0, 255)}
    for name, colour in colours.items():
        for i in range(4):
            write(tmp_path / "src" / name / f"{i}.png", encode(np.full((8, 8, 3), colour, np.uint8)))
    write(tmp_path / "src" / "a" / "0.png", b"")  # first image of the split skipped
    write(tmp_path / "src" / "b" / "2.png", b"garbage")
    store = prepare(tmp_path / "src", tmp_path / "store", size=8, workers=1, progress=False, chunk_size=5)
    train = store.split("train")
    assert len(train) == 10
    for image, label in zip(np.asarray(train.images), train.labels):
        assert tuple(image[0, 0]) == colours["abc"[label]]
    assert store.manifest["splits"]["train"]["per_class"] == [3, 3, 4]
    assert [s["file"] for s in store.manifest["splits"]["train"]["skipped"]] == ["a/0.png", "b/2.png"]


def test_validation_fraction_makes_a_stratified_val_split(tmp_path):
    for c in range(2):
        for i in range(8):
            write(tmp_path / "src" / f"k{c}" / f"{i}.png", encode(pattern(8, 8, seed=c * 8 + i)))
    store = prepare(tmp_path / "src", tmp_path / "store", size=8, workers=1, progress=False, val_fraction=0.25)
    assert store.manifest["splits"]["train"]["per_class"] == [6, 6]
    assert store.manifest["splits"]["val"]["per_class"] == [2, 2]
    assert store.split("val").labels.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("form", ["archive", "folder"])
def test_cifar10_python_batches(tmp_path, form):
    batches = cifar_batches(per_batch=4)
    src = tmp_path / "cifar-10-python.tar.gz"
    if form == "archive":
        make_cifar_archive(src, batches)
    else:
        src = tmp_path / "cifar-10-batches-py"
        make_cifar_folder(src, batches)
    store = prepare(src, tmp_path / "store", workers=1, progress=False)
    assert store.size == 32  # CIFAR-10's own size by default
    assert store.manifest["source"]["layout"] == "cifar10-python"
    assert store.class_names == batches["batches.meta"]["label_names"]
    train_batches = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    # rows of "data": 1024 red, 1024 green, 1024 blue values of a 32 x 32 image
    expected = np.concatenate([b["data"] for b in train_batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    assert np.array_equal(np.asarray(store.split("train").images), expected)
    assert store.split("train").labels.tolist() == sum((b["labels"] for b in train_batches), [])
    assert store.split("val").labels.tolist() == batches["test_batch"]["labels"]


def test_cifar10_download_offline_fails_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no local path called cifar10
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # a closed port: every download attempt fails at once
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["prepare", "cifar10", "--out", str(tmp_path / "store"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cifar-10-python.tar.gz" in err and "alexnet prepare PATH" in err
    assert not is_store(tmp_path / "store")


def test_ilsvrc_train_tar_with_val_tar_and_devkit(tmp_path):
    wnids = ["n01440764", "n01443537", "n01484850"]
    train = {w: [np.full((8, 8, 3), 40 * k + i, np.uint8) for i in range(2)] for k, w in enumerate(wnids)}
    make_tar_of_tars(tmp_path / "ILSVRC2012_img_train.tar", train)
    # ILSVRC2012_IDs deliberately differ from the sorted-wnid order
    synsets = [(1, "n01484850", "great white shark, white shark", 0), (2, "n01440764", "tench, Tinca tinca", 0),
               (3, "n01443537", "goldfish, Carassius auratus", 0)]
    truth = [3, 1, 2, 1]
    make_devkit(tmp_path / "ILSVRC2012_devkit_t12.tar.gz", synsets, truth)
    with tarfile.open(tmp_path / "ILSVRC2012_img_val.tar", "w") as tar:
        for n in range(1, 5):
            add_bytes(tar, f"ILSVRC2012_val_{n:08d}.JPEG", encode(np.full((8, 8, 3), n, np.uint8)))
    store = prepare(tmp_path / "ILSVRC2012_img_train.tar", tmp_path / "store", size=8, workers=1,
                    progress=False, val=tmp_path / "ILSVRC2012_img_val.tar",
                    devkit=tmp_path / "ILSVRC2012_devkit_t12.tar.gz")
    wnid_of_id = {1: "n01484850", 2: "n01440764", 3: "n01443537"}
    assert store.classes == sorted(wnids)
    assert store.split("val").labels.tolist() == [sorted(wnids).index(wnid_of_id[i]) for i in truth] == [1, 2, 0, 2]
    assert store.class_names == ["tench", "goldfish", "great white shark"]
    assert [int(img[0, 0, 0]) for img in store.split("val").images] == [1, 2, 3, 4]
    assert store.split("train").labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert store.manifest["source"]["layout"] == "ilsvrc-train-tar"
    assert store.manifest["source"]["val"]["layout"] == "ilsvrc-val-tar"


def test_existing_store_is_kept_unless_overwrite(tmp_path):
    _known_folder(tmp_path / "src")
    prepare(tmp_path / "src", tmp_path / "store", size=16, workers=1, progress=False)
    before = _files(tmp_path / "store")
    with pytest.raises(UserError, match="already holds a store; pass --overwrite"):
        prepare(tmp_path / "src", tmp_path / "store", size=8, workers=1, progress=False)
    assert _files(tmp_path / "store") == before
    open_store(tmp_path / "store").verify()
    store = prepare(tmp_path / "src", tmp_path / "store", size=8, workers=1, progress=False, overwrite=True)
    assert store.size == 8 and store.split("train").images.shape[1:] == (8, 8, 3)
    assert not (tmp_path / "store" / ".partial").exists()


def test_non_empty_folder_that_is_not_a_store_is_left_alone(tmp_path):
    _known_folder(tmp_path / "src")
    write(tmp_path / "out" / "thesis.tex", b"precious")
    with pytest.raises(UserError, match="is not empty and is not a store"):
        prepare(tmp_path / "src", tmp_path / "out", size=16, workers=1, progress=False)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["thesis.tex"]


def test_user_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    assert cli.main(["prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


# ------------------------------------------------------------------------------------ real processes


def _without_file_permission_override():
    """Run as root, a mode-000 file is still readable; drop the capabilities that allow it (in the child,
    before exec) so that the permission check really happens."""
    if os.geteuid() != 0:
        return None

    def drop() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return drop


def _bad_file_corpus(src: Path) -> dict[str, str]:
    """Good, odd and broken files; returns {file: expected skip reason} for the ones that must be skipped."""
    rgba = Image.fromarray(np.dstack([pattern(20, 20, 1), np.full((20, 20), 9, np.uint8)]), "RGBA")
    palette = Image.fromarray((np.arange(400).reshape(20, 20) % 7).astype(np.uint8), "P")
    palette.putpalette(list(range(21)))
    exif = Image.Exif()
    exif[0x0112] = 8
    converted = {
        "a/ok.png": encode(pattern(20, 24, 2)),
        "a/n02105855_2933.JPEG": encode(pattern(20, 20, 3), "PNG"),
        "a/cmyk.jpg": _save(Image.fromarray(pattern(20, 20, 4)).convert("CMYK"), "JPEG"),
        "a/grey.jpg": encode(pattern(20, 20, 5)[:, :, 0], "JPEG"),
        "a/rgba.png": _save(rgba, "PNG"),
        "a/palette.png": _save(palette, "PNG"),
        "a/sixteen.png": _save(Image.fromarray(np.full((20, 20), 40000, np.uint16)), "PNG"),
        "a/rotated.jpg": encode(pattern(20, 30, 6), "JPEG", exif=exif.tobytes()),
        "a/tiny.png": encode(pattern(3, 4, 7)),
        "b/with space 'single' \"double\" ü.png": encode(pattern(16, 16, 8)),
        "b/ok.jpg": encode(pattern(20, 20, 9), "JPEG"),
    }
    skipped = {
        "b/bomb.png": (png_bomb(), "decompression bomb"),
        "b/truncated.jpg": (encode(pattern(64, 64, 10), "JPEG")[:1500], "truncated"),
        "b/empty.JPEG": (b"", "empty file"),
        "b/notes.txt": (b"class notes\n", "not an image"),
        "b/locked.png": (encode(pattern(20, 20, 11)), "unreadable: permission denied"),
        "b/ünïcode 'odd'.doc": (b"\x00\x01binary", "not an image"),
    }
    for name, data in converted.items():
        write(src / name, data)
    for name, (data, _) in skipped.items():
        write(src / name, data)
    os.chmod(src / "b/locked.png", 0)
    return {name: reason for name, (_, reason) in skipped.items()}


def _save(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "alexnet", "prepare", *args], capture_output=True, text=True,
                          timeout=120, **kwargs)


def test_bad_files_are_listed_with_reasons_and_strict_refuses_them(tmp_path):
    expected = _bad_file_corpus(tmp_path / "src")
    drop = _without_file_permission_override()
    done = _cli(str(tmp_path / "src"), "--out", str(tmp_path / "store"), "--size", "16", "--workers", "1",
                preexec_fn=drop)
    assert done.returncode == 0, done.stderr
    assert "train 11 images (6 skipped)" in done.stderr
    store = open_store(tmp_path / "store")
    skipped = {s["file"]: s["reason"] for s in store.manifest["splits"]["train"]["skipped"]}
    assert set(skipped) == set(expected)
    for name, reason in expected.items():
        assert reason in skipped[name], (name, skipped[name])
    assert store.manifest["splits"]["train"]["per_class"] == [9, 2]
    odd_name = pattern(16, 16, 8)  # stored unchanged: already 16 x 16
    assert any(np.array_equal(image, odd_name) for image in store.split("train").images)

    strict = _cli(str(tmp_path / "src"), "--out", str(tmp_path / "strict"), "--size", "16", "--workers", "1",
                  "--strict", preexec_fn=drop)
    assert strict.returncode == 2
    assert strict.stderr.count("\n") == 1 and "6 file(s) cannot be used (--strict)" in strict.stderr
    for name in expected:
        assert name in strict.stderr
    assert not is_store(tmp_path / "strict")


def test_prepare_killed_midway_resumes_to_an_identical_store(tmp_path):
    for c in range(3):
        for i in range(80):
            write(tmp_path / "src" / f"c{c}" / f"{i:03d}.jpg", encode(pattern(64, 96, seed=c * 1000 + i), "JPEG"))
    write(tmp_path / "src" / "c1" / "050.jpg", b"broken")  # a skipped file inside the interrupted range
    args = [str(tmp_path / "src"), "--out", str(tmp_path / "store"), "--size", "32", "--workers", "1",
            "--chunk-size", "4"]
    env = {**os.environ, "ALEXNET_PREPARE_SAVE_SECONDS": "0"}  # record every finished chunk
    proc = subprocess.Popen([PYTHON, "-m", "alexnet", "prepare", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "store" / ".partial" / "state.npz"
    deadline = time.monotonic() + 90
    done_before_kill = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with np.load(state) as saved:
                done_before_kill = len(saved["done"])
        except (OSError, ValueError, KeyError):
            done_before_kill = 0
        if done_before_kill >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "prepare finished before it could be interrupted"
    assert not is_store(tmp_path / "store")

    resumed = _cli(*args, env=env)
    assert resumed.returncode == 0, resumed.stderr
    match = re.search(r"resuming, (\d+) of (\d+) chunks already done", resumed.stderr)
    assert match and int(match.group(1)) >= done_before_kill and int(match.group(2)) == 60

    reference = prepare(tmp_path / "src", tmp_path / "reference", size=32, workers=1, progress=False,
                        chunk_size=4)
    assert _files(tmp_path / "store") == _files(reference.root)
    assert _manifest(tmp_path / "store") == _manifest(reference.root)
    assert len(reference.split("train")) == 239


def test_a_worker_killed_midway_is_reported_and_the_work_is_kept(tmp_path):
    for c in range(2):
        for i in range(60):
            write(tmp_path / "src" / f"c{c}" / f"{i:03d}.jpg", encode(pattern(64, 96, seed=c * 1000 + i), "JPEG"))
    args = ["-m", "alexnet", "prepare", str(tmp_path / "src"), "--out", str(tmp_path / "store"), "--size", "32",
            "--workers", "2", "--chunk-size", "4"]
    env = {**os.environ, "ALEXNET_PREPARE_SAVE_SECONDS": "0"}
    proc = subprocess.Popen([PYTHON, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "store" / ".partial" / "state.npz"
    deadline, killed = time.monotonic() + 90, None
    while time.monotonic() < deadline and proc.poll() is None and killed is None:
        children = []
        for task in Path(f"/proc/{proc.pid}/task").glob("*"):
            try:
                children += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                pass
        if state.exists() and children:
            killed = children[0]
            os.kill(killed, signal.SIGKILL)  # what the out-of-memory killer would do to a worker
        time.sleep(0.005)
    _, err = proc.communicate(timeout=60)
    assert killed is not None, "prepare finished before a worker could be killed"
    assert proc.returncode == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("alexnet prepare: error: a decoding process died")
    with np.load(state) as saved:
        assert len(saved["done"]) >= 1  # finished chunks were recorded for the next run
    assert not is_store(tmp_path / "store")


def test_prepare_shows_a_bar_on_a_terminal_and_not_with_no_progress(tmp_path):
    from conftest import run_cli_on_terminal

    _known_folder(tmp_path / "src")
    status, _, shown = run_cli_on_terminal("prepare", str(tmp_path / "src"), "--out", str(tmp_path / "a"),
                                           "--workers", "1")
    assert status == 0, shown
    assert re.search(r"prepare: 100%.*6/6", shown), shown  # tqdm's bar over the 6 images
    assert "train 6 images (0 skipped)" in shown, shown  # the summary line

    status, _, quiet = run_cli_on_terminal("prepare", str(tmp_path / "src"), "--out", str(tmp_path / "b"),
                                           "--workers", "1", "--no-progress")
    assert status == 0, quiet
    assert "6/6" not in quiet and "%|" not in quiet, quiet
    assert quiet.startswith(f"prepared {tmp_path / 'b'}: train 6 images (0 skipped)"), quiet  # the summary alone
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
