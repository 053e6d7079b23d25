"""Finding the images of a raw data set in each real layout, and reading one of them.

Layouts (detected, never declared):
- imagefolder:      SRC/<class>/<files...> -> one split "train" (files may sit in subfolders of a class)
- imagefolder-train-val: SRC/train/<class>/... and SRC/val/<class>/... with identical class lists
- ilsvrc-val-folder: a flat folder of ILSVRC2012_val_00000001.JPEG ... labelled by --labels or --devkit
- tar (uncompressed): a tar of per-class tars (ILSVRC2012_img_train.tar), a flat tar of validation
  images (ILSVRC2012_img_val.tar, labelled as above), or a tar of <class>/<file> folders
- cifar10-python:    cifar-10-python.tar.gz or its cifar-10-batches-py folder (train + val splits)
- the word "cifar10" (when no such path exists): CIFAR-10 downloaded into the cache folder

Archives are never extracted. An uncompressed tar is indexed once (tarfile reads the 512-byte headers and
seeks over the data); every image is then read in place from its byte offset, so any number of workers
can read members of a 140 GB archive at once, and nested per-class tars need no temporary copies. A
member whose name is absolute or contains ".." is refused (listed as skipped); nothing from an archive
is ever written to disk. Hidden files (names starting with ".") are ignored everywhere.

Class index = position of the class id in the sorted list of class ids (for ImageNet: sorted wnids).
"""

from __future__ import annotations

import functools
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np

from alexnet.data.classnames import CIFAR10_CLASSES
from alexnet.data.store import Store, is_store, open_store
from alexnet.errors import UserError
from alexnet.prepare import cifar
from alexnet.prepare.decode import MAX_IMAGE_FILE_BYTES, SkipImage, decode_image, read_bytes, resize_center_crop
from alexnet.prepare.ilsvrc import Labels

_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


class Item(NamedTuple):
    """One image to decode: where its bytes are and which class it belongs to."""

    name: str  # relative to the source; what the manifest and messages call it
    label: int  # class index
    # "file": path | "tar": bytes [offset, offset+size) of path | "cifar": row offset of a batch | "store": row
    # offset of split `member` of the store at path
    kind: str
    path: str
    offset: int = 0
    size: int = 0
    member: str = ""  # cifar: the batch file inside the folder or archive `path`


@dataclass
class Listing:
    """The images of one split, plus files refused before decoding (name, reason)."""

    items: list[Item] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Source:
    path: str
    layout: str
    classes: list[str]
    splits: dict[str, Listing]
    words: dict[str, str] = field(default_factory=dict)  # wnid -> WordNet words, when a devkit was read
    val_origin: tuple[str, str] | None = None  # (path, layout) of a separate validation source
    native_size: int = 0  # a store's image side (a conversion keeps it)

    @property
    def default_size(self) -> int:
        """A store's own size; 32 for CIFAR-10 (its native size), 256 (the paper's) for everything else."""
        if self.native_size:
            return self.native_size
        is_cifar = self.layout.startswith("cifar10") or tuple(self.classes) == CIFAR10_CLASSES
        return 32 if is_cifar else 256


def item_pixels(item: Item, size: int) -> np.ndarray:
    """Decode one item to uint8 (size, size, 3), possibly a strided view; SkipImage when unusable."""
    if item.kind == "file":
        return decode_image(read_bytes(item.path), size)
    if item.kind == "tar":
        if item.size > MAX_IMAGE_FILE_BYTES:
            raise SkipImage(f"{item.size} bytes: larger than any image this reads ({MAX_IMAGE_FILE_BYTES})")
        try:
            with open(item.path, "rb") as f:
                data = os.pread(f.fileno(), item.size, item.offset)
        except OSError as exc:
            raise SkipImage(f"unreadable: {exc.strerror or exc}") from None
        if len(data) != item.size:
            raise SkipImage("truncated archive member")
        return decode_image(data, size)
    if item.kind == "cifar":
        images, _ = cifar.load_batch(item.path, item.member)
        return resize_center_crop(images[item.offset], size)
    if item.kind == "store":
        return resize_center_crop(_opened_store(item.path).split(item.member).images[item.offset], size)
    raise ValueError(f"unknown item kind {item.kind!r}")


