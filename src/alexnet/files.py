"""Files a command writes: the checks made before any work is done, the one atomic write, and file locks.

Every write that must never be seen half-done (checkpoints, store files, manifests, configs, exports, the
retrieval index) goes through `atomic_path`: a temporary file beside the target, fsynced, renamed over it,
and the folder fsynced, so a crash at any moment leaves either the old file or the new one.

Every command that writes a file (a figure, an export, a checkpoint) checks its output path here first: the
folder exists, the suffix names a format the writer knows, an existing file is replaced only with
`--overwrite`, and never one of the command's own inputs (`predict photo.png --panel photo.png` would
otherwise destroy the photo it reads).
"""

from __future__ import annotations

import contextlib
import functools
import json
import lzma
import os
import stat
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX (Windows): no advisory locks; see try_lock
    fcntl = None  # type: ignore[assignment]

from alexnet.errors import UserError

# what Python's decompressors raise for a stream that ends early or is damaged (gzip/zlib, bzip2, xz): tarfile lets
# them through, so every reader of a compressed archive catches these beside tarfile.TarError and OSError
COMPRESSED_STREAM_ERRORS: tuple[type[BaseException], ...] = (EOFError, zlib.error, lzma.LZMAError)


def cut_short(path: str | Path, exc: BaseException) -> UserError:
    """The one-line error for a compressed archive whose stream ends early or is damaged."""
    return UserError(f"{path} is cut short or damaged ({exc}): its compressed stream ends before its end marker; "
                     "download or copy it again")


def loads_json(text: str | bytes) -> Any:
    """json.loads, with a document nested deeper than Python's recursion limit (a crafted or damaged file) raised
    as the ValueError of any other malformed JSON, which every reader of a file already turns into its message."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested deeper than it can be read") from None


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


@functools.cache
def file_mode() -> int:
    """What open() would give a new file: 0666 less the umask (mkstemp's files are 0600)."""
    try:  # Linux reports the umask without changing it
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it straight back
        os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable. Best effort: some systems cannot open or fsync a folder."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, before_replace: Callable[[], None] | None = None) -> Iterator[Path]:
    """A temporary path beside `path` for the caller to write; when the block ends without an exception the
    file is fsynced, given an ordinary file's mode and renamed over `path`. On any failure (an exception, a
    check the caller makes inside the block) the temporary file goes and `path` is as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync_file(tmp)
        os.chmod(tmp, file_mode())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write a whole file (a manifest, config.yaml, metrics.jsonl) so that it is never seen half-written."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def open_lock_file(path: Path, owner: str) -> int:
    """A descriptor of the lock file `path`, created when missing. A lock file is the command's own: a folder, a
    symbolic link (which would make it create or lock a file elsewhere) or any other non-regular file in its
    place is refused in one line, naming it; `owner` says whose lock it is ("the run", "prepare")."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0),
                     file_mode())
    except OSError as exc:
        if os.path.islink(path) or os.path.isdir(path):
            kind = "a symbolic link" if os.path.islink(path) else "a folder"
            raise UserError(f"{path} is {kind}, where {owner} keeps its lock file: remove it and run again") from None
        raise UserError(f"cannot create {owner}'s lock file {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{path} is not a regular file (a pipe, socket or device), where {owner} keeps its lock "
                        "file: remove it and run again")
    return fd


def try_lock(fd: int, wait: bool) -> bool | None:
    """An exclusive advisory lock on an open file: True when held, False when another process holds it (only
    when not `wait`), None where the system cannot lock (some network mounts, or no fcntl: not POSIX), where
    the caller goes on unprotected rather than refuse to work. The kernel drops the lock when the descriptor
    is closed or the process ends, SIGKILL included, so it never goes stale."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


CACHE_ENV = "ALEXNET_CACHE"


def default_cache_dir() -> Path:
    """$ALEXNET_CACHE, or ~/.cache/alexnet."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "alexnet"
