"""Test hooks: make real failures happen at exact moments inside a real training process.

The fault tests (tests/test_faults.py) run `alexnet train` as a subprocess and need some failures at points
no outside signal can hit reliably. These environment variables are read at those points; unset (the
normal case) they do nothing. They are for testing only and are documented here so nobody is surprised:

    ALEXNET_FAULT_NAN_AT_STEP=N       the loss of step N (counted from 1, as "step" in metrics.jsonl) becomes NaN
    ALEXNET_FAULT_KILL_IN_SAVE=K:WHEN the K-th checkpoint save of the process (counted from 1) sends SIGKILL
                                      to its own process; WHEN is `write` (part of the temporary file written),
                                      `replace` (temporary file complete, not yet renamed) or `link` (renamed,
                                      last.pt not yet updated)
    ALEXNET_FAULT_SAVE_ERRNO=NAME     every checkpoint write fails at the write call with OSError(errno.NAME),
                                      e.g. EACCES or ENOSPC, after the temporary file has been created

Real disk-full and read-only conditions are also tested for real (a small tmpfs, a read-only remount);
these hooks cover what needs an exact moment or a platform without mounts.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import BinaryIO

from alexnet.environment import env_int
from alexnet.errors import UserError

NAN_AT_STEP = "ALEXNET_FAULT_NAN_AT_STEP"
KILL_IN_SAVE = "ALEXNET_FAULT_KILL_IN_SAVE"
SAVE_ERRNO = "ALEXNET_FAULT_SAVE_ERRNO"

_saves_started = 0


def nan_at_step(step: int) -> bool:
    """True when the test hook asks for a NaN loss at this global step."""
    value = os.environ.get(NAN_AT_STEP)
    return value is not None and value.strip() == str(step)


def _kill_plan() -> tuple[int, str] | None:
    value = os.environ.get(KILL_IN_SAVE)
    if not value:
        return None
    count, _, when = value.partition(":")
    if not count.strip().isdigit() or when not in ("", "write", "replace", "link"):
        raise UserError(f"{KILL_IN_SAVE}={value!r}: give K or K:WHEN with K a whole number and WHEN one of write, "
                        "replace, link (a test hook)")
    return int(count), when or "write"


def check_environment() -> None:
    """Parse the hooks that are set before a run writes anything: a malformed one is an error up front."""
    env_int(NAN_AT_STEP, 0, 1)
    _kill_plan()
    name = os.environ.get(SAVE_ERRNO)
    if name and not isinstance(getattr(errno, name, None), int):
        raise UserError(f"{SAVE_ERRNO}={name!r} is not an errno name such as ENOSPC (a test hook)")


def save_started() -> None:
    """Count checkpoint saves of this process (the K of ALEXNET_FAULT_KILL_IN_SAVE)."""
    global _saves_started
    _saves_started += 1


def kill_point(when: str) -> None:
    """SIGKILL this process if the test hook names this save and this moment."""
    plan = _kill_plan()
    if plan is not None and plan == (_saves_started, when):
        os.kill(os.getpid(), signal.SIGKILL)


def hooked(f: BinaryIO) -> BinaryIO | _HookedFile:
    """The file a checkpoint is serialized into: `f` itself, or a wrapper when a save hook is set."""
    if not os.environ.get(SAVE_ERRNO) and (_kill_plan() or (0, ""))[1] != "write":
        return f
    return _HookedFile(f)


class _HookedFile:
    """Passes writes through to the real file; fails them (errno hook) or dies part-way (kill hook)."""

    KILL_AFTER_BYTES = 4096  # past the archive's header, inside the first tensor

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.written = f, 0

    def write(self, data: bytes) -> int:
        name = os.environ.get(SAVE_ERRNO)
        if name:
            code = getattr(errno, name, None)
            if not isinstance(code, int):
                raise UserError(f"{SAVE_ERRNO}={name!r} is not an errno name such as ENOSPC (a test hook)")
            raise OSError(code, os.strerror(code))
        if self.written + len(data) > self.KILL_AFTER_BYTES and _kill_plan() == (_saves_started, "write"):
            self.f.write(bytes(data)[: max(len(data) // 2, 1)])
            self.f.flush()
            os.fsync(self.f.fileno())  # the partial file really is on disk when the process dies
            kill_point("write")
        self.written += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()
