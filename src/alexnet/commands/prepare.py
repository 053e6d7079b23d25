"""`alexnet prepare SRC --out STORE`: decode a raw image set once into a memory-mappable store."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="decode raw images once into a store (S x S uint8, mean image, colour PCA)",
        description="Decode a raw image set once into a store: shorter side scaled to S, centre S x S, uint8, "
        "plus the train split's mean image and RGB PCA. SRC: SRC/<class>/<images>, SRC/train + SRC/val, "
        "a flat ILSVRC-2012 validation folder (with --labels or --devkit), ILSVRC2012_img_train.tar, "
        "ILSVRC2012_img_val.tar, cifar-10-python.tar.gz or its folder, or the word cifar10 (download). "
        "Interrupted runs continue where they stopped when started again with the same arguments.",
    )
    p.add_argument("src", metavar="SRC", help="images: folder, archive, or 'cifar10'; or a store, to convert it "
                                              "to --format")
    p.add_argument("--out", required=True, metavar="STORE", help="folder to write the store into")
    p.add_argument("--size", type=int, default=None, metavar="S",
                   help="side of the stored images (default: 256; 32 for CIFAR-10)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="decoding processes (default: all cores)")
    p.add_argument("--strict", action="store_true", help="fail if any file cannot be used instead of skipping it")
    p.add_argument("--val-fraction", type=float, default=0.0, metavar="F",
                   help="move this share of each class into a 'val' split (single-split sources)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --val-fraction choice (default 0)")
    p.add_argument("--labels", metavar="CSV", help="LOC_val_solution.csv labelling a flat validation folder/tar")
    p.add_argument("--devkit", metavar="TGZ",
                   help="ILSVRC2012_devkit_t12.tar.gz: validation labels and class names")
    p.add_argument("--synsets", metavar="TXT", help="LOC_synset_mapping.txt: class names for wnids")
    p.add_argument("--val", metavar="SRC_VAL", help="a separate source for the 'val' split")
    p.add_argument("--overwrite", action="store_true", help="replace a store already at --out")
    p.add_argument("--format", choices=("auto", "raw", "jpeg"), default="auto",
                   help="raw: uint8 pixels (no decoding when training); jpeg: each stored image re-encoded as JPEG, "
                        "about a ninth of the size, decoded per batch; auto (default): raw up to 16 GiB of "
                        "pixels, else jpeg (ImageNet at 256: 252 GB raw, about 27 GB jpeg)")
    p.add_argument("--quality", type=int, default=90, metavar="Q",
                   help="JPEG quality of --format jpeg, 1-100 (default 90)")
    p.add_argument("--chunk-size", type=int, default=None, metavar="N",
                   help="images per resumable unit of work (default: about 64 MB of output)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (none either off a terminal); the summary line is kept")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.prepare.writer import prepare

    prepare(args.src, args.out, size=args.size, workers=args.workers, strict=args.strict,
            val_fraction=args.val_fraction, progress=not args.quiet, seed=args.seed, labels=args.labels,
            encoding=args.format, quality=args.quality,
            devkit=args.devkit, synsets=args.synsets, val=args.val, overwrite=args.overwrite,
            chunk_size=args.chunk_size, bar=not args.no_progress)
    return 0
