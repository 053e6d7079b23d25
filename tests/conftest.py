"""Shared fixtures: small generated image sets and stores, built once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # tests run two at a time on a 2-core machine
# image folders given to commands are prepared into the cache folder: one of this test session's own, never the
# user's ~/.cache/alexnet (commands run by run_cli inherit it)
os.environ["ALEXNET_CACHE"] = tempfile.mkdtemp(prefix="alexnet-test-cache-")


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory) -> Path:
    """A generated ImageFolder (train/ and val/) of 4 shape classes, 40x40 PNGs."""
    from alexnet.prepare.synthetic import write_image_folder

    root = tmp_path_factory.mktemp("shapes")
    return write_image_folder(root, train_per_class=48, val_per_class=12, size=40, seed=0,
                              classes=("disc", "square", "h-stripes", "cross"))


@pytest.fixture(scope="session")
def shapes_store(shapes_folder, tmp_path_factory) -> Path:
    from alexnet.prepare.writer import prepare

    out = tmp_path_factory.mktemp("store") / "store"
    prepare(shapes_folder, out, size=36, workers=1, progress=False)
    return out


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real command line in a fresh process."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "alexnet", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)


def run_cli_on_terminal(*args: str, timeout: float = 300) -> tuple[int, str, str]:
    """The real command line with its stderr on a pseudo-terminal, as a user at a shell sees it: (exit status,
    stdout, what the terminal showed)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    # a terminal of 24 rows and 120 columns: a new pty has 0 x 0, on which tqdm draws nothing
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", COLUMNS="120")
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([sys.executable, "-m", "alexnet", *args], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=slave, env=env)
        os.close(slave)
        shown = bytearray()
        while True:  # until the last holder of the terminal exits (EIO on Linux, or an empty read)
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
        os.close(master)
        status = proc.wait(timeout)
        out.seek(0)
        return status, out.read().decode(), shown.decode(errors="replace")
