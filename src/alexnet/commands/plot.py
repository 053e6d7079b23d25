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
    p.add_argument("-o", "--out", type=Path, default=Path("curves.png"),
                   help="image file: .png, .pdf, .svg, ... (default curves.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file at -o")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.errors import UserError
    from alexnet.files import check_output, figure_suffixes
    from alexnet.plots import plot_curves, read_metrics
    for run_dir in args.runs:
        if not run_dir.is_dir():
            raise UserError(f"{run_dir} is not a run directory: pass the --out folder of `alexnet train`")
        if not (run_dir / "metrics.jsonl").is_file():
            raise UserError(f"{run_dir} has no metrics.jsonl: pass the --out folder of `alexnet train`")
        if not read_metrics(run_dir):
            raise UserError(f"{run_dir}/metrics.jsonl has no finished epoch yet: plot it after the first epoch")
    check_output(args.out, "-o", args.overwrite, [r / "metrics.jsonl" for r in args.runs], figure_suffixes())
    print(plot_curves(args.runs, args.out))
    return 0
