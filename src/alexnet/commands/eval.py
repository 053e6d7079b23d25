"""`alexnet eval`: top-1/top-5 error of one checkpoint, or several averaged in probability."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate checkpoints on a validation split",
                              description="Top-1 and top-5 error; several checkpoints are averaged in "
                                          "probability (the paper's ensembles).")
    p.add_argument("checkpoints", nargs="+", type=Path, metavar="CKPT")
    p.add_argument("--data", required=True, help="a prepared store, an image folder, or cifar10")
    p.add_argument("--split", default="val", help="which split of the store (default val)")
    p.add_argument("--ten-crop", action="store_true", help="average the ten views of SPEC section 3")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (none either off a terminal)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", "-b", type=int, default=128, dest="batch_size")
    p.add_argument("--cache", type=Path, default=None,
                   help="where image folders are prepared (default $ALEXNET_CACHE or ~/.cache/alexnet)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.data.loader import BatchLoader
    from alexnet.errors import UserError
    from alexnet.evaluate import evaluate
    from alexnet.files import default_cache_dir
    from alexnet.prepare.resolve import resolve_data
    from alexnet.runtime import pick_device, precision_context
    from alexnet.tools.inference import load_model

    if args.batch_size < 1:
        raise UserError("--batch-size must be positive")
    device = pick_device(args.device)
    loaded = [load_model(p, device) for p in args.checkpoints]
    cfg0, info0 = loaded[0][1], loaded[0][2]
    for path, (_, cfg, info) in zip(args.checkpoints, loaded):
        if info.classes != info0.classes:
            raise UserError(f"{path} was trained on other classes than {args.checkpoints[0]}: "
                            "only checkpoints of the same classes can be averaged")
        if cfg.data.crop != cfg0.data.crop:
            raise UserError(f"{path} takes {cfg.data.crop}-pixel crops, {args.checkpoints[0]} takes "
                            f"{cfg0.data.crop}: average checkpoints of one input size")
    store = resolve_data(args.data, args.cache or default_cache_dir(), cfg0.data.image_size)
    store.verify()  # as train does: a store changed since it was prepared is not evaluated on
    if list(store.classes) != info0.classes:
        raise UserError(f"the data's {len(store.classes)} classes are not the {len(info0.classes)} classes the "
                        "checkpoint was trained on: evaluate on data with the same class folders")
    if store.size != cfg0.data.image_size:
        raise UserError(f"the store holds {store.size}-pixel images but the checkpoint was trained on "
                        f"{cfg0.data.image_size}: prepare the data with --size {cfg0.data.image_size}")
    split = store.split(args.split)
    loader = BatchLoader(split.images, split.labels, args.batch_size, device)
    data_cfg = cfg0.data
    stats = [info.stats(cfg, device) for _, cfg, info in loaded]
    result = evaluate([m for m, _, _ in loaded], loader, data_cfg, stats, args.ten_crop,
                      precision_context(cfg0, device), progress=not args.no_progress and sys.stderr.isatty())
    result.update({"checkpoints": [str(p) for p in args.checkpoints], "views": 10 if args.ten_crop else 1,
                   "split": args.split})
    if args.json:
        print(json.dumps(result))
    else:
        views = "ten crops" if args.ten_crop else "centre crop"
        n = len(args.checkpoints)
        who = f"{n} checkpoints averaged" if n > 1 else str(args.checkpoints[0])
        print(f"{who}, {views}, {result['images']} images: top-1 error {result['top1_error']:.2f}%  "
              f"top-5 error {result['top5_error']:.2f}%")
    return 0
