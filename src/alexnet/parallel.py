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
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from alexnet.checkpoint import atomic_write_text
from alexnet.errors import UserError


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


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """auto: this rank's GPU when there is one, else the CPU. Asking for CUDA without one is bad input."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} was asked for but no CUDA GPU is visible: use --device cpu")
        if name == "cuda":
            return torch.device(f"cuda:{local_rank}")
        index = torch.device(name).index or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) are visible")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise UserError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N")


def env_int(name: str, default: int, minimum: int) -> int:
    """A whole number from the environment (torchrun sets these); UserError naming the variable otherwise."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not a whole number: unset it or fix it") from None
    if value < minimum:
        raise UserError(f"environment variable {name}={value} must be at least {minimum}: unset it or fix it")
    return value


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
        atomic_write_text(job + "\n", mark)
    except OSError:
        pass  # an unwritable directory is reported when the run writes its config
