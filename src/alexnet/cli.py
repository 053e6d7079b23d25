"""The `alexnet` command: argparse subcommands, each a thin call into one module."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from alexnet.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit status 2, as for every bad input
        self.exit(2, f"{self.prog}: error: {UserError(message)} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    import alexnet.commands as commands
    from alexnet import __version__

    parser = _Parser(prog="alexnet", description="The 2012 ImageNet network: train, evaluate, inspect.")
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"alexnet.commands.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning: on a CPU shared with other work spinning threads take the
    # cores the working ones need (docs/PERFORMANCE.md, "Design measurements").
    # Read once, when torch loads (commands import it in run), so set here; a value the user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
    except UserError as exc:
        print(f"alexnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
