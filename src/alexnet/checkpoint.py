"""Checkpoints: atomic saves, the last k kept plus best, exact resume state, safe loading.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
torch.load(weights_only=True): no code runs from a checkpoint file, and a file that asks for any (a pickled
callable) is refused. Writes go to a temporary file in the same directory, are fsynced, then os.replace'd
into place: a reader sees the old file or the new one, never half of one, whenever the writer dies.
RUN/checkpoints/step-NNNNNNNNN.pt are the numbered saves; RUN/last.pt and RUN/best.pt are hard links to the
newest and the best (copies where links are not possible). A failed save (disk full, no permission) raises
OSError and leaves every earlier file as it was and no temporary file behind.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from alexnet import faults
from alexnet.errors import UserError
from alexnet.files import atomic_path, open_lock_file, try_lock

FORMAT = "alexnet-checkpoint/1"
_NUMBERED = re.compile(r"^step-(\d+)\.pt$")


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _os_error_behind(exc: BaseException) -> BaseException:
    """The OSError (disk full, ...) that caused `exc`, if any. torch.save's archive writer finishes the archive
    even after a failed write, so a full disk surfaces as a RuntimeError whose context is the real OSError."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save through files.atomic_path: on failure nothing changes. The fault hooks (alexnet.faults) can
    fail or kill the write part-way, or kill the process just before the rename."""
    with atomic_path(path, before_replace=lambda: faults.kill_point("replace")) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(obj, faults.hooked(f))
        except Exception as exc:
            raise _os_error_behind(exc) from None


def lock_run_dir(run_dir: Path) -> int | None:
    """Hold an exclusive lock on RUN/.lock for as long as the returned descriptor is open.

    Two processes training into one run directory would interleave their checkpoints; the second is refused.
    Where the file system cannot lock, None: no protection, but no refusal either (files.try_lock).
    """
    fd = open_lock_file(run_dir / ".lock", "the run")
    held = try_lock(fd, wait=False)
    if held is False:
        os.close(fd)
        raise UserError(f"{run_dir} is being written by another training process: wait for it to end or "
                        "choose another --out")
    if held is None:
        os.close(fd)
        return None
    return fd


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make dst name the same file as src, atomically (dst is never missing or partial)."""
    tmp = dst.with_name(f".{dst.name}.link")
    _unlink_quietly(tmp)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        _unlink_quietly(tmp)  # a copy cut short by a full disk must not stay behind
        raise


def _why_unreadable(exc: BaseException) -> str:
    """A short reason for a file torch.load refused: code inside, or damage."""
    text = str(exc)
    code = re.search(r"GLOBAL ([\w.]+)", text)
    if code:
        return (f"it asks to run Python code ({code.group(1)}), which a checkpoint never holds; "
                "refused without running it")
    if isinstance(exc, EOFError) or "central directory" in text or "failed reading" in text:
        return "it is truncated or corrupted"
    # other unpickling failures (random bytes, a text file, another format): torch's own message is long and
    # suggests weights_only=False, which is exactly what must not be done with an unknown file
    return f"it is damaged or not a PyTorch file ({type(exc).__name__})"


