"""`alexnet plot`: training curves of one or several runs (error per epoch, learning-rate drops)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plot", help="draw training curves of runs",
        description="Top-1 error (training and validation), top-5 validation error and the learning rate per "
                    "epoch, read from RUN/metrics.jsonl; several runs are overlaid, one colour each.")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories")
    p.add_argument("-o", "--out", type=Path, default=Path("curves.png"), help="PNG file (default curves.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.errors import UserError
    from alexnet.plots import plot_curves, read_metrics

    for run_dir in args.runs:
        if not run_dir.is_dir():
            raise UserError(f"{run_dir} is not a run directory: pass the --out folder of `alexnet train`")
        if not (run_dir / "metrics.jsonl").is_file():
            raise UserError(f"{run_dir} has no metrics.jsonl: pass the --out folder of `alexnet train`")
        if not read_metrics(run_dir):
            raise UserError(f"{run_dir}/metrics.jsonl has no finished epoch yet: plot it after the first epoch")
    if args.out.is_dir() or not args.out.parent.is_dir():
        raise UserError(f"-o {args.out} must name a file in an existing folder")
    print(plot_curves(args.runs, args.out))
    return 0
