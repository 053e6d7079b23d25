"""Checkpoints: atomic saves, the last k kept plus best, exact resume state, safe loading.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
torch.load(weights_only=True): no code runs from a checkpoint file. Writes go to a temporary file in the
same directory, are fsynced, then os.replace'd into place: a reader sees the old file or the new one,
never half of one. RUN/checkpoints/step-NNNNNNNN.pt are the numbered saves; RUN/last.pt and RUN/best.pt
are hard links to the newest and the best (copies where links are not possible).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from alexnet.errors import UserError

FORMAT = "alexnet-checkpoint/1"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file beside `path`, fsync, rename over `path`. On failure nothing changes."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Make dst name the same file as src, atomically (dst is never missing or partial)."""
    tmp = dst.with_name(f".{dst.name}.link")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load safely (weights_only): UserError when the file is missing, not a checkpoint or unsafe."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle errors, truncation, refused globals: all mean "not a usable checkpoint"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a readable alexnet checkpoint ({first[:160]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not an alexnet checkpoint (no '{FORMAT}' marker)")
    return ckpt


class CheckpointManager:
    """Numbered saves in RUN/checkpoints, the newest k kept, RUN/last.pt and RUN/best.pt maintained."""

    def __init__(self, run_dir: str | Path, keep_last: int = 2) -> None:
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "checkpoints"
        self.keep_last = keep_last

    def numbered(self) -> list[Path]:
        """Numbered checkpoints, newest first."""
        if not self.dir.is_dir():
            return []
        return sorted(self.dir.glob("step-*.pt"), key=lambda p: p.name, reverse=True)

    def save(self, state: dict[str, Any], global_step: int, is_best: bool) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        state = dict(state, format=FORMAT)
        path = self.dir / f"step-{global_step:09d}.pt"
        atomic_save(state, path)
        _link_or_copy(path, self.run_dir / "last.pt")
        if is_best:
            _link_or_copy(path, self.run_dir / "best.pt")
        for old in self.numbered()[self.keep_last:]:
            try:
                old.unlink()
            except OSError:
                pass
        return path

    def newest_valid(self, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads, falling back past broken ones and saying so."""
        candidates = self.numbered()
        last = self.run_dir / "last.pt"
        if not candidates and last.is_file():
            candidates = [last]
        for path in candidates:
            try:
                return path, load_checkpoint(path, map_location)
            except UserError as exc:
                print(f"alexnet: warning: {exc}; falling back to an older checkpoint", file=sys.stderr)
        return None
