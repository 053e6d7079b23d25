"""`alexnet retrieve`: the stored images nearest to a query in fc7 space (the paper's Figure 4, right)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "retrieve", help="nearest images by fc7 vectors (Figure 4, right)",
        description="Find the images of a store whose last hidden layer (fc7) vectors are nearest to each "
                    "query's, by Euclidean distance, exactly. The fc7 vectors of the store are computed once "
                    "(eval mode, centre crop) and kept in --index-cache for the next call.")
    p.add_argument("checkpoint", type=Path, metavar="CKPT")
    p.add_argument("--index", required=True, metavar="DATA",
                   help="the images to search: a prepared store or an image folder (prepared once into --cache)")
    p.add_argument("--query", required=True, nargs="+", metavar="IMAGE|store:N",
                   help="image files, or store:N for image N of the indexed split")
    p.add_argument("-k", type=int, default=6, help="neighbours per query (default 6)")
    p.add_argument("--split", default="train", help="which split of the store to search (default train)")
    p.add_argument("--panel", type=Path, metavar="PNG", help="also draw each query with its neighbours here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file at --panel")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--index-cache", type=Path, metavar="DIR",
                   help="where fc7 indexes are kept (default: a fc7-index folder beside the checkpoint)")
    p.add_argument("--cache", type=Path, default=None,
                   help="where image folders are prepared (default $ALEXNET_CACHE or ~/.cache/alexnet)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--batch-size", "-b", type=int, default=128, dest="batch_size")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while building the index")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from alexnet.errors import UserError
    from alexnet.files import default_cache_dir
    from alexnet.prepare.resolve import resolve_data
    from alexnet.runtime import pick_device
    from alexnet.tools.inference import load_model
    from alexnet.tools.predict import decode
    from alexnet.tools.retrieve import panel_rows, parse_store_query, search

    if args.k < 1 or args.batch_size < 1:
        raise UserError("-k and --batch-size must be positive")
    if args.panel is not None:
        from alexnet.files import check_output, figure_suffixes

        check_output(args.panel, "--panel", args.overwrite, [args.checkpoint, *args.query], figure_suffixes())
    for q in args.query:
        if not q.startswith("store:") and not Path(q).is_file():
            raise UserError(f"--query {q} is neither an image file nor store:N")
    device = pick_device(args.device)
    model, cfg, info = load_model(args.checkpoint, device)
    store = resolve_data(args.index, args.cache or default_cache_dir(), cfg.data.image_size,
                         progress=not args.no_progress)
    store.verify()  # as train does: a store changed since it was prepared is not searched
    if store.size != cfg.data.image_size:
        raise UserError(f"the store holds {store.size}-pixel images but the checkpoint takes "
                        f"{cfg.data.image_size}: prepare the images with --size {cfg.data.image_size}")
    decoded = {}  # queries checked before the index is built: a bad one must neither wait for it nor leave files
    for q in args.query:
        if parse_store_query(q, len(store.split(args.split))) is None:
            decoded[q] = decode(Path(q), cfg.data.image_size)
    cache_dir = args.index_cache or args.checkpoint.parent / "fc7-index"
    progress = not args.no_progress and sys.stderr.isatty()
    found = search(model, cfg, info, store, args.split, args.query, decoded, args.k, cache_dir, device,
                   args.batch_size, progress)
    count = len(found.index.labels)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "index": str(found.index.path), "split": args.split,
                          "indexed_images": count, "results": found.results}))
    else:
        state = "built" if found.index.built else "read"
        print(f"fc7 index of {count} {args.split} images ({found.index.vectors.shape[1]}-d), {state}: "
              f"{found.index.path}")
        for r in found.results:
            print(r["query"])
            for rank, n in enumerate(r["neighbours"], 1):
                print(f"  {rank}. store:{n['index']:<8} distance {n['distance']:10.4f}  {n['name']}")
    if args.panel is not None:
        from alexnet.plots import plot_retrieval

        which = "training" if args.split == "train" else f"'{args.split}'"
        out = plot_retrieval(panel_rows(found, store, args.split), args.panel,
                             f"Nearest {which} images by Euclidean distance of fc7 vectors")
        if not args.json:
            print(f"panel: {out}")
    return 0
