"""`alexnet train`: train a preset on a store, an image folder or cifar10.

--nproc N replaces this process by torchrun (torch.distributed.run --standalone) running N copies of the
same command, after the checks that need no processes (config, run directory, data prepared once here).
--towers DEV0,DEV1 places the paper's two towers on two devices (src/alexnet/parallel/towers.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from alexnet.config import PRESETS


def preset_values(key: str) -> str:
    """'paper 0.01, one-tower 0.01, cifar 0.02, ...': a key's value in each preset, for the help texts."""
    from alexnet.config import build_config

    return ", ".join(f"{name} {_get(build_config(name), key)}" for name in PRESETS)


def _get(cfg: object, key: str) -> object:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a network",
        description="Train a preset. Extra key=value arguments override config keys (lr=0.02 model.lrn=false).",
    )
    p.add_argument("--preset", default="paper", help=" | ".join(PRESETS) + " (default paper)")
    p.add_argument("--data", required=True, help="a prepared store, an image folder (prepared once into --cache), "
                                                  "or cifar10")
    p.add_argument("--cache", type=Path, help="where image folders are prepared into stores (default "
                                              "$ALEXNET_CACHE or ~/.cache/alexnet)")
    p.add_argument("--out", required=True, type=Path, help="run directory (config, metrics, checkpoints)")
    p.add_argument("--epochs", type=int,
                   help=f"number of epochs (default: the preset's: {preset_values('train.epochs')})")
    p.add_argument("--budget", metavar="DURATION",
                   help="train for this much wall-clock time, validation included (90s, 30m, 2h, 1h30m): the "
                        "epoch count is chosen to fit from timed steps and checked after every epoch")
    p.add_argument("--config", type=Path, help="YAML file of config overrides")
    p.add_argument("--resume", help="auto (newest valid checkpoint of --out) or a checkpoint path")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--batch-size", "-b", type=int, dest="batch_size",
                   help=f"global batch size (default: the preset's: {preset_values('optim.batch_size')})")
    p.add_argument("--lr", type=float,
                   help=f"base learning rate (default: the preset's: {preset_values('optim.lr')}; "
                        "`alexnet config --preset P` shows every value)")
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this machine (one per GPU), launched through torchrun")
    p.add_argument("--max-restarts", type=int, default=0, metavar="N",
                   help="with --nproc: restart all processes up to N times when one fails; they resume from the "
                        "newest checkpoint (set train.checkpoint_every to lose little)")
    p.add_argument("--towers", metavar="DEV0,DEV1",
                   help="the paper's model parallelism: tower 1 on DEV0, tower 2 on DEV1 (e.g. cuda:0,cuda:1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true",
                   help="check the config, data and run folder, print parameters, multiply-adds, steps per epoch, "
                        "memory and a time estimate from a few timed steps; write nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: print the report as one JSON object")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.config import build_config, parse_assignments
    from alexnet.errors import UserError

    overrides = parse_assignments(args.overrides)
    if args.budget is not None:
        from alexnet.budget import parse_duration

        if args.epochs is not None:
            raise UserError("--budget chooses the epoch count to fit the time: drop --epochs (or --budget)")
        overrides["train.budget_s"] = parse_duration(args.budget)
    for key, value in (("train.epochs", args.epochs), ("train.device", args.device), ("train.seed", args.seed),
                       ("optim.batch_size", args.batch_size), ("optim.lr", args.lr)):
        if value is not None:
            overrides[key] = value
    cfg = build_config(args.preset, args.config, overrides)  # validates before anything is launched
    if args.resume and args.resume != "auto" and not Path(args.resume).is_file():
        raise UserError(f"--resume {args.resume}: no such checkpoint (use auto or a checkpoint path)")
    if args.nproc < 1:
        raise UserError("--nproc must be at least 1")
    if args.max_restarts < 0 or (args.max_restarts and args.nproc == 1):
        raise UserError("--max-restarts takes a count >= 0 and goes with --nproc N (N > 1)")
    towers = None
    if args.towers:
        from alexnet.parallel.towers import parse_tower_devices

        if args.nproc > 1 or "LOCAL_RANK" in os.environ:
            raise UserError("--towers places one model on two devices in one process: drop --nproc/torchrun, "
                            "or drop --towers for data parallelism")
        if cfg.model.towers != 2:
            raise UserError(f"--towers needs a two-tower model; this config has model.towers={cfg.model.towers}: "
                            "drop --towers or set towers=2")
        towers = parse_tower_devices(args.towers)
    from alexnet.files import default_cache_dir
    from alexnet.prepare.resolve import resolve_data
    from alexnet.runlog import prepare_run_dir

    cache = args.cache or default_cache_dir()
    if args.dry_run:
        import json

        from alexnet.tools.dryrun import dry_run, format_report

        report = dry_run(cfg, args.data, args.out, args.resume, cache)
        print(json.dumps(report) if args.json else format_report(report))
        return 0
    launcher = args.nproc > 1 and "LOCAL_RANK" not in os.environ
    if launcher and cfg.optim.batch_size % args.nproc:
        raise UserError(f"batch size {cfg.optim.batch_size} does not split evenly over {args.nproc} processes: "
                        "choose a multiple of --nproc (the batch is the global batch)")
    # The run folder is checked before the data is prepared (which can take long), by one process only; a
    # worker restarted by torchrun resumes its job's run (train() decides).
    rank0 = os.environ.get("RANK", "0") == "0"
    if rank0 and "TORCHELASTIC_RESTART_COUNT" not in os.environ:
        prepare_run_dir(args.out, args.resume)
    # Raw images are prepared into a store here, once: N processes (all ranks of a machine, or the launcher
    # before torchrun starts them) find it ready, or wait on its lock while one prepares it.
    store = resolve_data(args.data, cache, cfg.data.image_size, progress=not args.no_progress and rank0)
    if launcher:
        return _run_torchrun(args.nproc, args.max_restarts)

    from alexnet.train import train

    return train(cfg, store, args.out, args.resume, progress=not args.no_progress, towers=towers)


def _run_torchrun(nproc: int, max_restarts: int) -> int:
    """Run this same command in N processes on this machine under torchrun (torch.distributed.run), here.

    This process becomes torchrun's agent, so a signal sent to it (Ctrl-C, a scheduler's SIGTERM) is passed
    on to every worker, each of which saves a checkpoint and exits. The exit status is the workers': 0, 2 for
    bad input, 130/143 after SIGINT/SIGTERM.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    launcher_only = ("--nproc", "--max-restarts")  # the workers run the same command without these
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip or a in launcher_only:
            skip = not skip
            continue
        if not a.startswith(tuple(f"{o}=" for o in launcher_only)):
            argv.append(a)
    sys.stdout.flush()
    launcher = ["--standalone", f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}"]
    try:
        torchrun(get_args_parser().parse_args([*launcher, "-m", "alexnet", *argv]))
    except SignalException as exc:
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        # rank 0 is the one that reports (a bad input's one line is already on stderr)
        rank = 0 if 0 in exc.failures else exc.get_first_failure()[0]
        status = exc.failures[rank].exitcode
        code = status if status > 0 else 128 - status  # -9: killed by SIGKILL -> 137, as a shell says
        print(f"alexnet train: the worker of rank {rank} exited with status {code}", file=sys.stderr)
        return code
    return 0
