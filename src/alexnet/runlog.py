"""A run's folder and what is logged into it: config.yaml, metrics.jsonl, TensorBoard events, curves.png.

Only rank 0 writes. Logging never stops a run: a full disk loses a metrics line or an event file, with one
warning, while the checkpoints (which guard the weights) report their own failures.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from alexnet.checkpoint import lock_run_dir
from alexnet.config import Config
from alexnet.errors import UserError
from alexnet.files import atomic_write, loads_json


def prepare_run_dir(run_dir: Path, resume: str | None) -> None:
    """Refuse to write over an existing run unless it is being resumed."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file: choose a directory")
    above = next((p for p in run_dir.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UserError(f"--out {run_dir} lies below {above}, which is a file: choose a directory")
    existing = run_dir.is_dir() and any((run_dir / n).exists() for n in ("config.yaml", "last.pt", "checkpoints"))
    if existing and not resume:
        raise UserError(f"{run_dir} already holds a run: continue it with --resume auto or choose another --out")
    for name, folder in RUN_PATHS.items():  # the run's own paths, refused when something else stands there
        path = run_dir / name
        if not os.path.lexists(path):
            continue
        if folder and (path.is_symlink() or not path.is_dir()):
            raise UserError(f"{path} is not a folder, where the run keeps its {name}: move it away and run again")
        if not folder and (path.is_symlink() or not path.is_file()):
            what = "a symbolic link" if path.is_symlink() else "a folder" if path.is_dir() else "not a regular file"
            raise UserError(f"{path} is {what}, where the run writes its {name}: move it away and run again")


# what a run folder holds: name -> whether it is a folder
RUN_PATHS = {"checkpoints": True, "tensorboard": True, "config.yaml": False, "metrics.jsonl": False,
             "last.pt": False, "best.pt": False, "curves.png": False}


def epoch_line(r: dict[str, Any], epochs: int) -> str:
    """The line printed after each epoch."""
    val = ""
    if "val_top1_error" in r:
        val = f"  val top-1 {r['val_top1_error']:.2f}%  top-5 {r['val_top5_error']:.2f}%"
    drop = "  (lr dropped)" if r.get("lr_dropped") else ""
    return (f"epoch {r['epoch'] + 1}/{epochs}  loss {r['train_loss']:.4f}  train top-1 "
            f"{r['train_top1_error']:.2f}%{val}  lr {r['lr']:.3g}  {r['epoch_time']:.1f}s{drop}")


class RunLog:
    """RUN's lock, config.yaml, metrics.jsonl and TensorBoard events, for rank 0 (a no-op on other ranks)."""

    def __init__(self, run_dir: Path, is_main: bool, curves: bool = True) -> None:
        self.run_dir, self.is_main, self.curves = run_dir, is_main, curves
        self.writer: Any = None
        self.metrics_file: Any = None
        self.lock: int | None = None
        self._warned = False

    def open(self, cfg: Config, resumed: tuple[int, int] | None) -> None:
        """Create and lock RUN (one training process writes it at a time), write config.yaml, drop the
        metrics a killed process logged past the checkpoint resumed from, open the event files.
        `resumed`: (epoch, global step) of that checkpoint."""
        if not self.is_main:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.lock = lock_run_dir(self.run_dir)
            atomic_write(self.run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            if resumed is not None:
                self._trim_metrics(*resumed)
        except OSError as exc:
            self.close()
            raise UserError(f"cannot write to {self.run_dir} ({exc.strerror or exc}): choose a writable "
                            "--out or free some space") from None
        except BaseException:
            self.close()
            raise
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a killed process logged past the checkpoint resumed from
            purge = None if resumed is None else resumed[1] + 1
            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=purge)
        except ImportError:  # tensorboard is a dependency; a broken install only loses the event files
            self.writer = None

    def save_config(self, cfg: Config) -> None:
        """config.yaml again, when the run changed its own config (a budget's epoch count re-planned), so that the
        file says what the checkpoints hold."""
        if not self.is_main:
            return
        try:
            atomic_write(self.run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        except OSError as exc:
            self._failed("config.yaml", exc)

    def close(self) -> None:
        try:
            if self.metrics_file is not None:
                self.metrics_file.close()
            if self.writer is not None:
                self.writer.close()
        except OSError as exc:
            self._failed("logs", exc)
        self.metrics_file = self.writer = None
        lock, self.lock = self.lock, None
        if lock is not None:
            os.close(lock)  # closing releases the lock (so does the process ending, however it ends)

    def say(self, line: str) -> None:
        if self.is_main:
            print(line, flush=True)

    def record(self, record: dict[str, Any]) -> None:
        """One line of metrics.jsonl, and its numbers as TensorBoard scalars."""
        if not self.is_main:
            return
        try:
            if self.metrics_file is None:
                self.metrics_file = open(self.run_dir / "metrics.jsonl", "a")
            self.metrics_file.write(json.dumps(record) + "\n")
            self.metrics_file.flush()
        except OSError as exc:
            self._failed("metrics.jsonl", exc)
        if self.writer is not None:
            try:
                for key, value in record.items():
                    if isinstance(value, (int, float)) and key not in ("epoch", "step", "kind"):
                        self.writer.add_scalar(f"{record['kind']}/{key}", value, record.get("step", 0))
            except OSError as exc:
                self._failed("tensorboard events", exc)
                self.writer = None

    def kernels(self, model: torch.nn.Module, towers: int, step: int) -> None:
        """conv1's kernels as an image in TensorBoard after each epoch: the paper's Figure 3 as it forms."""
        if self.writer is None:
            return
        first = model.features[0]
        # the towers model holds conv1 as one half per device; its grouped weight is the two halves stacked
        weight = first.weight if hasattr(first, "weight") else torch.cat([half.weight.cpu() for half in first])
        if weight.dim() != 4 or weight.shape[1] != 3:
            return  # conv1 of a locally connected or non-RGB net: nothing to draw
        from alexnet.plots import kernel_grid

        grid, _ = kernel_grid(weight.detach().float().cpu().numpy(), towers)
        try:
            self.writer.add_image("conv1/kernels", grid, step, dataformats="HWC")
        except OSError as exc:
            self._failed("tensorboard events", exc)

    def hparams(self, cfg: Config, best_error: float, epochs: int) -> None:
        """The run's config as TensorBoard hparams, with the final metrics, so that runs compare in its table."""
        if self.writer is None:
            return
        flat = {f"{section}.{key}": (value if isinstance(value, (int, float, str, bool)) else str(value))
                for section, values in cfg.to_dict().items() if isinstance(values, dict)
                for key, value in values.items()}
        final = {"hparam/best_val_top1_error": best_error if math.isfinite(best_error) else 100.0,
                 "hparam/epochs": float(epochs)}
        try:
            self.writer.add_hparams(flat, final, run_name="hparams")
        except OSError as exc:
            self._failed("tensorboard hparams", exc)

    def plot_curves(self) -> None:
        if not self.is_main or not self.curves:
            return
        try:
            from alexnet.plots import plot_curves

            plot_curves([self.run_dir], self.run_dir / "curves.png")
        except Exception as exc:  # a figure must never stop a training run
            print(f"alexnet: warning: curves.png not written ({exc})", file=sys.stderr)

    def _failed(self, what: str, exc: OSError) -> None:
        if not self._warned:
            print(f"alexnet: warning: {what} not written ({exc.strerror or exc}); training goes on", file=sys.stderr)
            self._warned = True

    def _trim_metrics(self, epoch: int, global_step: int) -> None:
        """Drop metrics.jsonl lines logged after the checkpoint resumed from (a killed process's future, which
        the resumed run logs again) and a last line cut short by a kill, so each step appears once."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        kept, dropped = [], 0
        for line in path.read_text().splitlines():
            try:
                record = loads_json(line)
                keep = (record["epoch"] < epoch if record.get("kind") == "epoch"
                        else record.get("step", 0) <= global_step)
            except (ValueError, KeyError, TypeError, AttributeError):
                keep = False
            if keep:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            atomic_write(path, "".join(line + "\n" for line in kept))
