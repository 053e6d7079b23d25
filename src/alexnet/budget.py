"""Training to a time budget (`alexnet train --budget 30m`): the epoch count that fits, chosen from measured time.

At the start a few real training steps (the store's own images, read, augmented, stepped on a copy of the model
and optimizer) and a validation batch are timed, and the count is the number of whole epochs, each a training
pass and a validation, that fit in what is left of the budget. After each epoch the count is planned again from
the epochs measured so far (the first estimate cannot see a loader thread sharing the cores, or a machine that
slows down), so the schedule (a linear decay ends at the last epoch) ends at the budget: after the first epoch
the count may go up or down, after later ones only down (a count going up and down would make the linear
rate rise again). Each count is written
into the run's config and checkpoints, and a resumed run carries on with it and with the time already spent.
"""

from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from alexnet.config import Config
from alexnet.data.augment import ColourStats, augment_train, eval_views
from alexnet.errors import UserError
from alexnet.optim import build_optimizer
from alexnet.parallel.ddp import all_reduce_max
from alexnet.runtime import precision_context, use_channels_last

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)([smhd]))+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str) -> float:
    """'90s', '30m', '2h', '1h30m', '1.5h' -> seconds. Anything else is bad input."""
    compact = text.strip().lower().replace(" ", "")
    if not _DURATION.match(compact):
        raise UserError(f"--budget {text!r} is not a duration: write a number and a unit, such as 90s, 30m, 2h or "
                        "1h30m")
    seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(compact))
    if not 0 < seconds < 366 * 86400:
        raise UserError(f"--budget {text!r} must be more than 0 and less than a year")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def plan_epochs(budget_s: float, spent_s: float, epoch_s: float) -> int:
    """Whole epochs of epoch_s seconds that fit in what is left of the budget; at least one."""
    if epoch_s <= 0:
        raise ValueError("an epoch takes a positive time")
    return max(1, math.floor((budget_s - spent_s) / epoch_s))


def replan_epochs(budget_s: float, spent_s: float, done: int, epoch_s: float) -> int:
    """After `done` epochs that took `spent_s` in all: those plus the whole epochs of epoch_s seconds that fit in
    the rest of the budget (none when it is spent); at least `done`, and at least one."""
    more = max(0, math.floor((budget_s - spent_s) / epoch_s)) if epoch_s > 0 else 0
    return max(1, done + more)


@dataclass
class EpochEstimate:
    """Seconds of one epoch's training pass and of its validation, from timed steps."""

    step_s: float
    steps: int
    val_batch_s: float
    val_batches: int

    @property
    def train_s(self) -> float:
        return self.step_s * self.steps

    @property
    def val_s(self) -> float:
        return self.val_batch_s * self.val_batches

    @property
    def total_s(self) -> float:
        return self.train_s + self.val_s


def estimate_epoch(cfg: Config, model: torch.nn.Module, store: Any, device: torch.device, stats: ColourStats,
                   steps_per_epoch: int, val_images: int, timed: int = 2) -> EpochEstimate:
    """Time `timed` training steps (after one untimed: kernels compile, memory settles) on the store's first images,
    read and augmented as training does, on a copy of the model and optimizer (the run's own are untouched, and
    the random state is restored), and one validation batch."""
    batch = cfg.optim.batch_size
    split = store.split("train")
    n = min(batch, len(split))
    index = torch.arange(n)
    model = copy.deepcopy(model).train()
    optimizer = build_optimizer(model, cfg.optim)
    autocast = precision_context(cfg, device)
    labels = torch.as_tensor(split.labels[:n], dtype=torch.int64, device=device)

    def read() -> torch.Tensor:
        return torch.from_numpy(np.array(split.images[:n])).to(device)  # a copy, as the loader's buffers are

    def step() -> None:
        x = augment_train(read(), index, cfg.data, stats, cfg.train.seed, 0)
        if not use_channels_last(cfg, device):
            x = x.contiguous()
        with autocast:
            logits = model(x)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.optim.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        times = [_timed(step, device) for _ in range(timed + 1)][1:]
        model.eval()
        with torch.no_grad():
            def val_step() -> None:
                with autocast:
                    model(eval_views(read(), cfg.data, stats, cfg.train.eval_ten_crop))
            val_s = min(_timed(val_step, device) for _ in range(2))
    step_s = sorted(times)[len(times) // 2] * batch / n
    return EpochEstimate(step_s, steps_per_epoch, val_s * batch / n, math.ceil(val_images / batch))


def _timed(fn: Any, device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def plan_budget(cfg: Config, model: torch.nn.Module, store: Any, device: torch.device, stats: ColourStats,
                steps_per_epoch: int, val_images: int, started: float) -> str:
    """Set cfg.train.epochs for cfg.train.budget_s from timed steps, every rank taking the slowest rank's time;
    the line to print."""
    est = estimate_epoch(cfg, model, store, device, stats, steps_per_epoch, val_images)
    epoch_s = float(all_reduce_max(torch.tensor(est.total_s, dtype=torch.float64, device=device)))
    spent = time.perf_counter() - started
    cfg.train.epochs = plan_epochs(cfg.train.budget_s, spent, epoch_s)
    return (f"budget {format_duration(cfg.train.budget_s)}: {cfg.train.epochs} epochs of about "
            f"{format_duration(epoch_s)} (training {format_duration(est.train_s)}, validation "
            f"{format_duration(est.val_s)}; estimated from timed steps, {format_duration(spent)} spent setting up)")


def replan_budget(cfg: Config, epoch_times: list[float], elapsed_s: float, done: int, device: torch.device) -> str:
    """After each epoch: cfg.train.epochs again, from the slowest epoch this process has run (every rank takes the
    slowest rank's), so that the schedule ends at the budget; the line to print when the count changed, else ''.
    The first epoch's measurement may raise the start's estimate or lower it; later ones only lower it."""
    slowest = float(all_reduce_max(torch.tensor(max(epoch_times), dtype=torch.float64, device=device)))
    spent = float(all_reduce_max(torch.tensor(elapsed_s, dtype=torch.float64, device=device)))
    epochs = replan_epochs(cfg.train.budget_s, spent, done, slowest)
    if done > 1:  # after the first epoch's correction only fewer: a count going up and down would bend the schedule
        epochs = min(epochs, cfg.train.epochs)
    if epochs == cfg.train.epochs:
        return ""
    before, cfg.train.epochs = cfg.train.epochs, epochs
    return (f"budget: {format_duration(spent)} spent after epoch {done}, epochs of about {format_duration(slowest)}: "
            f"{epochs} epochs in all (was {before})")
