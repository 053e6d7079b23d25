"""Every `alexnet` command line in README.md names a real command with flags it accepts.

The lines are taken from the README's code blocks (continuation lines joined, comments dropped, the part after
`-m alexnet` of a torchrun line) and parsed by the command's own argparse parser, exactly as `alexnet` would
parse them; the paths they name are a user's, so nothing is run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from alexnet.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_command_lines() -> list[str]:
    text = README.read_text()
    blocks = re.findall(r"```(?:\w*)\n(.*?)```", text, flags=re.S)
    lines = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("#"):
                continue
            if line.startswith("alexnet "):
                lines.append(line[len("alexnet "):])
            elif "-m alexnet " in line:
                lines.append(line.split("-m alexnet ", 1)[1])
    return lines


LINES = readme_command_lines()


def test_the_readme_has_command_lines():
    assert len(LINES) >= 30
    assert {line.split()[0] for line in LINES} >= {"train", "eval", "prepare", "predict", "retrieve", "kernels",
                                                   "plot", "export", "import-torchvision", "reproduce", "summary",
                                                   "config"}


@pytest.mark.parametrize("line", LINES)
def test_readme_command_line_parses(line):
    argv = shlex.split(line)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code == 0 and argv == ["--version"]:
            return  # argparse's version action prints and exits 0
        pytest.fail(f"`alexnet {line}` does not parse (exit {exc.code})")
    assert callable(args.func)
