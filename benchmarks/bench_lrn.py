"""Local response normalization, forward + backward: alexnet.ops against torch.nn.LocalResponseNorm.

Usage: .venv/bin/python benchmarks/bench_lrn.py [--quick] [--repeats N]

Times both on the paper's two LRN layers at batch 128 (conv1: 128x96x55x55, conv2: 128x256x27x27, each
two towers), in contiguous and channels_last memory format, and prints a markdown table with the best
time of N runs in milliseconds and the ratio plain / ours. The plain way applies
torch.nn.LocalResponseNorm to each tower's half and concatenates, as a model without alexnet.ops would.
--quick uses batch 16 and 3 runs (a smoke test, not for quoting).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from alexnet.ops import local_response_norm

SIZE, ALPHA, BETA, K, TOWERS = 5, 1e-4, 0.75, 2.0, 2
LAYERS = {"conv1": (96, 55), "conv2": (256, 27)}  # channels, height = width


def plain_lrn(x: torch.Tensor) -> torch.Tensor:
    layer = torch.nn.LocalResponseNorm(SIZE, ALPHA, BETA, K)
    return torch.cat([layer(half) for half in x.chunk(TOWERS, dim=1)], dim=1)


def ours_lrn(x: torch.Tensor) -> torch.Tensor:
    return local_response_norm(x, SIZE, ALPHA, BETA, K, groups=TOWERS)


def best_ms(fn, x: torch.Tensor, grad: torch.Tensor, repeats: int) -> float:
    """Best wall time of forward + backward over `repeats` runs, after one warm-up run."""
    times = []
    for _ in range(repeats + 1):
        x.grad = None
        start = time.perf_counter()
        fn(x).backward(grad)
        times.append(time.perf_counter() - start)
    return min(times[1:]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 16, 3 runs: a smoke test")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 5)")
    args = parser.parse_args()
    batch = 16 if args.quick else 128
    repeats = args.repeats or (3 if args.quick else 5)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or 'cpu'}, "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}, "
          f"best of {repeats}, forward + backward, float32\n")
    print("| layer | shape | memory format | torch.nn.LocalResponseNorm ms | alexnet.ops ms | ratio |")
    print("|---|---|---|---:|---:|---:|")
    for name, (channels, side) in LAYERS.items():
        for fmt_name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
            torch.manual_seed(0)
            x = torch.randn(batch, channels, side, side).relu_().contiguous(memory_format=fmt)
            x.requires_grad_(True)
            grad = torch.randn_like(x)
            plain = best_ms(plain_lrn, x, grad, repeats)
            ours = best_ms(ours_lrn, x, grad, repeats)
            shape = f"{batch}x{channels}x{side}x{side}"
            print(f"| {name} | {shape} | {fmt_name} | {plain:.1f} | {ours:.1f} | {plain / ours:.1f}x |")


if __name__ == "__main__":
    main()
