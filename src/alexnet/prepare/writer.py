"""Raw images -> a store: decoded once, in parallel, resumable, bad files listed instead of fatal.

How it works:
- sources.find_source lists the images of every split; the work is cut into chunks of consecutive images.
- A multiprocessing pool (fork; default one worker per core) decodes chunks; each worker writes its
  rows straight into the split's images.npy (pwrite at each row's offset), so the parent never
  holds pixels and memory stays flat whatever N. Workers also return the chunk's exact integer sums
  (per-position pixel sums for the mean image; sum of x x^T over pixels for the colour covariance) for
  the train split. Integers rather than float64: sums of uint8 products are exact in int64 for any
  ImageNet-sized set, so the result does not depend on the order in which chunks finish.
- Everything is written under OUT/.partial/. OUT/.partial/state.npz is the progress file: `done` lists
  the finished chunks, next to the running sums and the skipped files, all saved together atomically
  (at most every ALEXNET_PREPARE_SAVE_SECONDS, default 2, after an fsync of the images written so far).
  A prepare killed at any moment and started again with the same arguments redoes only unfinished
  chunks; the result is byte-identical to an uninterrupted run (manifest "created" aside). Started with
  other arguments, or after files were added, removed or renamed in the source, it discards the
  unfinished work and starts afresh.
- Finishing: rows of skipped files are filled with the last images of the split (so only as many rows
  move as files were skipped) and the file is truncated; then labels, mean, PCA, checksums, and finally
  manifest.json (atomic: temp file, fsync, rename). Each step can be repeated after a crash.
- An existing store at OUT is only replaced with overwrite=True, and stays intact until the new one is
  complete (room for both). OUT/.partial.lock keeps two prepares out of one OUT. The plan: prepare/plan.py.

Row order is the listing order (folders: class, then file name; flat validation folders: file name; tars:
archive order; CIFAR-10: batch order), except that the rows of skipped files hold the last images of their split.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from alexnet.data import jpeg
from alexnet.data.jpeg import DEFAULT_QUALITY
from alexnet.data.store import ENCODINGS, Store, is_store
from alexnet.environment import env_float, env_int
from alexnet.errors import UserError
from alexnet.files import atomic_path, atomic_write, loads_json, open_lock_file, try_lock
from alexnet.prepare import ilsvrc
from alexnet.prepare.decode import SkipImage
from alexnet.prepare.finish import chunk_path, finish, install, one_line, write_npy
from alexnet.prepare.imagestats import add_image
from alexnet.prepare.plan import ChunkResult, ChunkTask, Plan, State
from alexnet.prepare.sources import Source, find_source, item_pixels, merge_validation, split_off_validation
from alexnet.runtime import usable_cores

PARTIAL = ".partial"
LOCK = ".partial.lock"
CHUNK_ENV = "ALEXNET_PREPARE_CHUNK"
SAVE_ENV = "ALEXNET_PREPARE_SAVE_SECONDS"
_CHUNK_BYTES = 64 * 2**20  # images per chunk = about 64 MB of output: big enough to amortise, small to redo
# encoding "auto" keeps raw pixels up to this size (they then fit in the memory of most machines that train on
# them, and decoding costs nothing); larger sets are stored as JPEG, about a ninth of the size (ImageNet: 252 GB
# raw against about 27 GB)
AUTO_RAW_BYTES = 16 * 2**30


def choose_encoding(encoding: str, images: int, size: int) -> str:
    if encoding == "auto":
        return "raw" if images * size * size * 3 <= AUTO_RAW_BYTES else "jpeg"
    if encoding not in ENCODINGS:
        raise UserError(f"--format must be one of auto, {', '.join(ENCODINGS)}, not {encoding!r}")
    return encoding


def prepare(src: str | Path, out: str | Path, size: int | None = None, workers: int | None = None,
            strict: bool = False, val_fraction: float = 0.0, progress: bool = True, seed: int = 0, *,
            labels: str | Path | None = None, devkit: str | Path | None = None,
            synsets: str | Path | None = None, val: str | Path | None = None, overwrite: bool = False,
            chunk_size: int | None = None, cache_dir: Path | None = None, encoding: str = "auto",
            quality: int = DEFAULT_QUALITY, bar: bool = True) -> Store:
    """Prepare the images at src into a store at out and return it opened.

    size: side S of the stored images (None: 32 for CIFAR-10, 256 otherwise). workers: decoding
    processes (None: all cores). strict: any skipped file is an error. val_fraction: share of each class
    moved to a "val" split (single-split sources). labels/devkit: labels of flat validation sets;
    synsets/devkit: class names; val: a separate source for the "val" split. chunk_size: images per
    resumable unit (default: about 64 MB of output, or $ALEXNET_PREPARE_CHUNK). encoding: "raw" (uint8
    pixels), "jpeg" (each stored image re-encoded at `quality`, data/jpeg.py) or "auto": raw while the raw
    images would take at most AUTO_RAW_BYTES, else jpeg. The source may be a store: converted to `encoding`.
    progress: messages and the summary line on stderr; bar: the progress bar too (only on a terminal).
    """
    started = time.monotonic()
    out = Path(out).expanduser().absolute()
    if is_store(out) and not overwrite and not (out / PARTIAL / "finished.json").exists():
        raise UserError(f"{out} already holds a store; pass --overwrite to replace it, or choose another --out")
    source = _find(src, labels, devkit, synsets, val, cache_dir)
    if val_fraction:
        split_off_validation(source, val_fraction, seed)
    size = source.default_size if size is None else int(size)
    if not 1 <= size <= 4096:
        raise UserError(f"--size must be between 1 and 4096, not {size}")
    workers = usable_cores() if workers is None else int(workers)
    if workers < 1:
        raise UserError(f"--workers must be at least 1, not {workers}")
    total = sum(len(s.items) for s in source.splits.values())
    encoding = choose_encoding(encoding, total, size)
    if not 1 <= quality <= 100:
        raise UserError(f"--quality must be between 1 and 100, not {quality}")
    chunk = _chunk_size(chunk_size, size, total)
    save_every = env_float(SAVE_ENV, 2.0, 0.0)  # read before anything is written: a bad value changes nothing
    _check_out_location(out, source)
    plan = Plan(source, size, chunk, seed, val_fraction, encoding, quality)
    partial = out / PARTIAL
    with _exclusive(out):
        if _finished_partial(partial, plan):  # a previous run decided everything; only installing was left
            return install(out, partial, progress, started)
        _check_out(out, overwrite)
        if strict:
            _fail_if_skipped(plan.listing_skips())
        _open_partial(partial, plan, progress)
        state = State.load(partial, plan)
        _run_chunks(plan, partial, state, workers, progress, bar, save_every)
        skips = plan.listing_skips() + [(split, plan.items[split][i].name, reason)
                                        for split, i, reason in state.skipped]
        if strict:
            _fail_if_skipped(skips)
        finish(plan, partial, state, out)
        return install(out, partial, progress, started)


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold OUT/.partial.lock so that two prepares never write into the same store at once."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the store folder {out}: {exc.strerror or exc} (is a part of the path a "
                        "file?)") from None
    for name in (PARTIAL, LOCK):
        # the unfinished work and the lock are ours: a link there would send writes (or a delete) elsewhere
        if (out / name).is_symlink():
            raise UserError(f"{out / name} is a symbolic link, where prepare keeps its own unfinished work: "
                            "remove it, or choose another --out")
    if (out / PARTIAL).exists() and not (out / PARTIAL).is_dir():
        raise UserError(f"{out / PARTIAL} is not a folder: remove it, or choose another --out")
    lock_path = out / LOCK
    with os.fdopen(open_lock_file(lock_path, "prepare"), "r+b") as lock:
        if try_lock(lock.fileno(), wait=False) is False:
            raise UserError(f"another prepare is writing into {out}; wait for it to finish")
        try:
            yield
        finally:
            # leave OUT as we found it unless there is a store or resumable work in it
            if not (out / PARTIAL).exists():
                lock_path.unlink(missing_ok=True)
                if created and not any(out.iterdir()):
                    out.rmdir()


def _find(src, labels, devkit, synsets, val, cache_dir) -> Source:  # noqa: ANN001
    label_info = None
    words: dict[str, str] = {}
    if devkit is not None:
        label_info = ilsvrc.read_devkit(devkit)
        words = dict(label_info.words)
    if labels is not None:
        csv_labels = ilsvrc.read_val_solution(labels)
        if label_info is not None:  # the devkit's class list (all 1000) beats the wnids seen in the csv
            csv_labels.classes = sorted(set(label_info.classes) | set(csv_labels.classes))
        label_info = csv_labels
    if synsets is not None:
        words = ilsvrc.read_synset_mapping(synsets)
        if label_info is not None:
            label_info.classes = sorted(set(label_info.classes) | set(words))
    source = find_source(src, label_info, words, cache_dir)
    if val is not None:
        source = merge_validation(source, find_source(val, label_info, words, cache_dir))
    return source


def _chunk_size(chunk_size: int | None, size: int, total: int) -> int:
    chunk_size = chunk_size if chunk_size is not None else (env_int(CHUNK_ENV, 0, 1) or None)
    if chunk_size is None:
        # about 64 MB of output per chunk, and at least ~64 chunks for small sets so every core gets work
        chunk_size = min(4096, max(16, _CHUNK_BYTES // (size * size * 3)), max(16, -(-total // 64)))
    if chunk_size < 1:
        raise UserError(f"chunk size must be at least 1, not {chunk_size}")
    return int(chunk_size)


# -------------------------------------------------------------------------------------- output checks


def _check_out_location(out: Path, source: Source) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the store")
    src = Path(source.path)
    if src.is_dir():
        try:
            out.resolve().relative_to(src.resolve())
        except ValueError:
            return
        raise UserError(f"--out {out} is inside the source folder {src}; put the store elsewhere")


def _check_out(out: Path, overwrite: bool) -> None:
    if is_store(out):
        if not overwrite:
            raise UserError(f"{out} already holds a store; pass --overwrite to replace it, or choose another --out")
        return
    if out.is_dir() and not (out / PARTIAL).exists() and any(p.name != LOCK for p in out.iterdir()):
        raise UserError(f"{out} exists, is not empty and is not a store; choose a new --out (nothing was changed)")


def _fail_if_skipped(skips: list[tuple[str, str, str]]) -> None:
    if skips:
        listed = "; ".join(f"{one_line(name)}: {reason}" for _, name, reason in skips)
        raise UserError(f"{len(skips)} file(s) cannot be used (--strict): {listed}; "
                        "fix or remove them, or run without --strict to skip them")


def _open_partial(partial: Path, plan: Plan, progress: bool) -> None:
    """Reuse OUT/.partial when it was started with the same plan; otherwise start it afresh."""
    plan_file = partial / "plan.json"
    if partial.exists():
        try:
            same = loads_json(plan_file.read_text())["fingerprint"] == plan.fingerprint
        except (OSError, ValueError, KeyError):
            same = False
        if same:
            return
        if progress:
            print(f"prepare: discarding the unfinished preparation in {partial} (other arguments or source)",
                  file=sys.stderr)
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    for split in plan.splits:
        (partial / split).mkdir()
        if plan.encoding == "jpeg":
            continue  # each chunk writes files of its own (chunk_path)
        shape = (len(plan.items[split]), plan.size, plan.size, 3)
        images = np.lib.format.open_memmap(partial / split / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
        del images  # a sparse file: rows are written by the workers
    # plan.json last: its presence says the folder is ready to be resumed
    atomic_write(plan_file, json.dumps({"fingerprint": plan.fingerprint}).encode())


def _finished_partial(partial: Path, plan: Plan) -> bool:
    try:
        same = loads_json((partial / "plan.json").read_text())["fingerprint"] == plan.fingerprint
    except (OSError, ValueError, KeyError):
        return False
    return same and (partial / "finished.json").exists()


# -------------------------------------------------------------------------------------------- workers


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends the pool
    import torch

    torch.set_num_threads(1)  # one core per worker; the pool is the parallelism


def _process_chunk_in_worker(task: ChunkTask) -> tuple[int, str]:
    """_process_chunk in a pool worker: its result goes to a file beside the images, and the worker returns
    (chunk index, that file), a message far under the 4 KiB a pipe writes atomically. A worker killed while
    sending a larger result (the sums of S x S x 3 positions) would leave half a message in the pool's
    result pipe, and the pool's reader would wait for the rest forever instead of reporting the dead worker."""
    done = _process_chunk(task)
    result = _result_path(task.images_path, done.index)
    with open(result, "wb") as f:  # complete before the parent hears of it; a killed worker's chunk is redone
        np.savez(f, sum_image=done.sum_image if done.sum_image is not None else np.zeros(0, np.int64),
                 gram=done.gram, with_stats=done.sum_image is not None, skipped=np.array(json.dumps(done.skipped)))
    return done.index, str(result)


