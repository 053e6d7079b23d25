"""Turning a user's data argument into an opened store.

The argument may name a store (opened as it is), raw images (a folder or archive, prepared once into
the cache folder and reused afterwards) or the word "cifar10" (downloaded and prepared into the cache).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from alexnet.data.store import MANIFEST, Store, is_store, open_store
from alexnet.errors import UserError
from alexnet.files import open_lock_file, try_lock


def cached_store_path(spec: str, cache_dir: Path, size: int) -> Path:
    """cache_dir/<source name>-<8 hex of its absolute path>-s<size>: one store per source and size."""
    if spec == "cifar10" and not Path(spec).exists():
        return cache_dir / f"cifar10-s{size}"
    source = Path(spec).expanduser().absolute()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", source.name)[:40] or "data"
    tag = hashlib.sha256(str(source).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return cache_dir / f"{stem}-{tag}-s{size}"


def resolve_data(spec: str, cache_dir: Path, size: int, progress: bool = True) -> Store:
    """A store for spec: open it if it is one, else prepare it (once) into cache_dir and open that."""
    spec = str(spec)
    if spec != "cifar10" or Path(spec).exists():
        path = Path(spec).expanduser()
        if not spec.strip() or not path.exists():
            raise UserError(f"data {spec!r} does not exist: give a store, a folder of images, an archive or 'cifar10'")
        if path.is_dir() and (is_store(path) or (path / MANIFEST).is_file()):
            return open_store(path)  # a store, or one whose manifest is damaged: open_store says what is wrong
        if path.is_dir() and not any(path.iterdir()):
            raise UserError(f"data folder {spec} is empty: put images in <class>/ folders or give another path")
    target = cached_store_path(spec, Path(cache_dir), size)
    if is_store(target):
        return open_store(target)
    from alexnet.prepare.writer import prepare

    missing = [d for d in (target.parent, *target.parent.parents) if not d.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    lock_fd = open_lock_file(lock_path, "the cache")  # a folder or link there is refused before anything is done
    try:
        # Several processes (e.g. the ranks of one machine) may ask at once: one prepares, the others
        # wait here and then open its store. An interrupted preparation is resumed by prepare itself.
        with os.fdopen(lock_fd, "r+b") as lock:
            try_lock(lock.fileno(), wait=True)
            if is_store(target):
                return open_store(target)
            return prepare(spec, target, size=size, progress=progress, cache_dir=Path(cache_dir))
    except BaseException:
        if not is_store(target):  # a failed first preparation leaves no trace in the cache
            lock_path.unlink(missing_ok=True)
            for folder in missing:
                if folder.exists() and not any(folder.iterdir()):
                    folder.rmdir()
        raise
