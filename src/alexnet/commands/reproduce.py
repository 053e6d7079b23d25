"""`alexnet reproduce figure1|ablations`: the paper's claims re-measured on CIFAR-10 (or any store)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CACHE_HELP = "where image folders are prepared (default $ALEXNET_CACHE or ~/.cache/alexnet)"


def _data_and_out(p: argparse.ArgumentParser, out: str, data_help: str) -> None:
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--cache", type=Path, help=CACHE_HELP)
    p.add_argument("--out", type=Path, default=Path(out), help=f"output folder (default {out})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (none either off a terminal)")


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reproduce", help="re-measure the paper's claims: Figure 1 (ReLU vs tanh), ablations, LRN on CIFAR-10",
        description="Re-measure the paper's claims. Runs are ordinary run directories under --out; "
                    "running the same command again continues or skips what is finished.")
    sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    sub.required = True

    f = sub.add_parser(
        "figure1", help="epochs to 25%% training error, ReLU against tanh (paper: 6x faster)",
        description="Train the four-layer net of Figure 1 (preset figure1) with ReLU and with tanh at every rate "
                    "of a log grid, each on the whole training split until the target training error or "
                    "--max-epochs; each activation's rate is the one that gets there in the fewest epochs (the "
                    "grid grows past an edge that wins). Prints the rate table and the ratio; writes "
                    "OUT/figure1.md and OUT/figure1.png.")
    _data_and_out(f, "runs/figure1", "a prepared store, an image folder (prepared once), or cifar10")
    f.add_argument("--setting", choices=("paper", "modern"), default="paper",
                   help="paper: mean-subtracted pixels, N(0, 0.01^2) weights, constant rate (default); modern: "
                        "unit-scaled inputs, PyTorch's init, the rate-drop heuristic")
    f.add_argument("--lr-drop", action="store_true",
                   help="divide the rate by 10 when the training error stalls (the paper's heuristic)")
    f.add_argument("--max-epochs", type=int, default=60, help="epochs at most for each run (default 60)")
    f.add_argument("--target", type=float, default=25.0,
                   help="training error to reach, %% (default 25; another target needs another --out)")
    f.add_argument("--sweep", metavar="LR1,LR2",
                   help="the grid of rates, comma-separated (default 0.0003,0.001,0.003,0.01; modern: "
                        "0.003,0.01,0.03,0.1)")
    f.add_argument("--max-extend", type=int, default=2,
                   help="grid steps added past an edge whose rate is fastest, per side (default 2)")
    f.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process on one core")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--only", choices=("relu", "tanh"),
                   help="train one activation only (to run the two in parallel processes); the ratio and the "
                        "figure come from a run without --only, which reuses both finished grids")
    f.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides of the figure1 preset")
    f.set_defaults(func=run_figure1)

    a = sub.add_parser(
        "ablations", help="the cifar-ingredients preset with each of the paper's ingredients removed in turn",
        description="Train the cifar-ingredients preset (every ingredient of the paper at CIFAR-10 scale; the "
                    "cifar preset until 2026-12-06) as it is and with each ingredient removed (LRN, overlapping "
                    "pooling, two towers, PCA colour noise, dropout, crops and flips), for each seed. Writes "
                    "OUT/ablations.md: validation top-1/top-5 error, mean and std over seeds, beside the "
                    "paper's reported effects. Finished runs are skipped on a re-run.")
    _data_and_out(a, "runs/ablations", "a prepared store, an image folder (prepared once), or cifar10")
    a.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per variant (default 3)")
    a.add_argument("--seed", type=int, metavar="K", help="train seed K only (to run seeds in parallel processes; "
                                                            "the table over all seeds comes from a run without it)")
    a.add_argument("--epochs", type=int, help="epochs per run (default: the preset's); milestones scale with it")
    a.add_argument("--train-images", type=int, default=0, metavar="N",
                   help="train on a fixed random N of the training images (default: all): a reduced budget")
    a.add_argument("--only", metavar="V1,V2",
                   help="run these variants only, comma-separated (all, no-lrn, plain-pooling, one-tower, no-pca, "
                        "no-dropout, no-crops-flips)")
    a.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides of the cifar-ingredients preset")
    a.set_defaults(func=run_ablations)

    lc = sub.add_parser(
        "lrn-cifar", help="the paper's CIFAR-10 net with and without LRN (paper: 11%% and 13%% error)",
        description="Train the cifar-convnet preset (cuda-convnet's layers-conv-local-11pct) with and without "
                    "local response normalization for each seed; multiview (ten views) validation error. Writes "
                    "OUT/lrn-cifar.md and OUT/results.json. Finished runs are skipped on a re-run.")
    _data_and_out(lc, "runs/lrn-cifar",
                  "a CIFAR-10 store (train + val/test splits), an image folder (prepared once), or cifar10")
    lc.add_argument("--schedule", choices=("short", "paper"), default="short",
                    help="short: the preset's 40 epochs (an hour or less per run on 2 CPU cores); paper: the params "
                         "file's methodology, about 470 epochs with a held-out phase (hours on a CPU, for a GPU)")
    lc.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 per net (default 2)")
    lc.add_argument("--seed", type=int, metavar="K", help="train seed K only (for parallel processes)")
    lc.add_argument("--only", choices=("lrn", "no_lrn"), help="train one of the two nets only (for parallel processes)")
    lc.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides of the cifar-convnet preset")
    lc.set_defaults(func=run_lrn_cifar)


def _store(data: str, cache: Path | None, preset: str, overrides: dict, progress: bool):
    from alexnet.config import build_config
    from alexnet.files import default_cache_dir
    from alexnet.prepare.resolve import resolve_data

    cfg = build_config(preset, None, overrides)  # bad keys are reported before any work
    return resolve_data(data, cache or default_cache_dir(), cfg.data.image_size, progress=progress)


def run_figure1(args: argparse.Namespace) -> int:
    import math

    from alexnet.config import parse_assignments
    from alexnet.errors import UserError
    from alexnet.reproduce.common import Stopped
    from alexnet.reproduce.figure1 import DEFAULT_RATES, Figure1Options, reproduce_figure1

    if args.max_epochs < 1 or args.jobs < 1 or args.max_extend < 0:
        raise UserError("--max-epochs and --jobs must be positive, --max-extend at least 0")
    rates = DEFAULT_RATES[args.setting]
    if args.sweep is not None:
        try:
            rates = tuple(float(r) for r in args.sweep.split(","))
        except ValueError:
            raise UserError(f"--sweep {args.sweep}: give learning rates separated by commas, e.g. 0.01,0.03") from None
        if not all(lr > 0 and math.isfinite(lr) for lr in rates):
            raise UserError("--sweep rates must be positive")
    if not 0 < args.target < 100:
        raise UserError("--target is a training error in percent: give a number between 0 and 100")
    overrides = parse_assignments(args.overrides)
    store = _store(args.data, args.cache, "figure1", overrides, _progress(args))
    opts = Figure1Options(target=args.target, max_epochs=args.max_epochs, rates=tuple(sorted(set(rates))),
                          setting=args.setting, lr_drop=args.lr_drop, max_extend=args.max_extend, jobs=args.jobs,
                          seed=args.seed, overrides=overrides, progress=_progress(args),
                          activations=(args.only,) if args.only else ("relu", "tanh"))
    try:
        reproduce_figure1(store, args.out, opts)
    except Stopped as stop:
        return stop.status
    return 0


def run_lrn_cifar(args: argparse.Namespace) -> int:
    from alexnet.config import parse_assignments
    from alexnet.errors import UserError
    from alexnet.reproduce.common import Stopped
    from alexnet.reproduce.lrn_cifar import PRESET, reproduce_lrn_cifar

    if args.seeds < 1:
        raise UserError("--seeds must be positive")
    if args.seed is not None and not 0 <= args.seed < args.seeds:
        raise UserError(f"--seed {args.seed} is outside the seeds 0..{args.seeds - 1}: raise --seeds or lower --seed")
    overrides = parse_assignments(args.overrides)
    store = _store(args.data, args.cache, PRESET, overrides, _progress(args))
    try:
        text, _ = reproduce_lrn_cifar(store, args.out, args.seeds, args.schedule, overrides, args.seed, args.only,
                                      progress=_progress(args))
    except Stopped as stop:
        return stop.status
    print()
    print(text, end="")
    print(f"table: {args.out / 'lrn-cifar.md'}, figures: {args.out / 'results.json'}")
    return 0


def run_ablations(args: argparse.Namespace) -> int:
    from alexnet.config import parse_assignments
    from alexnet.errors import UserError
    from alexnet.reproduce.ablations import PRESET, VARIANTS, reproduce_ablations
    from alexnet.reproduce.common import Stopped

    if args.seeds < 1 or (args.epochs is not None and args.epochs < 1) or args.train_images < 0:
        raise UserError("--seeds and --epochs must be positive, --train-images at least 0")
    if args.seed is not None and not 0 <= args.seed < args.seeds:
        raise UserError(f"--seed {args.seed} is outside the seeds 0..{args.seeds - 1}: raise --seeds or lower --seed")
    variants = VARIANTS
    if args.only:
        names = {v.name for v in VARIANTS}
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown or not wanted:
            raise UserError(f"unknown variant {', '.join(unknown) or repr(args.only)}: choose from "
                            f"{', '.join(sorted(names))}")
        variants = tuple(v for v in VARIANTS if v.name in wanted)
    overrides = parse_assignments(args.overrides)
    store = _store(args.data, args.cache, PRESET, overrides, _progress(args))
    try:
        text = reproduce_ablations(store, args.out, args.seeds, args.epochs, overrides, variants, args.train_images,
                                   only_seed=args.seed, progress=_progress(args))
    except Stopped as stop:
        return stop.status
    print()
    print(text, end="")
    print(f"table: {args.out / 'ablations.md'}")
    return 0
