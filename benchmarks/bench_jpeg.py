"""JPEG stores: their size against raw, the CPU cost of a batch per core, and open/read cost against length.

    .venv/bin/python benchmarks/bench_jpeg.py [--batches 20] [--repeats 3] [--json ...]

1. Size: ../shared/data's 250 ILSVRC-2012 photos prepared at 256 as raw pixels and as JPEG (quality 90).
2. Images per second per core, one thread, for a training batch of 128 (random images, 224 crops, flip, mean
   image, PCA colour noise): ours from the JPEG store (decode + augment) and from the raw store (read +
   augment), both as `alexnet train` runs them; against torchvision on the original JPEGs, each in its own
   best per-image form: PIL decode + torchvision.transforms (what ImageFolder does), and
   torchvision.io.decode_jpeg (libjpeg-turbo) + transforms.v2 on uint8 tensors. The methods alternate,
   --repeats times, and each keeps its fastest run.
3. Length: JPEG stores of 2,000, 20,000 and 200,000 generated 32x32 images (prepared from generated raw
   stores): time and memory to open one, and time per image of reading random batches, in a fresh process each.
The projection to ILSVRC-2012 on a one-GPU machine is printed from 1 and 2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import OUT, SHARED_DATA, machine, markdown_table, no_data_message, write_json

ILSVRC_TRAIN = 1_281_167


def prepared(src: Path, name: str, encoding: str) -> Path:
    from alexnet.data.store import is_store
    from alexnet.prepare.writer import prepare

    out = OUT / "stores" / name
    if not is_store(out):
        print(f"preparing {src} into {out} ({encoding}, once) ...", flush=True)
        prepare(src, out, size=256, progress=False, encoding=encoding)
    return out


def ours(store_path: Path, batches: int, batch: int) -> float:
    """Images/s of reading (or decoding) and augmenting training batches on one CPU thread."""
    from alexnet.config import build_config
    from alexnet.data.augment import ColourStats, augment_train
    from alexnet.data.loader import BatchLoader
    from alexnet.data.store import open_store

    store = open_store(store_path)
    cfg = build_config("paper").data
    split = store.split("train")
    cpu = torch.device("cpu")
    stats = ColourStats.build(torch.from_numpy(store.mean), torch.from_numpy(store.pca_eigenvectors),
                              torch.from_numpy(store.pca_eigenvalues), cfg.normalize, cpu)
    loader = BatchLoader(split.images, split.labels, batch, cpu)
    rng = np.random.default_rng(0)

    def one_batch(step: int) -> None:
        idx = np.sort(rng.integers(0, len(split), batch))
        augment_train(loader.read_images(idx), torch.from_numpy(idx), cfg, stats, seed=0, epoch=step)

    one_batch(0)  # first calls (compiled loops, buffers) are a run's, not a batch's
    start = time.perf_counter()
    for step in range(batches):
        one_batch(step)
    return batches * batch / (time.perf_counter() - start)


def torchvision_pil(folder: Path, store_path: Path, batches: int, batch: int) -> float:
    """ImageFolder's way: PIL decode of the original JPEG, resize and centre crop to 256, the augmentation."""
    from plain import plain_transform
    from torchvision.datasets import ImageFolder

    from alexnet.data.store import open_store

    ds = ImageFolder(str(folder), transform=plain_transform(open_store(store_path), 224, resize=True))
    rng = np.random.default_rng(0)
    ds[0]  # warm
    start = time.perf_counter()
    for _ in range(batches):
        torch.stack([ds[int(i)][0] for i in rng.integers(0, len(ds), batch)])
    return batches * batch / (time.perf_counter() - start)


