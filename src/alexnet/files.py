"""Checks on the files a command writes, made before any work is done.

Every command that writes a file (a figure, an export, a checkpoint) checks its output path here first: the
folder exists, the suffix names a format the writer knows, an existing file is replaced only with
`--overwrite`, and never one of the command's own inputs (`predict photo.png --panel photo.png` would
otherwise destroy the photo it reads).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from alexnet.errors import UserError


def figure_suffixes() -> tuple[str, ...]:
    """The file types matplotlib writes (png, pdf, svg, ...), as suffixes with their dot."""
    from matplotlib.backend_bases import FigureCanvasBase

    return tuple(sorted(f".{kind}" for kind in FigureCanvasBase.get_supported_filetypes()))


def _is_input(path: Path, given: Path) -> bool:
    """`path` is the input `given`, or a file inside the input folder `given` (which the command reads)."""
    try:
        if given.is_dir():
            return path.resolve().is_relative_to(given.resolve())
        return os.path.samefile(path, given)
    except OSError:
        return False


def check_output(path: Path, flag: str, overwrite: bool, inputs: Iterable[str | Path] = (),
                 suffixes: Iterable[str] = ()) -> Path:
    """Raise UserError unless `path` may be written; `flag` is how the user named it (-o, --panel)."""
    path = Path(path)
    allowed = tuple(suffixes)
    if allowed and path.suffix.lower() not in allowed:
        raise UserError(f"{flag} {path}: cannot write a '{path.suffix or 'suffix-less'}' file; end the name in one "
                        f"of {', '.join(allowed)}")
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder: name a file in it")
    if not path.parent.is_dir():
        raise UserError(f"{flag} {path} must name a file in an existing folder")
    if os.path.lexists(path):
        for given in inputs:
            if _is_input(path, Path(given)):
                raise UserError(f"{flag} {path} is one of this command's inputs ({given}): choose another file")
        if not overwrite:
            raise UserError(f"{path} already exists: choose another {flag} or pass --overwrite")
        if not path.is_file():
            raise UserError(f"{flag} {path} exists and is not a regular file: choose another file")
    return path
