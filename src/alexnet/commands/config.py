"""`alexnet config`: the resolved config of a preset as YAML, or every key with its type, default and meaning."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "config", help="show the resolved config of a preset, or every key (--keys)",
        description="Print the config a run would use: defaults <- preset <- --config file <- KEY=VALUE, as the "
                    "YAML that `alexnet train --config` reads. --keys lists every key with its type, default, "
                    "allowed values and meaning instead.")
    p.add_argument("--preset", default="paper", help="the preset to resolve (default paper)")
    p.add_argument("--config", type=Path, help="YAML file of config overrides")
    p.add_argument("--keys", action="store_true", help="list every key: type, default, allowed values, meaning")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from alexnet.config import build_config, key_docs, parse_assignments

    cfg = build_config(args.preset, args.config, parse_assignments(args.overrides))
    if not args.keys:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    resolved = cfg.to_dict()
    for row in key_docs():
        section, name = row["key"].split(".", 1)
        value = resolved[section][name]
        shown = f"{value!r}" if value == row["default"] else f"{value!r} (default {row['default']!r})"
        choices = f"  one of: {', '.join(row['choices'])}" if row["choices"] else ""
        print(f"{row['key']}  [{row['type']}]  = {shown}{choices}")
        if row["meaning"]:
            print(f"    {row['meaning']}")
    return 0
