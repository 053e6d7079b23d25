"""`alexnet train`: train a preset on a store, an image folder or cifar10."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a network",
        description="Train a preset. Extra key=value arguments override config keys (lr=0.02 model.lrn=false).",
    )
    p.add_argument("--preset", default="paper", help="paper | one-tower | cifar | figure1 | demo (default paper)")
    p.add_argument("--data", required=True, help="a prepared store, an image folder (prepared once), or cifar10")
    p.add_argument("--out", required=True, type=Path, help="run directory (config, metrics, checkpoints)")
    p.add_argument("--epochs", type=int, help="number of epochs (default: the preset's)")
    p.add_argument("--config", type=Path, help="YAML file of config overrides")
    p.add_argument("--resume", help="auto (newest valid checkpoint of --out) or a checkpoint path")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--batch-size", "-b", type=int, dest="batch_size", help="global batch size (default 128)")
    p.add_argument("--lr", type=float, help="base learning rate (default 0.01)")
    p.add_argument("--nproc", type=int, default=1, help="processes on this machine, launched through torchrun")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.config import build_config, parse_assignments
    from alexnet.errors import UserError

    overrides = parse_assignments(args.overrides)
    for key, value in (("train.epochs", args.epochs), ("train.device", args.device), ("train.seed", args.seed),
                       ("optim.batch_size", args.batch_size), ("optim.lr", args.lr)):
        if value is not None:
            overrides[key] = value
    cfg = build_config(args.preset, args.config, overrides)  # validates before anything is launched
    if args.resume and args.resume != "auto" and not Path(args.resume).is_file():
        raise UserError(f"--resume {args.resume}: no such checkpoint (use auto or a checkpoint path)")
    if args.nproc < 1:
        raise UserError("--nproc must be at least 1")
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _launch_torchrun(args.nproc)

    from alexnet.train import train

    return train(cfg, args.data, args.out, args.resume, progress=not args.no_progress)


def _launch_torchrun(nproc: int) -> int:
    """Re-run this same command under torchrun (torch.distributed.run), N processes on this machine."""
    argv = sys.argv[1:]
    cleaned, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        cleaned.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "alexnet", *cleaned]
    return subprocess.call(cmd)