def find_source(src: str | Path, labels: Labels | None = None, words: dict[str, str] | None = None,
                cache_dir: Path | None = None) -> Source:
    """Detect the layout of src and list its images. labels: for flat validation folders and tars."""
    if str(src) == "cifar10" and not Path("cifar10").exists():
        from alexnet.files import default_cache_dir

        folder = cifar.fetch(cache_dir or default_cache_dir())
        source = _cifar_source(folder, "cifar10-python (downloaded)")
        source.path = "cifar10"
        return source
    path = Path(src).expanduser()
    if not path.exists():
        raise UserError(f"{src} does not exist: give a folder of images, an archive, a store, or 'cifar10'")
    if path.is_dir() and is_store(path):
        source = _store_source(path)
    elif path.is_dir():
        source = _folder_source(path, labels)
    elif path.is_file():
        source = _archive_source(path, labels)
    else:
        raise UserError(f"{src} is neither a folder nor a file")
    if words:
        source.words = words
    return source


# ---------------------------------------------------------------------------------------------- stores


@functools.lru_cache(maxsize=4)
def _opened_store(path: str) -> Store:
    """A store being converted, opened once per process (each decoding worker opens its own)."""
    return open_store(path)


def _store_source(path: Path) -> Source:
    """A prepared store as a source: converting it (to the other encoding, or another size) needs no original
    images. Its rows keep their order; its classes and names are the store's."""
    store = open_store(path)
    store.verify()
    root = str(path.resolve())
    splits = {name: Listing([Item(f"{name}/{i}", int(label), "store", root, i, member=name)
                             for i, label in enumerate(store.split(name).labels.tolist())])
              for name in store.manifest["splits"]}
    return Source(root, f"store-{store.encoding}", list(store.classes), splits,
                  words=dict(zip(store.classes, store.class_names)), native_size=store.size)


# ---------------------------------------------------------------------------------------------- folders


def _folder_source(root: Path, labels: Labels | None) -> Source:
    if cifar.is_cifar_folder(root):
        return _cifar_source(root, "cifar10-python")
    if cifar.is_cifar_folder(root / cifar.FOLDER):
        return _cifar_source(root / cifar.FOLDER, "cifar10-python")
    subdirs = _visible_dirs(root)
    if (root / "train").is_dir() and (root / "val").is_dir():
        return _train_val_folders(root)
    if subdirs:
        classes = subdirs
        listing = _class_folders(root, classes, prefix="")
        _require_images(root, classes, listing)
        return Source(str(root.resolve()), "imagefolder", classes, {"train": listing})
    files = _visible_files(root)
    if not files:
        raise UserError(f"{root} is empty: expected SRC/<class>/<images> or a flat folder of validation images")
    if labels is None:
        raise UserError(
            f"{root} is a flat folder of images without class folders: give their labels with "
            "--labels LOC_val_solution.csv or --devkit ILSVRC2012_devkit_t12.tar.gz"
        )
    entries = [(name, str(root / name)) for name in files]
    listing = _labelled(entries, labels, lambda name, full: Item(name, 0, "file", full))
    return Source(str(root.resolve()), "ilsvrc-val-folder", labels.classes, {"train": listing})


def _train_val_folders(root: Path) -> Source:
    train_classes, val_classes = _visible_dirs(root / "train"), _visible_dirs(root / "val")
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        raise UserError(
            f"{root}/train and {root}/val must hold the same class folders: only in train: "
            f"{_short_list(only_train)}; only in val: {_short_list(only_val)}"
        )
    splits = {}
    for split in ("train", "val"):
        listing = _class_folders(root / split, train_classes, prefix=f"{split}/")
        _require_images(root / split, train_classes, listing)
        splits[split] = listing
    return Source(str(root.resolve()), "imagefolder-train-val", train_classes, splits)


def _class_folders(root: Path, classes: list[str], prefix: str) -> Listing:
    listing = Listing()
    for label, name in enumerate(classes):
        for rel, full in _walk_files(root / name, f"{prefix}{name}/"):
            listing.items.append(Item(rel, label, "file", full))
    return listing