class _ChunkSums:
    """A chunk's exact integer sums of its stored images: per position (the mean image) and the 3 x 3 sum of
    x x^T over pixels (the colour PCA)."""

    def __init__(self, size: int, images: int) -> None:
        # 255 * images fits uint32 for any sane chunk; half the memory traffic of int64
        self.sum_image = np.zeros((size, size, 3), dtype=np.uint32 if 255 * images < 2**32 else np.int64)
        # ...and 255 * 257 fits uint16: per-position sums build up in a uint16 block flushed every 257 images,
        # a quarter of the traffic of adding each image into the uint32 sums.
        self.block, self.in_block = np.zeros((size, size, 3), dtype=np.uint16), 0
        self.gram = np.zeros((3, 3), dtype=np.int64)

    def add(self, image: np.ndarray) -> None:
        add_image(image, self.block, self.gram)
        self.in_block += 1
        if self.in_block == 257:
            self._flush()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self._flush()
        return self.sum_image.astype(np.int64), np.triu(self.gram) + np.triu(self.gram, 1).T

    def _flush(self) -> None:
        np.add(self.sum_image, self.block, out=self.sum_image, casting="unsafe")
        self.block[...], self.in_block = 0, 0


def _process_chunk(task: ChunkTask) -> ChunkResult:
    """Decode one chunk into its rows of images.npy (raw) or into its own JPEG file (quality > 0); return its
    sums and skipped files."""
    if task.quality:
        return _process_jpeg_chunk(task)
    start, items, images_path, size = task.start, task.items, task.images_path, task.size
    row_bytes = size * size * 3
    data_offset = _data_offset(Path(images_path))
    sums = _ChunkSums(size, len(items)) if task.with_stats else None
    row = np.empty((size, size, 3), dtype=np.uint8)  # the image as stored, contiguous
    skipped = []
    with open(images_path, "r+b") as f:
        for offset, item in enumerate(items):
            try:
                pixels = item_pixels(item, size)
            except SkipImage as exc:
                skipped.append((start + offset, str(exc)))
                continue
            row[...] = pixels
            # pwrite of a contiguous row rather than a store through a memory map: no page fault per
            # 4 KiB of a sparse file, about 3x cheaper. No fsync here: the parent fsyncs the file before
            # it records the chunk as done.
            _write_fully(f.fileno(), row, data_offset + (start + offset) * row_bytes)
            if sums is not None:  # from the stored row: exactly what the store will hold
                sums.add(row)
    return _result(task.index, skipped, sums)