def torchvision_io(folder: Path, store_path: Path, batches: int, batch: int) -> float:
    """torchvision.io.decode_jpeg (libjpeg-turbo) and transforms.v2 on uint8 tensors, cropping and flipping
    before anything turns to float (only the 224 x 224 view is converted, with its window of the mean image):
    torchvision's fastest per-image CPU path."""
    from torchvision.datasets import ImageFolder
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    from torchvision.transforms import v2

    from alexnet.data.store import open_store

    store = open_store(store_path)
    mean = torch.from_numpy(store.mean).permute(2, 0, 1).contiguous()
    vectors, values = torch.from_numpy(store.pca_eigenvectors), torch.from_numpy(store.pca_eigenvalues)
    geometry = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(256)])
    paths = [p for p, _ in ImageFolder(str(folder)).samples]
    rng = np.random.default_rng(0)

    def view(path: str) -> torch.Tensor:
        image = geometry(decode_jpeg(read_file(path), mode=ImageReadMode.RGB))
        top, left = (int(v) for v in torch.randint(0, 256 - 224 + 1, (2,)))
        x = image[:, top:top + 224, left:left + 224].float() - mean[:, top:top + 224, left:left + 224]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x + (vectors @ (torch.randn(3) * 0.1 * values.sqrt()))[:, None, None]

    view(paths[0])  # warm
    start = time.perf_counter()
    for _ in range(batches):
        torch.stack([view(paths[int(i)]) for i in rng.integers(0, len(paths), batch)])
    return batches * batch / (time.perf_counter() - start)