def _require_images(root: Path, classes: list[str], listing: Listing) -> None:
    if len(classes) < 2:
        raise UserError(
            f"{root} has {len(classes)} class folder{'s' if len(classes) != 1 else ''}; "
            "a classifier needs at least 2 (SRC/<class>/<images>)"
        )
    counts = np.bincount([item.label for item in listing.items], minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise UserError(f"{root}: class folder(s) with no files: {_short_list(empty)}; add images or remove them")


def _visible_dirs(root: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(root) if not e.name.startswith(".") and e.is_dir())
    except OSError as exc:
        raise UserError(f"cannot list {root}: {exc.strerror or exc}") from None


def _visible_files(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if not e.name.startswith(".") and not e.is_dir())


def _walk_files(top: Path, prefix: str) -> Iterator[tuple[str, str]]:
    """(relative name, full path) of every non-hidden file under top, sorted; broken links included."""
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, top)
        for name in sorted(f for f in filenames if not f.startswith(".")):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            yield prefix + rel, os.path.join(dirpath, name)


def _labelled(entries: list[tuple[str, str]], labels: Labels, make) -> Listing:  # noqa: ANN001
    """Items for (name, where) pairs labelled by file stem; unlabelled files are listed as skipped."""
    index = {wnid: i for i, wnid in enumerate(labels.classes)}
    listing = Listing()
    for name, where in entries:
        stem = PurePosixPath(name).stem
        wnid = labels.by_stem.get(stem)
        if wnid is None:
            listing.skipped.append((name, f"no label for {stem} in {labels.origin}"))
        else:
            listing.items.append(make(name, where)._replace(label=index[wnid]))
    if not listing.items:
        raise UserError(f"none of the files has a label in {labels.origin}: are these the matching images?")
    return listing


# --------------------------------------------------------------------------------------------- archives


def _archive_source(path: Path, labels: Labels | None) -> Source:
    with open(path, "rb") as f:
        head = f.read(8)
    compression = next((kind for magic, kind in _COMPRESSED_MAGIC.items() if head.startswith(magic)), None)
    if compression:
        if cifar.archive_member_prefix(path) is not None:
            return _cifar_source(path, "cifar10-python")
        raise UserError(
            f"{path} is a {compression}-compressed archive: decompress it to a plain .tar (images are read in "
            "place by offset, which a compressed stream does not allow) or extract it to a folder"
        )
    if not tarfile.is_tarfile(path):
        raise UserError(f"{path} is not a folder, a tar archive or a CIFAR-10 archive")
    if cifar.archive_member_prefix(path) is not None:
        return _cifar_source(path, "cifar10-python")
    entries, skipped = _index_tar(path)
    if not entries:
        raise UserError(f"{path} holds no usable files")
    resolved = str(path.resolve())
    if any(e.nested for e in entries):
        classes = sorted({e.nested for e in entries if e.nested})
        index = {c: i for i, c in enumerate(classes)}
        listing = Listing(skipped=list(skipped))
        for e in entries:
            if e.nested:
                listing.items.append(Item(e.name, index[e.nested], "tar", resolved, e.offset, e.size))
            else:
                listing.skipped.append((e.name, "not inside a per-class tar"))
        _require_classes(path, classes)
        return Source(resolved, "ilsvrc-train-tar", classes, {"train": listing})
    names = _strip_common_folder([e.name for e in entries])
    if all("/" not in n for n in names):
        if labels is None:
            raise UserError(
                f"{path} is a flat archive of images without class folders: give their labels with "
                "--labels LOC_val_solution.csv or --devkit ILSVRC2012_devkit_t12.tar.gz"
            )
        pairs = [(e.name, e) for e in entries]
        listing = _labelled(pairs, labels, lambda name, e: Item(name, 0, "tar", resolved, e.offset, e.size))
        listing.skipped[:0] = skipped
        return Source(resolved, "ilsvrc-val-tar", labels.classes, {"train": listing})
    classes = sorted({n.split("/")[0] for n in names if "/" in n})
    index = {c: i for i, c in enumerate(classes)}
    listing = Listing(skipped=list(skipped))
    for e, n in zip(entries, names):
        if "/" in n:
            listing.items.append(Item(e.name, index[n.split("/")[0]], "tar", resolved, e.offset, e.size))
        else:
            listing.skipped.append((e.name, "not inside a class folder"))
    _require_classes(path, classes)
    return Source(resolved, "tar-imagefolder", classes, {"train": listing})


