"""`alexnet demo`: the whole system on generated images, offline, in a few minutes on a CPU."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

MARKER = ".alexnet-demo"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="generate images, prepare, train a small net, evaluate, draw figures",
        description="Generates a small labelled set of shape images (generated, not photographs), prepares "
                    "it into a store, trains the reduced `demo` preset with the same code as the paper's "
                    "net, evaluates with ten crops and writes the conv1 kernels and the training curves.")
    p.add_argument("--out", type=Path, default=Path("demo"), help="demo directory (default ./demo)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--train-per-class", type=int, default=300)
    p.add_argument("--val-per-class", type=int, default=60)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (none either off a terminal)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for the demo preset")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.config import build_config, parse_assignments
    from alexnet.errors import UserError
    from alexnet.prepare.synthetic import CLASSES
    from alexnet.tools.demo import evaluate_run, make_data
    from alexnet.train import train

    out: Path = args.out
    if args.epochs < 1 or args.train_per_class < 2 or args.val_per_class < 1:
        raise UserError("--epochs, --train-per-class (>= 2) and --val-per-class must be positive")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: choose a folder for the demo")
    if out.exists() and not (out / MARKER).exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not a demo directory: choose another --out")
    overrides = parse_assignments(args.overrides)
    overrides.update({"train.epochs": args.epochs, "train.device": args.device})
    cfg = build_config("demo", None, overrides)
    if out.exists():
        shutil.rmtree(out)  # an earlier demo: start it afresh
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by `alexnet demo`; safe to delete\n")
    start = time.perf_counter()

    print(f"[1/4] generating {len(CLASSES)} classes of shape images (generated, not real photographs) "
          f"in {out / 'images'}, [2/4] preparing them into a store at {out / 'store'}", flush=True)
    store = make_data(out, args.train_per_class, args.val_per_class, cfg.data.image_size)
    print(f"[3/4] training the `demo` preset (two towers, LRN, overlapping pooling, dropout, PCA colour "
          f"noise, the paper's SGD) for {cfg.train.epochs} epochs", flush=True)
    run_dir = out / "run"
    status = train(cfg, str(store), run_dir, progress=not args.no_progress)
    if status:
        return status

    print("[4/4] evaluating the best checkpoint with ten crops", flush=True)
    result = evaluate_run(run_dir, store, progress=not args.no_progress and sys.stderr.isatty())
    minutes = (time.perf_counter() - start) / 60
    print()
    print(f"ten-crop validation error on {result['images']} generated images: top-1 {result['top1_error']:.2f}%  "
          f"top-5 {result['top5_error']:.2f}%  (chance: top-1 {result['chance_top1_error']:.0f}%)  "
          f"in {minutes:.1f} min")
    print(f"conv1 kernels:   {result['kernels']}")
    print(f"training curves: {run_dir / 'curves.png'}")
    print(f"metrics:         {run_dir / 'metrics.jsonl'}   (TensorBoard: tensorboard --logdir {run_dir})")
    print("next steps:")
    ckpt = run_dir / "best.pt"
    print(f"  alexnet eval {ckpt} --data {out / 'store'} --ten-crop")
    print(f"  alexnet predict {ckpt} {out / 'images' / 'val'}/*/*_00000.png --top 5 --panel predictions.png")
    print(f"  alexnet retrieve {ckpt} --index {out / 'store'} --query "
          f"{out / 'images' / 'val' / 'ring' / 'ring_00000.png'} -k 6 --panel retrieval.png")
    print(f"  alexnet kernels {ckpt} -o kernels.png    alexnet plot {run_dir} -o curves.png")
    print(f"  alexnet export {ckpt} --format onnx -o demo.onnx")
    return 0