def generated_raw_store(out: Path, count: int) -> Path:
    """A raw store of `count` generated 32x32 images in 10 classes, written directly (a ramp per class plus
    noise), with the manifest prepare would write."""
    from alexnet.data.store import FORMAT, checksum
    from alexnet.prepare.imagestats import colour_pca

    rng = np.random.default_rng(count)
    (out / "train").mkdir(parents=True)
    labels = np.arange(count, dtype=np.int64) % 10
    images = np.lib.format.open_memmap(out / "train" / "images.npy", mode="w+", dtype=np.uint8,
                                       shape=(count, 32, 32, 3))
    ramp = np.linspace(0, 200, 32, dtype=np.float32)
    for start in range(0, count, 10_000):
        n = min(10_000, count - start)
        base = ramp[None, :, None, None] * (1 + labels[start:start + n, None, None, None] % 3) / 3
        images[start:start + n] = np.clip(base + rng.integers(0, 55, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
    images.flush()
    np.save(out / "train" / "labels.npy", labels)
    pixels = np.asarray(images, dtype=np.float64)
    np.save(out / "mean.npy", pixels.mean(axis=0).astype(np.float32))
    flat = np.asarray(images).reshape(-1, 3).astype(np.int64)
    _, eigenvalues, eigenvectors = colour_pca(flat.sum(axis=0), flat.T @ flat, len(flat))
    manifest = {"format": FORMAT, "encoding": "raw", "size": 32, "classes": [f"c{i}" for i in range(10)],
                "class_names": [f"c{i}" for i in range(10)], "source": {"path": "generated", "layout": "generated"},
                "pca": {"eigenvalues": eigenvalues, "eigenvectors": eigenvectors}, "complete": True,
                "splits": {"train": {"count": count, "per_class": np.bincount(labels).tolist(), "skipped": [],
                                     "images_bytes": os.path.getsize(out / "train" / "images.npy"),
                                     "checksum": checksum(out / "train" / "images.npy",
                                                          out / "train" / "labels.npy")}}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


LENGTH_PROBE = """
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from alexnet.data.loader import BatchLoader
from alexnet.data.store import open_store
def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
before = rss(); t = time.perf_counter()
store = open_store(sys.argv[1]); split = store.split('train')
opened = time.perf_counter() - t; after = rss()
loader = BatchLoader(split.images, split.labels, 256, torch.device('cpu'))
rng = np.random.default_rng(0); idx = [np.sort(rng.integers(0, len(split), 256)) for _ in range(40)]
loader.read_images(idx[0])
t = time.perf_counter()
for i in idx: loader.read_images(i)
per_image = (time.perf_counter() - t) / (40 * 256)
print(json.dumps({"open_s": opened, "open_mib": after - before, "read_us": per_image * 1e6, "rss_mib": rss()}))
"""


def length_rows(work: Path) -> list[dict]:
    from alexnet.prepare.writer import prepare

    rows = []
    for count in (2_000, 20_000, 200_000):
        raw = generated_raw_store(work / f"raw-{count}", count)
        jpeg = work / f"jpeg-{count}"
        start = time.perf_counter()
        prepare(raw, jpeg, progress=False, encoding="jpeg")
        prepare_s = time.perf_counter() - start
        probe = subprocess.run([sys.executable, "-c", LENGTH_PROBE, str(jpeg)], capture_output=True, text=True,
                               check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        rows.append({"images": count, "prepare_s": prepare_s, **json.loads(probe.stdout)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    folder = SHARED_DATA / "imagenet-samples"
    if not folder.is_dir():
        print(no_data_message("imagenet-samples"))
        return 0
    torch.set_num_threads(1)
    raw, jpeg = prepared(folder, "imagenet-s256", "raw"), prepared(folder, "imagenet-s256-jpeg", "jpeg")
    from alexnet.data.store import open_store

    raw_bytes = open_store(raw).manifest["splits"]["train"]["images_bytes"]
    jpeg_bytes = open_store(jpeg).manifest["splits"]["train"]["images_bytes"]
    originals = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    methods = {"ours, JPEG store (decode + augment)": lambda: ours(jpeg, args.batches, 128),
               "ours, raw store (read + augment)": lambda: ours(raw, args.batches, 128),
               "torchvision, PIL + transforms (ImageFolder)": lambda: torchvision_pil(folder, raw, args.batches, 128),
               "torchvision, decode_jpeg + transforms.v2": lambda: torchvision_io(folder, raw, args.batches, 128)}
    best = {name: 0.0 for name in methods}
    for _ in range(args.repeats):
        for name, run in methods.items():
            best[name] = max(best[name], run())
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        lengths = length_rows(Path(tmp))

    per_image = jpeg_bytes / 250
    jpeg_rate = best["ours, JPEG store (decode + augment)"]
    print(f"## JPEG stores ({machine()['cpu']}, torch {torch.__version__})\n")
    print(markdown_table(["store of the 250 photos at 256", "bytes", "per image", "against raw"], [
        ["raw pixels", f"{raw_bytes:,}", f"{raw_bytes / 250 / 1024:.1f} KiB", "1"],
        ["JPEG quality 90", f"{jpeg_bytes:,}", f"{per_image / 1024:.1f} KiB", f"1/{raw_bytes / jpeg_bytes:.1f}"],
        ["the original JPEGs (full size)", f"{originals:,}", f"{originals / 250 / 1024:.1f} KiB",
         f"1/{raw_bytes / originals:.1f}"]]))
    print()
    print(markdown_table(["training batch of 128, one core", "images/s", "against ours (JPEG)"],
                         [[name, f"{rate:.0f}", f"{rate / jpeg_rate:.2f}"] for name, rate in best.items()]))
    print()
    print(markdown_table(["JPEG store length", "prepare (s)", "open (ms)", "memory at open (MiB)",
                          "read, per image (us)"],
                         [[f"{r['images']:,}", f"{r['prepare_s']:.1f}", f"{r['open_s'] * 1000:.1f}",
                           f"{r['open_mib']:.1f}", f"{r['read_us']:.1f}"] for r in lengths]))
    print()
    size_gb = ILSVRC_TRAIN * per_image / 1e9
    rows = [[f"{rate:,}", f"{rate / jpeg_rate:.1f}"] for rate in (25_000, 30_000)]
    print(f"Projected to ILSVRC-2012's {ILSVRC_TRAIN:,} training images: a JPEG store of about {size_gb:.0f} GB "
          f"(raw: {ILSVRC_TRAIN * 196_608 / 1e9:.0f} GB), which fits in the page cache of a 128 GB machine.\n")
    print(markdown_table(["images/s to feed", "cores decoding on the CPU (at this machine's rate per core)"], rows))
    if args.json:
        write_json(args.json, {"machine": machine(), "raw_bytes": raw_bytes, "jpeg_bytes": jpeg_bytes,
                               "originals_bytes": originals, "images_per_s": best, "lengths": lengths,
                               "ilsvrc_jpeg_gb": size_gb})
    return 0


if __name__ == "__main__":
    sys.exit(main())
