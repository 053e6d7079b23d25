"""Subcommands of the `alexnet` command line.

Each module here defines `register(subparsers)`, which adds its parser and sets `func` to a callable
taking the parsed arguments and returning an exit status. Modules import torch and friends inside
their run functions so that `alexnet --help` stays quick.
"""
