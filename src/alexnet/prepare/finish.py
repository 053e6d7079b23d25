"""Finishing a prepared store: compact the rows of skipped files, write labels, the mean image, the colour
PCA and checksums into OUT/.partial, then move the files into OUT and write manifest.json last.

Each step can be repeated after a crash: prepare (writer.py) calls these once every chunk is decoded.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from alexnet.data.classnames import class_names
from alexnet.data.store import ENCODINGS, FORMAT, MANIFEST, SPLITS, Store, checksum, open_store, split_files
from alexnet.errors import UserError
from alexnet.files import atomic_path, atomic_write, fsync_dir, loads_json
from alexnet.prepare.imagestats import colour_pca
from alexnet.prepare.plan import Plan, State


def summary_line(store: Store, seconds: float | None = None) -> str:
    """One line for the end of a prepare: counts, skips, size, time."""
    parts = []
    for name, info in store.manifest["splits"].items():
        parts.append(f"{name} {info['count']} images ({len(info['skipped'])} skipped)")
    stored = sum(int(info["images_bytes"]) for info in store.manifest["splits"].values())
    encoding = (f"JPEG quality {store.manifest['jpeg_quality']}" if store.encoding == "jpeg" else "raw pixels")
    line = (f"prepared {store.root}: {', '.join(parts)}; {store.size}x{store.size}, {len(store.classes)} classes; "
            f"{encoding}, {stored / 2**20:.1f} MiB of images")
    if seconds is not None:
        total = sum(int(info["count"]) for info in store.manifest["splits"].values())
        line += f"; {seconds:.1f} s ({total / max(seconds, 1e-9):.0f} images/s)"
    if any(info["skipped"] for info in store.manifest["splits"].values()):
        line += f"; skipped files and reasons are listed in {store.root / MANIFEST}"
    return line


# ----------------------------------------------------------------------------------------------- plan


def one_line(text: str) -> str:
    return text.replace("\n", "\\n").replace("\r", "\\r")


# ------------------------------------------------------------------------------------------- partial


def finish(plan: Plan, partial: Path, state: State, out: Path) -> None:
    """Compact, write labels/mean/PCA/checksums into .partial and record the manifest to install."""
    source = plan.source
    skipped_rows: dict[str, dict[int, str]] = {s: {} for s in plan.splits}
    for split, index, reason in state.skipped:
        skipped_rows[split][int(index)] = reason
    splits_info = {}
    train_count = 0
    for split in plan.splits:
        items = plan.items[split]
        holes = skipped_rows[split]
        kept = len(items) - len(holes)
        if kept == 0:
            first = min(holes)
            raise UserError(f"no usable image in the {split} split of {source.path}: every file was skipped "
                            f"(first: {one_line(items[first].name)}: {holes[first]})")
        if plan.encoding == "jpeg":  # the chunks' files, back to back, skipped images left out
            order = [i for i in range(len(items)) if i not in holes]
            images_path = _concatenate_chunks(plan, partial, split)
        else:
            order = _row_order(len(items), sorted(holes))
            images_path = partial / split / "images.npy"
            _compact(images_path, order, kept)
        labels = np.array([items[i].label for i in order], dtype=np.int64)
        write_npy(partial / split / "labels.npy", labels)
        skipped = [{"file": n, "reason": r} for n, r in source.splits[split].skipped]
        skipped += [{"file": items[i].name, "reason": holes[i]} for i in sorted(holes)]
        splits_info[split] = {
            "count": kept,
            "per_class": np.bincount(labels, minlength=len(source.classes)).tolist(),
            "skipped": skipped,
            "images_bytes": os.path.getsize(images_path),
            "checksum": checksum(*split_files(partial / split, plan.encoding)),
        }
        if split == "train":
            train_count = kept
    mean = state.sum_image / train_count
    write_npy(partial / "mean.npy", mean.astype(np.float32))
    mean_rgb, eigenvalues, eigenvectors = colour_pca(state.sum_image.sum(axis=(0, 1)), state.gram,
                                                      train_count * plan.size * plan.size)
    source_info = {"path": source.path, "layout": source.layout}
    if source.val_origin:
        source_info["val"] = {"path": source.val_origin[0], "layout": source.val_origin[1]}
    manifest = {
        "format": FORMAT,
        "encoding": plan.encoding,
        **({"jpeg_quality": plan.quality} if plan.encoding == "jpeg" else {}),
        "size": plan.size,
        "classes": list(source.classes),
        "class_names": class_names(list(source.classes), source.words),
        "source": source_info,
        "splits": splits_info,
        "mean_rgb": mean_rgb,
        "pca": {"eigenvalues": eigenvalues, "eigenvectors": eigenvectors},
        "preprocessing": "EXIF orientation applied, alpha dropped, shorter side scaled to size "
                         "(antialiased bilinear), centre size x size crop, uint8 RGB",
    }
    atomic_write(partial / "finished.json", json.dumps(manifest).encode())


def chunk_path(partial: Path, split: str, index: int) -> Path:
    """A JPEG store's chunk: PARTIAL/<split>/chunk-N.jpeg (and chunk-N.offsets.npy beside it)."""
    return partial / split / f"chunk-{index}.jpeg"