class _Entry(NamedTuple):
    name: str
    offset: int
    size: int
    nested: str  # the per-class tar this came from (its stem), or ""


def unsafe_member_name(name: str) -> bool:
    """True for names that would land outside an extraction folder: absolute, drive-letter, or '..'."""
    return name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in PurePosixPath(
        name.replace("\\", "/")).parts


def _index_tar(path: Path) -> tuple[list[_Entry], list[tuple[str, str]]]:
    """Regular-file members with their data offsets; nested .tar members are indexed one level down.

    A tar has no index: a reader stops at the first block that is not a header, so an archive cut short (an
    interrupted download of a 138 GB tar) reads as a complete, smaller one. Each archive is therefore checked
    to end as tar writers end one: every member's data inside the file, and the end-of-archive marker (zero
    blocks) right after the last member. A truncated or damaged archive is an error naming the last complete
    member, never a silently smaller data set.
    """
    entries: list[_Entry] = []
    skipped: list[tuple[str, str]] = []
    try:
        size = path.stat().st_size
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:") as outer:
            last = None
            for member in outer:
                _require_inside(member, size, str(path), last)
                last = member.name
                if not _acceptable(member, member.name, skipped):
                    continue
                if member.name.endswith(".tar"):
                    stem = PurePosixPath(member.name).name[: -len(".tar")]
                    inner_file = outer.extractfile(member)
                    with tarfile.open(fileobj=inner_file, mode="r:") as inner:
                        inner_last = None
                        for m in inner:
                            shown = f"{member.name}/{m.name}"
                            _require_inside(m, member.size, f"{path}:{member.name}", inner_last)
                            inner_last = m.name
                            if _acceptable(m, shown, skipped):
                                entries.append(_Entry(shown, member.offset_data + m.offset_data, m.size, stem))
                        _require_end_marker(inner_file, inner.offset, member.size, f"{path}:{member.name}",
                                            inner_last)
                else:
                    entries.append(_Entry(member.name, member.offset_data, member.size, ""))
            _require_end_marker(raw, outer.offset, size, str(path), last)
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"cannot read archive {path}: {exc}: it is damaged; download or copy it again") from None
    return entries, skipped


_BLOCK = tarfile.BLOCKSIZE


def _require_inside(member: tarfile.TarInfo, limit: int, what: str, last: str | None) -> None:
    if member.offset_data + member.size > limit:
        raise UserError(f"{what} is truncated: member {member.name} needs {member.size} bytes but the archive ends "
                        f"after {max(limit - member.offset_data, 0)} of them (last complete member: {last or 'none'}); "
                        "download or copy it again")


def _require_end_marker(f, end: int, limit: int, what: str, last: str | None) -> None:  # noqa: ANN001
    """A zero block must follow the last member: a reader that met anything else (a header cut short, garbage)
    stopped early."""
    block = b""
    if end + _BLOCK <= limit:
        f.seek(end)
        block = f.read(_BLOCK)
    if len(block) < _BLOCK or block.count(0) != _BLOCK:
        where = f"after member {last}" if last else "before its first member"
        raise UserError(f"{what} is truncated or damaged {where}: no end-of-archive marker follows it (members "
                        "after it would be missing); download or copy it again")


def _acceptable(member: tarfile.TarInfo, shown: str, skipped: list[tuple[str, str]]) -> bool:
    if unsafe_member_name(member.name):
        skipped.append((shown, "unsafe path in archive (absolute or with ..): refused, nothing extracted"))
        return False
    if member.isdir():
        return False
    if not member.isfile() or member.issparse():
        skipped.append((shown, "not a regular file (link, device or sparse member): refused"))
        return False
    return not PurePosixPath(member.name).name.startswith(".")


