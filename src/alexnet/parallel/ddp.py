"""Processes and devices: torchrun's environment, the process group, elastic restarts.

Launch with `alexnet train --nproc N ...` or `torchrun --nproc-per-node N -m alexnet train ...`: rank,
local rank and world size come from torchrun's environment variables. NCCL on GPUs, gloo on CPUs.

Elastic restarts: torchrun --max-restarts R restarts every worker when one fails, with
TORCHELASTIC_RESTART_COUNT counting the restarts. A restarted worker resumes the run from its newest
checkpoint, but only a run started by the same torchrun job (TORCHELASTIC_RUN_ID, recorded in
RUN/.torchrun-job): a first attempt refused for an existing run directory stays refused.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from alexnet.environment import env_int
from alexnet.files import atomic_write
from alexnet.runtime import pick_device


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> DistContext:
    """Read torchrun's environment; start the process group when there is more than one process."""
    world = env_int("WORLD_SIZE", 1, 1)
    rank = env_int("RANK", 0, 0)
    local_rank = env_int("LOCAL_RANK", 0, 0)
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        device_id = device if device.type == "cuda" else None
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if attempt is None:
            dist.init_process_group(backend=backend, device_id=device_id)
        else:
            # torchrun keeps one key-value store across restarts, where the workers of a failed attempt left
            # their addresses: a restarted worker could read a dead peer's and fail to connect (seen with
            # gloo; pytorch/pytorch#167288 for NCCL). Each attempt gets keys of its own.
            store, _, _ = next(dist.rendezvous("env://"))
            store = dist.PrefixStore(f"alexnet/attempt-{attempt}/", store)
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world, device_id=device_id)
    return DistContext(rank, world, local_rank, device)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class StopFlag:
    """Set by SIGTERM/SIGINT. The handler only records the signal; the loop acts at a step boundary.

    A second Ctrl-C (SIGINT) stops at once, without the checkpoint: for someone who cannot wait for the
    step to finish. The atomic save means even that leaves no broken file.
    """

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum


def agreed_stop(stop: StopFlag, ctx: DistContext, at_sync_point: bool) -> int:
    """The signal every rank stops for at this step boundary (0: go on).

    One process: its own flag, a Python int, at every step. Several: all ranks must stop at the same step, so
    they agree with one max-reduce, and only at sync points (log steps and epoch ends), where the host waits
    for the device anyway: a signal is acted on at most train.log_every steps late, and the host never syncs
    more often than that."""
    if not ctx.distributed:
        return stop.signum
    if not at_sync_point:
        return 0
    flag = torch.tensor([stop.signum], dtype=torch.int64, device=ctx.device)
    all_reduce_max(flag)
    stop.signum = stop.signum or int(flag[0])
    return stop.signum


JOB_FILE = ".torchrun-job"


def elastic_resume(run_dir: Path) -> str | None:
    """'auto' in a worker restarted by torchrun for the job that started `run_dir`, else None."""
    if env_int("TORCHELASTIC_RESTART_COUNT", 0, 0) < 1:
        return None
    try:
        recorded = (run_dir / JOB_FILE).read_text().strip()
    except OSError:
        return None
    return "auto" if recorded == os.environ.get("TORCHELASTIC_RUN_ID", "") else None


def mark_elastic_job(run_dir: Path) -> None:
    """Record the torchrun job that owns `run_dir` (nothing outside torchrun).

    Rank 0 marks while the other ranks of a restarted job read the mark (elastic_resume) to decide whether
    to resume: a file truncated and rewritten in place could show them an empty mark, and a rank that then
    started afresh beside one resuming would run different collectives. So the mark is left alone when it
    already names this job (every restart), and otherwise replaced whole (a new file renamed over it)."""
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    if not job:
        return
    mark = run_dir / JOB_FILE
    try:
        if mark.is_file() and mark.read_text().strip() == job:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(mark, job + "\n")
    except OSError:
        pass  # an unwritable directory is reported when the run writes its config