def _process_jpeg_chunk(task: ChunkTask) -> ChunkResult:
    """Decode one chunk's images, encode each as JPEG into the chunk's own file, with its offsets (a skipped
    image is an empty entry); the sums are of the pixels the JPEG decodes to: what the store will give."""
    start, items, size, quality = task.start, task.items, task.size, task.quality
    sums = _ChunkSums(size, len(items)) if task.with_stats else None
    decoded = np.empty((size, size, 3), dtype=np.uint8)
    skipped, parts, offsets = [], [], [0]
    for offset, item in enumerate(items):
        try:
            encoded = jpeg.encode(item_pixels(item, size), quality)
        except SkipImage as exc:
            skipped.append((start + offset, str(exc)))
            offsets.append(offsets[-1])
            continue
        parts.append(encoded)
        offsets.append(offsets[-1] + len(encoded))
        if sums is not None:
            jpeg.decode_into(encoded, decoded)
            sums.add(decoded)
    path = Path(task.images_path)
    write_npy(path.with_suffix(".offsets.npy"), np.array(offsets, dtype=np.int64))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # last: its presence says the chunk is whole
        for encoded in parts:
            f.write(encoded)
    return _result(task.index, skipped, sums)


def _result(index: int, skipped: list[tuple[int, str]], sums: _ChunkSums | None) -> ChunkResult:
    if sums is None:
        return ChunkResult(index, skipped)
    sum_image, gram = sums.result()
    return ChunkResult(index, skipped, sum_image, gram)