def _strip_common_folder(names: list[str]) -> list[str]:
    """Drop a single top folder shared by every name (tar cf x.tar folder/ puts one there)."""
    tops = {n.split("/")[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        return [n.split("/", 1)[1] for n in names]
    return names


def _require_classes(path: Path, classes: list[str]) -> None:
    if len(classes) < 2:
        raise UserError(f"{path} has {len(classes)} class(es); a classifier needs at least 2")


# ---------------------------------------------------------------------------------------------- cifar


def _cifar_source(path: Path, layout: str) -> Source:
    """CIFAR-10 batches: train = data_batch_1..5, val = test_batch; labels remapped to sorted names."""
    if path.is_dir():
        where, prefix = str(path.resolve()), ""
    else:
        where, prefix = str(path.resolve()), cifar.archive_member_prefix(path) or ""
    names = cifar.label_names(where, prefix + cifar.META)
    classes = sorted(names)
    remap = np.array([classes.index(n) for n in names])
    splits = {}
    for split, batches in (("train", cifar.TRAIN_BATCHES), ("val", (cifar.VAL_BATCH,))):
        listing = Listing()
        for batch in batches:
            member = prefix + batch
            if path.is_dir() and not (path / batch).is_file():
                raise UserError(f"{path} lacks {batch}: is the CIFAR-10 folder complete?")
            _, batch_labels = cifar.load_batch(where, member)
            beyond = next((v for v in batch_labels if v >= len(names)), None)
            if beyond is not None:
                raise UserError(f"{where}:{member} has the label {beyond} but {prefix + cifar.META} names "
                                f"{len(names)} classes (0..{len(names) - 1}): a damaged or mismatched batch")
            for row, label in enumerate(batch_labels):
                listing.items.append(Item(f"{batch}[{row}]", int(remap[label]), "cifar", where, row, 0, member))
        splits[split] = listing
    cifar.load_batch.cache_clear()  # the parent only needed the labels; workers load what they decode
    return Source(where, layout, classes, splits)


# ---------------------------------------------------------------------------------------- split helpers


def merge_validation(train: Source, val: Source) -> Source:
    """Use val's only split as the validation split of train, with labels in train's class order."""
    if "val" in train.splits:
        raise UserError(f"{train.path} already has a validation split; drop --val")
    if len(val.splits) != 1:
        raise UserError(f"--val {val.path} has its own train and val splits; give one folder or archive")
    (listing,) = val.splits.values()
    extra = sorted(set(val.classes) - set(train.classes))
    if extra:
        raise UserError(f"--val {val.path} has classes that training lacks: {_short_list(extra)}")
    index = {c: i for i, c in enumerate(train.classes)}
    items = [it._replace(label=index[val.classes[it.label]]) for it in listing.items]
    return Source(train.path, train.layout, train.classes,
                  {"train": train.splits["train"], "val": Listing(items, listing.skipped)},
                  words=train.words or val.words, val_origin=(val.path, val.layout))


def split_off_validation(source: Source, fraction: float, seed: int) -> None:
    """Move a deterministic, stratified share of each class of "train" into "val" (in place).

    Per class: round(fraction * n) images, at least 1 when the class has 2 or more, chosen by a
    permutation drawn from (seed, class index); both splits keep the original order.
    """
    if "val" in source.splits:
        raise UserError(f"{source.path} already has a validation split; drop --val-fraction")
    if not 0.0 < fraction < 1.0:
        raise UserError(f"--val-fraction must be between 0 and 1 (exclusive), not {fraction}")
    train = source.splits["train"]
    labels = np.array([it.label for it in train.items])
    to_val = np.zeros(len(labels), dtype=bool)
    for label in range(len(source.classes)):
        members = np.flatnonzero(labels == label)
        count = int(round(fraction * len(members)))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        else:
            count = 0
        chosen = np.random.default_rng([seed, label]).permutation(len(members))[:count]
        to_val[members[chosen]] = True
    source.splits = {
        "train": Listing([it for it, v in zip(train.items, to_val) if not v], train.skipped),
        "val": Listing([it for it, v in zip(train.items, to_val) if v], []),
    }


def _short_list(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "") if names else "(none)"