def safe_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """torch.load(weights_only=True) without its warning about the pickle protocol number in the file's first
    bytes: that number does not change what the restricted unpickler reads (a damaged one loads the same
    tensors, which the checksum then checks), and a warning about it before a correct result, or before the
    one-line refusal of a damaged file, says nothing the user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load safely (weights_only): UserError when the file is missing, not a checkpoint or unsafe."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory: give a .pt file (for a run: RUN/last.pt or RUN/best.pt)")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = safe_load(path, map_location)
    except Exception as exc:  # pickle errors, truncation, refused globals: all mean "not a usable checkpoint"
        raise UserError(f"{path} is not a readable alexnet checkpoint: {_why_unreadable(exc)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not an alexnet checkpoint (no '{FORMAT}' marker)")
    check_contents(ckpt, path)
    return ckpt


# ------------------------------------------------------------------------------------ content checks

def content_checksum(state: dict[str, Any]) -> str:
    """BLAKE2b over everything the checkpoint holds but the checksum itself: every tensor's name, shape, dtype
    and bytes, and every other value in a canonical text form. A bit flipped on disk anywhere in the content
    changes it (torch.load itself checks nothing)."""
    digest = hashlib.blake2b(digest_size=16)

    def add(name: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"{name}:tensor{tuple(t.shape)}:{t.dtype}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            digest.update(f"{name}:dict{len(value)}".encode())
            for key in sorted(value, key=repr):
                add(f"{name}.{key!r}", value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"{name}:{type(value).__name__}{len(value)}".encode())
            for i, v in enumerate(value):
                add(f"{name}[{i}]", v)
        else:
            digest.update(f"{name}={value!r}".encode())

    add("", {k: v for k, v in state.items() if k != "checksum"})
    return "blake2b:" + digest.hexdigest()


def with_checksum(state: dict[str, Any]) -> dict[str, Any]:
    state = dict(state, format=FORMAT)
    state.pop("checksum", None)
    return dict(state, checksum=content_checksum(state))


def check_contents(ckpt: dict[str, Any], path: str | Path) -> None:
    """The fields every reader uses, with the types and shapes it assumes, and the recorded checksum (a
    checkpoint written before checksums were recorded has none and is accepted); UserError naming the field.
    A training checkpoint also carries optimizer, schedule and run state, checked when present."""
    def bad(what: str) -> UserError:
        return UserError(f"{path} is damaged: {what}; use another checkpoint (RUN/checkpoints/) or a backup copy")

    def finite(t: Any, shape: tuple[int, ...] | None, name: str) -> None:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise bad(f"'{name}' is not a float tensor")
        if shape is not None and tuple(t.shape) != shape:
            raise bad(f"'{name}' has shape {tuple(t.shape)}, not {shape}")
        if not torch.isfinite(t).all():
            raise bad(f"'{name}' holds values that are not finite")

    for key, kind in (("config", dict), ("model", dict), ("classes", list), ("class_names", list)):
        if not isinstance(ckpt.get(key), kind):
            raise bad(f"'{key}' is missing or not a {kind.__name__}")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["model"].items()):
        raise bad("'model' is not a mapping of names to tensors")
    classes, names = ckpt["classes"], ckpt["class_names"]
    if not classes or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise bad("'classes' is not a list of distinct class ids")
    if len(names) != len(classes) or not all(isinstance(n, str) for n in names):
        raise bad(f"'class_names' has {len(names)} entries for {len(classes)} classes")
    mean = ckpt.get("mean")
    finite(mean, None, "mean")
    if mean.dim() != 3 or mean.shape[2] != 3 or mean.shape[0] != mean.shape[1]:
        raise bad(f"'mean' has shape {tuple(mean.shape)}, not (S, S, 3)")
    finite(ckpt.get("pca_eigenvalues"), (3,), "pca_eigenvalues")
    finite(ckpt.get("pca_eigenvectors"), (3, 3), "pca_eigenvectors")
    if "optimizer" in ckpt:
        opt = ckpt["optimizer"]
        groups = opt.get("param_groups") if isinstance(opt, dict) else None
        if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(groups, list)
                and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)):
            raise bad("'optimizer' is not an optimizer state (state, param_groups)")
        sched = ckpt.get("schedule")
        numbers = ("lr", "best")
        if not (isinstance(sched, dict) and all(isinstance(sched.get(k), (int, float)) for k in numbers)
                and isinstance(sched.get("bad_epochs"), int) and isinstance(sched.get("drops_done"), int)
                and isinstance(sched.get("should_stop"), bool) and isinstance(sched.get("history"), list)
                and math.isfinite(sched["lr"]) and sched["lr"] > 0):
            raise bad("'schedule' is not a schedule state")
        run = ckpt.get("run")
        ints = ("epoch", "step_in_epoch", "global_step", "nonfinite_in_row", "nonfinite_skipped")
        required = set(ints) | {"best_error", "epoch_sums"}
        # elapsed_s (budgets) came later: a checkpoint without it is an older one, not a damaged one
        if not (isinstance(run, dict) and required <= set(run) <= required | {"elapsed_s"}
                and all(isinstance(run[k], int) and not isinstance(run[k], bool) and run[k] >= 0 for k in ints)
                and isinstance(run["best_error"], (int, float))
                and isinstance(run.get("elapsed_s", 0.0), (int, float)) and run.get("elapsed_s", 0.0) >= 0
                and isinstance(run["epoch_sums"], list) and len(run["epoch_sums"]) == 3):
            raise bad("'run' is not a run state (epoch, step, sums)")
    recorded = ckpt.get("checksum")
    if recorded is not None and recorded != content_checksum(ckpt):
        raise bad("its content does not match the checksum recorded when it was saved (changed on disk)")


def step_of(path: Path) -> int | None:
    """The global step in a numbered checkpoint's name (step-000000120.pt -> 120), else None."""
    match = _NUMBERED.match(path.name)
    return int(match.group(1)) if match else None