def _concatenate_chunks(plan: Plan, partial: Path, split: str) -> Path:
    """PARTIAL/<split>/images.jpeg and offsets.npy from the split's chunk files, in order; the chunk files
    stay until the store is installed, so this can be repeated after a crash."""
    out = partial / split / "images.jpeg"
    offsets = [0]
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        for chunk in (c for c in plan.chunks if c.split == split):
            path = chunk_path(partial, split, chunk.index)
            bounds = np.load(path.with_suffix(".offsets.npy"), allow_pickle=False)
            data = path.read_bytes()
            for start, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
                if stop > start:  # an empty entry is a skipped image
                    f.write(data[start:stop])
                    offsets.append(offsets[-1] + stop - start)
    write_npy(partial / split / "offsets.npy", np.array(offsets, dtype=np.int64))
    return out


def _row_order(count: int, holes: list[int]) -> list[int]:
    """Item index stored at each final row: skipped rows take the split's last kept images."""
    kept = count - len(holes)
    hole_set = set(holes)
    donors = [i for i in range(kept, count) if i not in hole_set]
    order = list(range(kept))
    for hole, donor in zip((h for h in holes if h < kept), donors):
        order[hole] = donor
    return order


def _compact(path: Path, order: list[int], kept: int) -> None:
    """Move donor rows into holes, then shrink images.npy to `kept` rows. Safe to repeat after a crash:
    donors all lie at or beyond `kept` and only rows before it are written, until the final truncation."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = reader(f)
        data_offset = f.tell()
    row_bytes = int(np.prod(shape[1:]))
    final_bytes = data_offset + kept * row_bytes
    if shape[0] == kept and os.path.getsize(path) == final_bytes:
        return
    if shape[0] != kept:
        images = np.lib.format.open_memmap(path, mode="r+")
        for row, item in enumerate(order):
            if row != item:
                images[row] = images[item]
        images.flush()
        del images
    # Same header length as before (spaces absorb the shorter shape), so the data does not move.
    prefix = 10 if version == (1, 0) else 12
    new_shape = (kept, *shape[1:])
    text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {new_shape!r}, }}"
    header = (text + " " * (data_offset - prefix - len(text) - 1) + "\n").encode("latin1")
    with open(path, "r+b") as f:
        f.seek(prefix)
        f.write(header)
        f.truncate(final_bytes)
        f.flush()
        os.fsync(f.fileno())


def install(out: Path, partial: Path, progress: bool, started: float) -> Store:
    """Move the finished files into OUT, write manifest.json last, remove .partial. Idempotent."""
    manifest = loads_json((partial / "finished.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # from here on OUT is not a complete store until the end
    for stale in SPLITS:
        if stale not in manifest["splits"] and (out / stale).exists():
            shutil.rmtree(out / stale)
    encoding = manifest.get("encoding", "raw")
    moves = [(partial / "mean.npy", out / "mean.npy")]
    for split in manifest["splits"]:
        (out / split).mkdir(exist_ok=True)
        moves += [(path, out / split / path.name) for path in split_files(partial / split, encoding)]
        wanted = {path.name for path in split_files(out / split, encoding)}
        for other in ENCODINGS:  # a replaced store of the other encoding: its image files go
            for stale in split_files(out / split, other):
                if stale.name not in wanted:
                    stale.unlink(missing_ok=True)
    for src, dst in moves:
        if src.exists():  # absent: moved by an earlier, interrupted install
            os.replace(src, dst)
    for split in manifest["splits"]:
        fsync_dir(out / split)
    manifest["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    manifest["complete"] = True
    atomic_write(out / MANIFEST, json.dumps(manifest, indent=1).encode())
    shutil.rmtree(partial)
    store = open_store(out)
    if progress:
        print(summary_line(store, time.monotonic() - started), file=sys.stderr)
    return store


def write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)
