"""`alexnet predict`: the top classes of image files with their probabilities (Figure 4, left)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="top-k classes of images, with probabilities and a figure",
        description="Classify image files (or folders of them, searched recursively). Each image is decoded "
                    "as `prepare` stores it (shorter side to S, centre S x S) and seen through the centre "
                    "crop, or the ten views with --ten-crop. An image inside a folder named like a class (id "
                    "or name) has that class as its true class: marked in the output and red in the panel.")
    p.add_argument("checkpoint", type=Path, metavar="CKPT")
    p.add_argument("images", nargs="+", metavar="IMAGE|DIR", help="image files or folders of images")
    p.add_argument("--top", type=int, default=5, help="how many classes per image (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--panel", type=Path, metavar="PNG", help="also draw the paper's Figure 4 (left) here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file at --panel")
    p.add_argument("--panel-images", type=int, default=10, metavar="N",
                   help="images in the panel, spread evenly over all given (default 10)")
    p.add_argument("--ten-crop", action="store_true", help="average the ten views (4 corners, centre, mirrored)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--batch-size", "-b", type=int, default=32, dest="batch_size")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.errors import UserError
    from alexnet.runtime import pick_device
    from alexnet.tools.inference import load_model
    from alexnet.tools.predict import collect_images, draw_panel, format_text, predict_files, to_json

    if args.batch_size < 1 or args.panel_images < 1:
        raise UserError("--batch-size and --panel-images must be positive")
    if args.panel is not None:
        from alexnet.files import check_output, figure_suffixes

        check_output(args.panel, "--panel", args.overwrite, [args.checkpoint, *args.images], figure_suffixes())
    files = collect_images(args.images)
    device = pick_device(args.device)
    model, cfg, info = load_model(args.checkpoint, device)
    predictions = predict_files(model, cfg, info, files, args.top, args.ten_crop, device, args.batch_size)
    views = "ten crops" if args.ten_crop else "centre crop"
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "views": views,
                          "predictions": to_json(predictions, info)}))
    else:
        print(format_text(predictions, info))
    if args.panel is not None:
        out = draw_panel(predictions, info, cfg.data.image_size, args.panel, args.panel_images, views=views)
        if not args.json:
            print(f"panel: {out}")
    return 0
