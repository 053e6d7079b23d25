"""`alexnet kernels`: the first layer's kernels as one picture (the paper's Figure 3)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "kernels", help="draw the conv1 kernels (Figure 3)",
        description="Draw every conv1 kernel of a checkpoint as an RGB tile, each contrast-normalised on its "
                    "own; with two towers, tower 1's kernels fill the upper rows and tower 2's the lower.")
    p.add_argument("checkpoint", type=Path, metavar="CKPT")
    p.add_argument("-o", "--out", type=Path, default=Path("kernels.png"),
                   help="image file: .png, .pdf, .svg, ... (default kernels.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file at -o")
    p.add_argument("--colour", action="store_true",
                   help="also print each tower's colour share: how much of each kernel's energy lies in the "
                        "differences between R, G and B rather than in their mean (0 grey, 1 pure colour)")
    p.add_argument("--json", action="store_true", help="with --colour: the figure's path and the shares as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.errors import UserError
    from alexnet.files import check_output, figure_suffixes
    from alexnet.plots import plot_kernels
    from alexnet.tools.inference import load_model

    check_output(args.out, "-o", args.overwrite, [args.checkpoint], figure_suffixes())
    model, cfg, _ = load_model(args.checkpoint)
    weight = model.features[0].weight.detach().cpu().numpy()
    if weight.shape[1] != 3:
        raise UserError(f"conv1 of {args.checkpoint} takes {weight.shape[1]} channels, not RGB: nothing to draw")
    path = plot_kernels(weight, cfg.model.towers, args.out)
    if not args.colour:
        print(path)
        return 0
    from alexnet.tools.kernels import colour_report

    report = colour_report(weight, cfg.model.towers)
    if args.json:
        import json

        print(json.dumps({"figure": str(path), "towers": report}))
        return 0
    print(path)
    print("colour share of the conv1 kernels (0: grey, 1: pure colour)")
    for r in report:
        print(f"  tower {r['tower']}: {r['kernels']} kernels, mean {r['mean']:.2f}, quartiles {r['q25']:.2f} / "
              f"{r['median']:.2f} / {r['q75']:.2f}, mostly colour (> 0.5): {r['mostly_colour']}")
    return 0
