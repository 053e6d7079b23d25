"""Checkpoints written by an earlier version of the code (format alexnet-checkpoint/1, before the package
was reorganised) still load and resume exactly.

tests/data/checkpoint-format-1/ was written by that version: a 3-class store, the checkpoint of a run stopped
at step 9 (mid-epoch 2 of 2, batch 8), that run's config.yaml, and the last checkpoint of the same run left
to finish without a stop. The expectation is that earlier code's own uninterrupted result: resuming its
step-9 checkpoint with this code must end on the same weights, bit for bit (exact resume on the CPU).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import yaml
from conftest import run_cli

from alexnet.checkpoint import load_checkpoint
from alexnet.config import config_from_dict
from alexnet.train import train

OLD = Path(__file__).with_name("data") / "checkpoint-format-1"


def test_an_old_checkpoint_resumes_to_the_old_uninterrupted_result(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(OLD / "config.yaml", run / "config.yaml")
    shutil.copy(OLD / "step-9.pt", run / "last.pt")
    cfg = config_from_dict(yaml.safe_load((OLD / "config.yaml").read_text()))
    cfg.train.max_steps = 0  # the stopped run had max_steps=9; its uninterrupted twin had no limit
    assert load_checkpoint(run / "last.pt")["run"]["global_step"] == 9
    assert train(cfg, OLD / "store", run, resume="auto", progress=False) == 0
    got = torch.load(run / "last.pt", weights_only=True)
    want = torch.load(OLD / "uninterrupted-last.pt", weights_only=True)
    assert got["run"]["global_step"] == want["run"]["global_step"] == 12
    # The fixture was written on another CPU, and oneDNN picks its convolution kernels by CPU, so the last bits
    # of a float32 sum may differ here (seen: 3e-8). Resuming with anything wrong (other batches, dropout masks,
    # velocities or rates) moves the weights by about the 3 steps' change (1e-2), so a bound of 1e-6 still tells
    # the two apart; bit-for-bit resume on one machine is tests/test_faults.py's.
    start = torch.load(OLD / "step-9.pt", weights_only=True)
    moved = max((want["model"][k] - start["model"][k]).abs().max().item() for k in want["model"])
    assert moved > 1e-3  # the three steps changed the weights by far more than the bound below
    for key, value in want["model"].items():
        torch.testing.assert_close(got["model"][key], value, rtol=0, atol=1e-6, msg=key)
    assert got["optimizer"]["state"].keys() == want["optimizer"]["state"].keys()
    for index, state in want["optimizer"]["state"].items():  # the velocities
        for name, value in state.items():
            torch.testing.assert_close(got["optimizer"]["state"][index][name], value, rtol=0, atol=1e-6,
                                       msg=f"{index} {name}")


def test_an_old_checkpoint_evaluates_from_the_command_line():
    done = run_cli("eval", str(OLD / "uninterrupted-last.pt"), "--data", str(OLD / "store"))
    assert done.returncode == 0, done.stderr
    # the earlier code validated this checkpoint at 61.11% top-1 error: 7 of the 18 validation images right
    assert "61.11" in done.stdout, done.stdout


def test_a_changed_pickle_protocol_byte_loads_the_same_and_says_nothing(tmp_path):
    """The second byte of a checkpoint's data.pkl is the pickle protocol (PROTO opcode 0x80, then the number).
    A damaged number does not change what is read: eval gives the same figure, on stdout only, with no torch
    warning on stderr."""
    import struct
    import zipfile

    path = tmp_path / "protocol.pt"
    shutil.copy(OLD / "uninterrupted-last.pt", path)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(next(n for n in z.namelist() if n.endswith("data.pkl")))
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len  # the member's first byte (stored, not compressed)
    assert data[start] == 0x80 and info.compress_type == zipfile.ZIP_STORED
    data[start + 1] = 10
    path.write_bytes(bytes(data))
    done = run_cli("eval", str(path), "--data", str(OLD / "store"), "--no-progress")
    assert done.returncode == 0 and "61.11" in done.stdout, done.stderr
    assert done.stderr == ""
