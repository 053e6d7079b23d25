"""`alexnet summary`: each layer's output shape, parameters and multiply-adds, and the totals."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("summary", help="layers, parameters and multiply-adds of a preset")
    p.add_argument("--preset", default="paper")
    p.add_argument("--config", help="YAML file of config overrides")
    p.add_argument("--json", action="store_true", help="print JSON (top-level 'parameters' and 'macs')")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.config import build_config, parse_assignments
    from alexnet.model import AlexNet
    from alexnet.tools.summary import format_table, summarize

    cfg = build_config(args.preset, args.config, parse_assignments(args.overrides))
    s = summarize(AlexNet(cfg.model, cfg.data.crop), cfg.data.crop)
    s["preset"] = args.preset
    if args.json:
        print(json.dumps(s))
    else:
        print(format_table(s, f"preset {args.preset}: input 3x{cfg.data.crop}x{cfg.data.crop}"))
    return 0