class CheckpointManager:
    """Numbered saves in RUN/checkpoints, the newest k kept, RUN/last.pt and RUN/best.pt maintained."""

    def __init__(self, run_dir: str | Path, keep_last: int = 2) -> None:
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "checkpoints"
        self.keep_last = keep_last

    def numbered(self) -> list[Path]:
        """Numbered checkpoints, newest (highest step) first."""
        if not self.dir.is_dir():
            return []
        found = [p for p in self.dir.iterdir() if step_of(p) is not None]
        return sorted(found, key=lambda p: step_of(p) or 0, reverse=True)

    def save(self, state: dict[str, Any], global_step: int, is_best: bool) -> Path:
        """Write step-N.pt, point last.pt (and best.pt) at it, drop the oldest beyond keep_last.

        OSError (disk full, no permission) leaves the earlier checkpoints and links as they were.
        """
        faults.save_started()
        self.dir.mkdir(parents=True, exist_ok=True)
        state = with_checksum(state)
        path = self.dir / f"step-{global_step:09d}.pt"
        atomic_save(state, path)
        faults.kill_point("link")
        _link_or_copy(path, self.run_dir / "last.pt")
        if is_best:
            _link_or_copy(path, self.run_dir / "best.pt")
        for old in self.numbered()[self.keep_last:]:
            if old != path:
                _unlink_quietly(old)
        return path

    def remove_leftovers(self) -> list[Path]:
        """Delete temporary files of saves that died part-way (SIGKILL, power loss); returns them."""
        leftovers: list[Path] = []
        for folder, pattern in ((self.dir, ".step-*.tmp"), (self.run_dir, ".*.link"), (self.run_dir, ".*.tmp")):
            if folder.is_dir():
                leftovers += [p for p in folder.glob(pattern) if p.is_file()]
        for p in leftovers:
            _unlink_quietly(p)
        return leftovers

    def set_aside_newer_than(self, step: int) -> list[Path]:
        """Rename numbered checkpoints past `step` to *.pt.unused, so the resumed run's saves are the newest.

        They are unreadable ones skipped by newest_valid, or a later point of a run resumed from an earlier
        checkpoint on purpose. Renamed, not deleted: nothing is lost.
        """
        moved = []
        for p in self.numbered():
            if (step_of(p) or 0) > step:
                target = p.with_name(p.name + ".unused")
                os.replace(p, target)
                moved.append(target)
        return moved

    def newest_valid(self, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads, falling back past broken ones and saying so.

        None when the run has no checkpoint at all; UserError when it has some and none can be read.
        """
        candidates = self.numbered()
        last = self.run_dir / "last.pt"
        if not candidates and last.is_file():
            candidates = [last]
        for path in candidates:
            try:
                return path, load_checkpoint(path, map_location)
            except UserError as exc:
                print(f"alexnet: warning: {exc}; falling back to an older checkpoint", file=sys.stderr)
        if candidates:
            raise UserError(f"none of the {len(candidates)} checkpoints in {self.run_dir} can be read: resume from "
                            "a good copy with --resume PATH or start a new --out")
        return None


def saved_train_settings(run_dir: Path, resume: str | None) -> dict[str, Any] | None:
    """The train section of the config of the run being resumed (what it chose for `auto` settings), or None:
    from the run folder's config.yaml, or the checkpoint's own config for --resume PATH. A config.yaml that does
    not read (damaged, nested past the parser's limit) gives None: `auto` is then decided anew."""
    if not resume:
        return None
    if resume == "auto":
        path = run_dir / "config.yaml"
        try:
            data = yaml.safe_load(path.read_text()) if path.is_file() else None
        except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
            return None
    else:
        data = load_checkpoint(resume, torch.device("cpu")).get("config")
    train = data.get("train") if isinstance(data, dict) else None
    return train if isinstance(train, dict) else None


def require_same_classes(saved: list[str], data: list[str]) -> None:
    """A resumed run must see the classes it was trained on, in the same order: output k of the net means
    class k of the checkpoint, and training on other data would silently give it another meaning."""
    if saved == data:
        return
    first = next((i for i, (a, b) in enumerate(zip(saved, data)) if a != b), min(len(saved), len(data)))
    where = (f"class {first} is '{saved[first]}' in the checkpoint but '{data[first]}' in the data"
             if first < min(len(saved), len(data)) else "one list continues where the other ends")
    raise UserError(f"the checkpoint was trained on {len(saved)} classes, the data has {len(data)} and they differ "
                    f"({where}): resume on the run's own data, or start a new --out")
