"""CIFAR-10 in its python format: cifar-10-python.tar.gz or the extracted cifar-10-batches-py folder.

data_batch_1..5 are the training split, test_batch the validation split, batches.meta the class names.
Each batch is a pickled dict whose "data" is uint8 (10000, 3072): the 1024 red values of a 32 x 32
image, then green, then blue. The pickles are read with an unpickler that only accepts the numpy and
codec names such a batch contains, so a doctored file cannot run code.
"""

from __future__ import annotations

import functools
import importlib
import io
import os
import pickle
import stat
import tarfile
from pathlib import Path

import numpy as np

from alexnet.errors import UserError
from alexnet.files import COMPRESSED_STREAM_ERRORS, cut_short

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
VAL_BATCH = "test_batch"
META = "batches.meta"
FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
_OFFLINE_HINT = (
    f"download {ARCHIVE} from https://www.cs.toronto.edu/~kriz/cifar.html on a connected machine and run "
    f"`alexnet prepare PATH/{ARCHIVE} --out STORE` (the extracted {FOLDER} folder works too)"
)

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("builtins", "bytearray"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's protocol
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch")
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core"):]  # numpy 2 renamed the package
        return getattr(importlib.import_module(module), name)


def _unpickle(data: bytes, origin: str) -> dict:
    try:
        obj = _BatchUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:
        raise UserError(f"{origin} is not a CIFAR-10 python batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{origin} is not a CIFAR-10 python batch (not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def is_cifar_folder(path: Path) -> bool:
    return path.is_dir() and (path / META).is_file() and (path / TRAIN_BATCHES[0]).is_file()


def archive_member_prefix(path: Path) -> str | None:
    """'cifar-10-batches-py/' when path is a tar archive holding the CIFAR-10 batches, else None."""
    try:
        with tarfile.open(path, "r:*") as tar:
            names = set(tar.getnames())
    except COMPRESSED_STREAM_ERRORS as exc:
        raise cut_short(path, exc) from None
    except (tarfile.TarError, OSError):
        return None
    for name in names:
        if name == META or name.endswith("/" + META):
            prefix = name[: -len(META)]
            if prefix + TRAIN_BATCHES[0] in names:
                return prefix
    return None


# A batch is read whole into memory: 10,000 images are 30.7 MB, so anything past this is not a CIFAR-10 batch
# (and reading it could exhaust memory).
MAX_BATCH_BYTES = 64 << 20


def read_member(path: str, member: str) -> bytes:
    """The bytes of one batch: a regular file in the folder `path`, or a member of the archive `path`."""
    if os.path.isdir(path):
        file = Path(path, member)
        try:
            info = file.stat()
            if not stat.S_ISREG(info.st_mode):
                raise UserError(f"{file} is not a regular file: give the CIFAR-10 batch files themselves")
            if info.st_size > MAX_BATCH_BYTES:
                raise UserError(f"{file} holds {info.st_size} bytes, more than a CIFAR-10 batch can "
                                f"({MAX_BATCH_BYTES}): is this the right folder?")
            return file.read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        with tarfile.open(path, "r:*") as tar:
            info = tar.getmember(member)
            if not info.isfile():
                raise UserError(f"{path}:{member} is not a regular file in the archive: is the archive damaged?")
            if info.size > MAX_BATCH_BYTES:
                raise UserError(f"{path}:{member} holds {info.size} bytes, more than a CIFAR-10 batch can "
                                f"({MAX_BATCH_BYTES}): is this the right archive?")
            return tar.extractfile(info).read()
    except COMPRESSED_STREAM_ERRORS as exc:
        raise cut_short(f"{path}", exc) from None
    except (tarfile.TarError, OSError, AttributeError, KeyError) as exc:
        raise UserError(f"cannot read {member} from {path}: {exc}: download or copy the archive again") from None


@functools.lru_cache(maxsize=2)
def load_batch(path: str, member: str) -> tuple[np.ndarray, list[int]]:
    """(images uint8 (n, 32, 32, 3), labels) of one batch; cached, since a chunk reads rows one by one."""
    batch = _unpickle(read_member(path, member), f"{path}:{member}")
    try:
        raw = np.asarray(batch["data"])
        if raw.dtype != np.uint8 or raw.ndim != 2 or raw.shape[1] != 3072:
            raise ValueError("data: uint8 rows of 3072 values")
        data = raw.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = list(batch["labels"])
    except (KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{path}:{member} is not a CIFAR-10 batch (no usable {exc})") from None
    # labels are class indices: whole numbers (a float would be truncated, a bool is not a class)
    bad = next((v for v in labels if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))), None)
    if bad is not None or any(v < 0 for v in labels):
        bad = bad if bad is not None else next(v for v in labels if v < 0)
        raise UserError(f"{path}:{member} has the label {bad!r}: CIFAR-10 labels are class indices 0, 1, 2, ... "
                        "(a damaged or doctored batch)")
    labels = [int(v) for v in labels]
    if len(labels) != len(data):
        raise UserError(f"{path}:{member}: {len(data)} images but {len(labels)} labels")
    return np.ascontiguousarray(data), labels


def label_names(path: str, member: str) -> list[str]:
    meta = _unpickle(read_member(path, member), f"{path}:{member}")
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)) or len(names) < 2:
        raise UserError(f"{path}:{member} has no usable label_names (a list of at least two class names)")
    out = []
    for n in names:
        try:
            name = n.decode() if isinstance(n, bytes) else n
        except UnicodeDecodeError:
            name = None
        if not isinstance(name, str) or not name.strip() or "/" in name or "\\" in name or name.startswith("."):
            raise UserError(f"{path}:{member} has the class name {n!r}: class names must be non-empty text "
                            "without slashes or a leading dot")
        out.append(name)
    if len(set(out)) != len(out):
        dup = next(n for n in out if out.count(n) > 1)
        raise UserError(f"{path}:{member} names the class '{dup}' twice: each class needs its own name")
    return out


def fetch(cache_dir: Path) -> Path:
    """The cifar-10-batches-py folder in cache_dir, downloading it with torchvision if it is not there."""
    folder = cache_dir / FOLDER
    if is_cifar_folder(folder) and (folder / VAL_BATCH).is_file():
        return folder
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the cache folder {cache_dir}: {exc.strerror}; set ALEXNET_CACHE") from None
    import torchvision

    try:
        torchvision.datasets.CIFAR10(root=str(cache_dir), train=True, download=True)
    except Exception as exc:  # offline, proxy, checksum: all end the same way for the user
        reason = " ".join(str(exc).split())[:200]
        raise UserError(f"could not download CIFAR-10 ({type(exc).__name__}: {reason}); {_OFFLINE_HINT}") from None
    return folder
