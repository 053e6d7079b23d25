"""`alexnet import-torchvision`: torchvision's alexnet weights as a checkpoint every command can use."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import-torchvision", help="turn torchvision alexnet weights into a one-tower checkpoint",
        description="Read a torchvision alexnet state_dict (.pth, e.g. alexnet-owt-7be5be79.pth) and write a "
                    "checkpoint of the one-tower preset: the 1000 ILSVRC-2012 wnids in sorted order with "
                    "torchvision's category names, torchvision's normalisation and ImageNet's RGB PCA. The "
                    "checkpoint works with predict, retrieve, eval, kernels and export.")
    p.add_argument("weights", type=Path, metavar="WEIGHTS.pth")
    p.add_argument("-o", "--out", type=Path, required=True, help="checkpoint file to write")
    p.add_argument("--classes", type=Path, metavar="FILE",
                   help="for a head other than ImageNet's 1000: one class id per line, optionally then a name")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at -o")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.tools.torchvision_weights import import_torchvision

    out = import_torchvision(args.weights, args.out, args.classes, args.overwrite)
    print(f"wrote {out} (preset one-tower)")
    return 0