def _result_path(images_path: str, index: int) -> Path:
    """PARTIAL/results/chunk-N.npz, beside PARTIAL/<split>/images.npy."""
    return Path(images_path).parent.parent / "results" / f"chunk-{index}.npz"


def _read_result(index: int, path: str) -> ChunkResult:
    """_process_chunk's result for a chunk, from the file _process_chunk_in_worker wrote; the file is removed."""
    with np.load(path, allow_pickle=False) as saved:
        skipped = [tuple(s) for s in loads_json(str(saved["skipped"]))]
        sum_image = saved["sum_image"] if bool(saved["with_stats"]) else None
        gram = saved["gram"]
    os.unlink(path)
    return ChunkResult(index, skipped, sum_image, gram)


def _write_fully(fd: int, data: np.ndarray, position: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, position)
        view, position = view[written:], position + written


def _data_offset(path: Path) -> int:
    """Where the array data of an .npy file starts (after its magic and header)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        reader(f)
        return f.tell()


def _run_chunks(plan: Plan, partial: Path, state: State, workers: int, progress: bool, bar_on: bool,
                save_every: float) -> None:
    pending = [c for c in plan.chunks if c.index not in state.done]
    total = sum(len(v) for v in plan.items.values())
    done_images = total - sum(c.stop - c.start for c in pending)
    if progress and state.done:
        print(f"prepare: resuming, {len(state.done)} of {len(plan.chunks)} chunks already done", file=sys.stderr)
    if not pending:
        return
    import torch  # imported before forking, so that workers start warm
    from tqdm import tqdm

    jpeg_chunks = plan.encoding == "jpeg"
    tasks = (ChunkTask(c.index, c.start, plan.items[c.split][c.start:c.stop],
                       str(chunk_path(partial, c.split, c.index) if jpeg_chunks else partial / c.split / "images.npy"),
                       plan.size, c.split == "train", plan.quality if jpeg_chunks else 0) for c in pending)
    chunks = {c.index: c for c in plan.chunks}
    bar = tqdm(total=total, initial=done_images, unit="img", desc="prepare", smoothing=0.1,
               disable=not (progress and bar_on and sys.stderr.isatty()))
    workers = min(workers, len(pending))
    last_save = time.monotonic()

    # a JPEG chunk's file is fsynced by its worker (files.atomic_path) before the chunk is reported done
    image_files = [] if jpeg_chunks else [partial / split / "images.npy" for split in plan.splits]
    (partial / "results").mkdir(exist_ok=True)

    def write_state(snapshot: State) -> None:
        # Rows written so far are in the page cache; fsync puts them on disk before the state file says
        # their chunks are done (a SIGKILL alone would not lose them, a power cut would).
        for path in image_files:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        snapshot.save(partial)

    # Saves during the run go to a background thread: the fsyncs wait for the disk (tens of milliseconds
    # per save), and with --workers 1 decoding would otherwise stop for them. One save at a time, in order.
    saver = ThreadPoolExecutor(1, thread_name_prefix="prepare-save")
    saving: Future | None = None

    def save(wait: bool = True) -> None:
        nonlocal last_save, saving
        if saving is not None:
            saving, previous = None, saving
            previous.result()  # an error of the last background save (a full disk) surfaces here
        snapshot = state.snapshot()  # taken after the rows it counts were written
        last_save = time.monotonic()
        if wait:
            write_state(snapshot)
        else:
            saving = saver.submit(write_state, snapshot)

    def record(result: ChunkResult) -> None:
        chunk = chunks[result.index]
        if result.sum_image is not None:
            state.sum_image += result.sum_image
            state.gram += result.gram
        state.skipped.extend((chunk.split, i, reason) for i, reason in result.skipped)
        state.done.add(result.index)
        bar.update(chunk.stop - chunk.start)
        if time.monotonic() - last_save >= save_every:
            save(wait=False)

    try:
        if workers == 1:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # --workers 1 means one core, as in the pool; restored below
            try:
                for task in tasks:
                    record(_process_chunk(task))
            finally:
                torch.set_num_threads(threads)
        else:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            # ProcessPoolExecutor rather than Pool: a worker that dies (out of memory, a crash inside an
            # image library) raises BrokenProcessPool here instead of leaving the parent waiting forever.
            with ProcessPoolExecutor(workers, multiprocessing.get_context(method), _init_worker) as pool:
                futures = [pool.submit(_process_chunk_in_worker, task) for task in tasks]
                try:
                    for future in as_completed(futures):
                        record(_read_result(*future.result()))
                except BaseException:
                    for future in futures:
                        future.cancel()  # running chunks finish (seconds); queued ones never start
                    raise
    except BrokenProcessPool:
        save()
        raise UserError("a decoding process died (out of memory, or a crash in an image library); "
                        "run the same command again to continue, or use fewer --workers") from None
    except BaseException:
        save()  # keep what finished; the next run continues from here
        raise
    finally:
        bar.close()
        saver.shutdown(wait=True)
    save()
