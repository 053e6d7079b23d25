"""Local response normalization, forward + backward: alexnet.lrn.layer against torch.nn.LocalResponseNorm.

Usage: .venv/bin/python benchmarks/bench_lrn.py [--quick] [--repeats N] [--threads N] [--cpu-time]

Times both on the paper's two LRN layers at batch 128 (conv1: 128x96x55x55, conv2: 128x256x27x27, each
two towers), in contiguous and channels_last memory format, and prints a markdown table with the best
wall time of N runs in milliseconds and the ratio plain / ours. The plain way applies
torch.nn.LocalResponseNorm to each tower's half and concatenates, as a model without alexnet.lrn.layer would.
The two are timed in alternation, so a busy machine slows both alike; the load average is printed
before and after. --quick uses batch 16 and 2 runs (a smoke test, not for quoting). On a machine
shared with other busy processes wall times swing by several times; --cpu-time runs on one thread and
times the CPU time of that thread instead, which other processes disturb far less.

Environment worth knowing on CPU: every fresh full-batch tensor costs page faults on first touch, and
THP_MEM_ALLOC_ENABLE=1 (read by PyTorch at start-up) backs large tensors with huge pages, which makes
both columns faster.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from alexnet.lrn.layer import local_response_norm

SIZE, ALPHA, BETA, K, TOWERS = 5, 1e-4, 0.75, 2.0, 2
LAYERS = {"conv1": (96, 55), "conv2": (256, 27)}  # channels, height = width


def plain_lrn(x: torch.Tensor) -> torch.Tensor:
    layer = torch.nn.LocalResponseNorm(SIZE, ALPHA, BETA, K)
    return torch.cat([layer(half) for half in x.chunk(TOWERS, dim=1)], dim=1)


def ours_lrn(x: torch.Tensor) -> torch.Tensor:
    return local_response_norm(x, SIZE, ALPHA, BETA, K, groups=TOWERS)


def forward_backward_seconds(fn, x: torch.Tensor, grad: torch.Tensor, clock) -> float:
    x.grad = None
    start = clock()
    fn(x).backward(grad)
    return clock() - start


def best_ms_side_by_side(fns, x: torch.Tensor, grad: torch.Tensor, repeats: int, clock) -> list[float]:
    """Best forward + backward time of each function, run in turn, after one warm-up run each."""
    best = [float("inf")] * len(fns)
    for run in range(repeats + 1):
        for index, fn in enumerate(fns):
            seconds = forward_backward_seconds(fn, x, grad, clock)
            if run > 0:
                best[index] = min(best[index], seconds)
    return [seconds * 1e3 for seconds in best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 16, 2 runs: a smoke test")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--cpu-time", action="store_true", help="one thread, timed by its CPU time")
    args = parser.parse_args()
    if args.cpu_time:
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    clock, unit = (time.thread_time, "CPU ms") if args.cpu_time else (time.perf_counter, "ms")
    batch = 16 if args.quick else 128
    repeats = args.repeats or (2 if args.quick else 5)

    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "unset")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()} "
          f"({os.cpu_count()} cores), THP_MEM_ALLOC_ENABLE={thp}, float32, best of {repeats}, "
          f"load average {os.getloadavg()[0]:.1f} at start\n")
    columns = f"torch.nn.LocalResponseNorm {unit} | alexnet.lrn.layer {unit}"
    print(f"| layer | shape | memory format | {columns} | ratio |")
    print("|---|---|---|---:|---:|---:|")
    formats = (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last))
    for name, (channels, side) in LAYERS.items():
        for fmt_name, fmt in formats:
            torch.manual_seed(0)
            x = torch.randn(batch, channels, side, side).relu_().contiguous(memory_format=fmt)
            x.requires_grad_(True)
            grad = torch.randn_like(x)
            plain, ours = best_ms_side_by_side([plain_lrn, ours_lrn], x, grad, repeats, clock)
            shape = f"{batch}x{channels}x{side}x{side}"
            print(f"| {name} | {shape} | {fmt_name} | {plain:.1f} | {ours:.1f} | {plain / ours:.1f}x |")
    print(f"\nload average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
