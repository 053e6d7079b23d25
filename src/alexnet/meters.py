"""The training metrics of an epoch, summed on the device so that the host waits for it only when it reads.

A CUDA step is queued, not run, when Python moves on; reading a number back (float(), .item(), bool()) waits
for every queued step. So the loss, correct count and first non-finite step are kept in device tensors and
read at log steps only (train.log_every).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from alexnet.errors import UserError
from alexnet.parallel.ddp import DistContext, all_reduce_sum


class EpochMeter:
    """Loss / correct / samples of the epoch in progress (resumed mid-epoch from `sums`), the loss of the
    current log interval, and the first step whose loss or gradient was not finite."""

    def __init__(self, sums: list[float], device: torch.device, kept_note: Callable[[], str]) -> None:
        self.device, self.kept_note = device, kept_note
        self.sums = torch.tensor(sums, dtype=torch.float64, device=device)
        self.at_start = self.sums.clone()  # the sums at the start already cover all ranks
        self.interval_loss = torch.zeros((), dtype=torch.float64, device=device)
        self.interval_start, self.interval_steps = time.perf_counter(), 0
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, bad: torch.Tensor,
            step: int) -> None:
        n = labels.numel()
        correct = (logits.detach().argmax(1) == labels).sum()
        # torch.full fills on the device; torch.tensor(n, device=...) would copy from the host and so wait
        # for the GPU every step
        self.sums += torch.stack([loss.detach().double() * n, correct.double(),
                                  torch.full((), float(n), dtype=torch.float64, device=self.device)])
        self.interval_loss += loss.detach().double()
        self.interval_steps += 1
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)

    def interval(self, batch_size: int) -> tuple[float, float]:
        """Mean loss and images per second since the last call (a host sync), and a new interval begins."""
        elapsed = time.perf_counter() - self.interval_start
        mean_loss = float(self.interval_loss) / max(self.interval_steps, 1)
        images_per_s = self.interval_steps * batch_size / max(elapsed, 1e-9)
        self.interval_loss.zero_()
        self.interval_start, self.interval_steps = time.perf_counter(), 0
        return mean_loss, images_per_s

    def raise_if_bad(self) -> None:
        step = int(self.first_bad)
        if step >= 0:
            raise UserError(f"the loss or gradient became non-finite at step {step}: lower the learning rate "
                            f"or set on_nonfinite=skip; {self.kept_note()}")

    def totals(self, ctx: DistContext) -> list[float]:
        """The epoch's sums over all ranks (each rank adds only its own share of a batch); called at the same
        steps on every rank."""
        if not ctx.distributed:
            return self.sums.tolist()
        return (self.at_start + all_reduce_sum(self.sums - self.at_start)).tolist()
