"""Images per second of `prepare` against the plain Pillow way, on real ImageNet photos.

    .venv/bin/python benchmarks/bench_prepare.py [--data ../shared/data/imagenet-samples] [--copies 4]

Plain way (single process): Image.open(path).convert("RGB"), resize the shorter side to 256 with
BILINEAR (torchvision's Resize rule), centre 256 x 256 crop, np.asarray: what a training script does.
prepare: the whole call (listing, decoding, torch's uint8 resize, writing the rows with pwrite, exact
mean/PCA sums, finishing the store), with --workers 1 and with all cores; and its decoder alone. Plain
upright RGB/grey JPEGs (all 250 of these photos) are decoded by libjpeg-turbo through simplejpeg,
which yields exactly Pillow's pixels at about 1.5x the speed; other files go through Pillow. Both ways
use JPEG DCT scaling by 1/2, 1/4 or 1/8 (Pillow's draft rule) when both sides stay >= 256; the other
libjpeg-turbo factors (M/8, which could bring a 500 x 375 photo to 375 x 282) are not used because their
IDCT has no SIMD version and costs more than decoding at full size. Two sets: all photos, and those
whose shorter side is >= 512 (where DCT scaling applies).
The source is an ImageFolder of symlinks with each photo `copies` times, so fixed costs are amortised;
each measurement is the best of `repeats` runs, alternating methods. Two clocks: wall time, and CPU
time (user + system of this process and of the worker processes), whose "images per CPU-second" is the
per-core rate that a shared, busy machine does not distort. Also prints peak resident memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import SHARED_DATA, no_data_message
from PIL import Image

DEFAULT_DATA = SHARED_DATA / "imagenet-samples"


def plain_pillow(paths: list[Path], size: int = 256) -> None:
    for path in paths:
        img = Image.open(path).convert("RGB")
        width, height = img.size
        if width <= height:
            new_w, new_h = size, int(size * height / width)
        else:
            new_w, new_h = int(size * width / height), size
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
        np.asarray(img.crop((left, top, left + size, top + size)))


def _cpu_seconds() -> float:
    """User + system time of this process and of its finished children (the pool's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def build_source(photos: list[Path], copies: int, where: Path) -> list[Path]:
    """where/<wnid>/<copy>_<file>: symlinks to the photos, each `copies` times; returns the links."""
    paths = []
    for photo in photos:
        (where / photo.parent.name).mkdir(parents=True, exist_ok=True)
        for c in range(copies):
            link = where / photo.parent.name / f"{c}_{photo.name}"
            link.symlink_to(photo.resolve())
            paths.append(link)
    return paths


def decoder_only(paths: list[Path], size: int = 256) -> None:
    """prepare's per-image decode (fast JPEG path or Pillow, torch resize) without the store."""
    from alexnet.prepare.decode import load_image

    for path in paths:
        load_image(path, size)


def _photos(data: Path, min_side: int) -> list[Path]:
    photos = []
    for photo in sorted(data.glob("*/*")):
        with Image.open(photo) as img:
            if min(img.size) >= min_side:
                photos.append(photo)
    return photos


def run_set(title: str, photos: list[Path], copies: int, repeats: int, tmp: Path) -> None:
    """Time every method on `copies` x photos and print one markdown table."""
    from alexnet.prepare.writer import prepare

    cores = os.cpu_count() or 1
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def measure(key: str, run) -> None:  # noqa: ANN001
        start_wall, start_cpu = time.perf_counter(), _cpu_seconds()
        run()
        wall[key] = min(wall.get(key, 1e9), time.perf_counter() - start_wall)
        cpu[key] = min(cpu.get(key, 1e9), _cpu_seconds() - start_cpu)

    source = tmp / title.replace(" ", "-")
    paths = build_source(photos, copies, source)
    plain_pillow(paths[:20])  # warm the page cache and Pillow's plugins
    for r in range(repeats):
        measure("plain", lambda: plain_pillow(paths))
        measure("decoder", lambda: decoder_only(paths))
        for workers in sorted({1, cores}):
            out = tmp / f"store-{source.name}-{workers}-{r}"
            measure(f"prepare-{workers}",
                    lambda w=workers, o=out: prepare(source, o, size=256, workers=w, progress=False))
            shutil.rmtree(out)
    n = len(paths)
    print(f"\n{title}: {n} images ({copies} x {len(photos)} photos), best of {repeats}\n")
    print("| method | processes | images/s (wall) | images/s per core (wall) | images per CPU-second | "
          "ratio per core, wall | ratio per CPU-second |")
    print("|---|---|---|---|---|---|---|")
    rows = [("plain Pillow (open, convert, resize, crop)", "plain", 1),
            ("prepare's decoder alone (no store, no statistics)", "decoder", 1)]
    rows += [(f"alexnet prepare --workers {w}", f"prepare-{w}", w) for w in sorted({1, cores})]
    plain_wall, plain_cpu = n / wall["plain"], n / cpu["plain"]
    for name, key, workers in rows:
        rate, per_cpu = n / wall[key], n / cpu[key]
        print(f"| {name} | {workers} | {rate:.0f} | {rate / workers:.0f} | {per_cpu:.0f} | "
              f"{rate / workers / plain_wall:.2f} | {per_cpu / plain_cpu:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--copies", type=int, default=4, help="times each photo appears in the source")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not args.data.is_dir():
        if args.data == DEFAULT_DATA:  # as the other benchmarks: the shared photos are optional
            print(no_data_message("imagenet-samples"))
            return 0
        print(f"bench_prepare: no folder at {args.data}; give --data a folder of photos", file=sys.stderr)
        return 2
    import torch  # imported up front: its start-up is not part of any method's per-image cost

    print(f"{args.data}, {os.cpu_count()} cores, torch {torch.__version__}, Pillow {Image.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        every = _photos(args.data, 0)
        run_set("all photos", every, args.copies, args.repeats, Path(tmp))
        large = _photos(args.data, 512)  # DCT scaling only helps when the shorter side is >= 2 x 256
        if large:
            run_set("photos with shorter side >= 512", large, max(1, len(every) * args.copies // (4 * len(large))),
                    args.repeats, Path(tmp))
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\npeak resident memory: this process {own:.0f} MiB, largest worker {children:.0f} MiB; "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
