"""The loader's memory does not grow with the store: peak resident memory, small store against big store.

    .venv/bin/python benchmarks/bench_memory.py [--quick] [--big 8192] [--json benchmarks/out/memory.json]

Two stores of 256 x 256 images (generated pixels, written once under benchmarks/out/): 256 images (48 MiB)
and --big images (8192: 1.5 GiB). Each process reads one epoch's worth of batches of 128 over the whole
big store (cycling the small one) through the loader and the augmentation (224 crops), and reports its
peak resident memory, anonymous and file-backed (the kernel's counters, sampled every 50 ms).
Ours: BatchLoader, which reads each batch's rows from the file into the batch's buffer.
Plain: indexing the .npy memory map (np.load(mmap_mode="r")[sorted indices]), the usual way to read one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import OUT, MemorySampler, machine, markdown_table, write_json

SIZE, CROP, BATCH = 256, 224, 128


def store_file(n: int) -> Path:
    """OUT/memory/images-N.npy: N generated uint8 images (a tile of noise repeated; content is irrelevant)."""
    path = OUT / "memory" / f"images-{n}.npy"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, SIZE, SIZE, 3))
    tile = np.random.default_rng(0).integers(0, 256, (64, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(0, n, len(tile)):
        arr[i:i + len(tile)] = tile[: n - i]
    arr.flush()
    del arr
    tmp.rename(path)
    return path


def measure(n: int, method: str, batches: int) -> dict:
    from alexnet.config import DataConfig
    from alexnet.data.augment import ColourStats, augment_train
    from alexnet.data.loader import BatchLoader, epoch_permutation

    images = np.load(store_file(n), mmap_mode="r")
    labels = np.zeros(n, dtype=np.int64)
    cfg = DataConfig(image_size=SIZE, crop=CROP)
    cpu = torch.device("cpu")
    stats = ColourStats.build(torch.full((SIZE, SIZE, 3), 120.0), torch.eye(3), torch.tensor([900.0, 100.0, 10.0]),
                              "mean-image", cpu)
    done, epoch = 0, 0
    with MemorySampler() as mem:
        start = time.perf_counter()
        while done < batches:
            if method == "ours":
                for b in BatchLoader(images, labels, BATCH, cpu).train_epoch(0, epoch):
                    augment_train(b.images, b.index, cfg, stats, 0, epoch)
                    done += 1
                    if done == batches:
                        break
            else:
                order = epoch_permutation(n, 0, epoch)
                for s in range(n // BATCH):
                    idx, _ = torch.sort(order[s * BATCH:(s + 1) * BATCH])
                    batch = torch.from_numpy(images[idx.numpy()])
                    augment_train(batch, idx, cfg, stats, 0, epoch)
                    done += 1
                    if done == batches:
                        break
            epoch += 1
        elapsed = time.perf_counter() - start
    return {"images": n, "method": method, "batches": done, "seconds": elapsed, **mem.peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 2048-image big store")
    ap.add_argument("--big", type=int, default=None)
    ap.add_argument("--json", type=Path, default=OUT / "memory.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    big = args.big or (2048 if args.quick else 8192)
    if args.one:
        n, method = args.one.split(":")
        print(json.dumps(measure(int(n), method, big // BATCH)))
        return
    results = []
    for n in (256, big):
        store_file(n)
        for method in ("plain", "ours"):
            cmd = [sys.executable, __file__, "--one", f"{n}:{method}", "--big", str(big)]
            r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            results.append(r)
            print(f"{n:6d} images, {method:5s}: peak anonymous {r['anon_mb']:.0f} MiB, file-backed {r['file_mb']:.0f} "
                  f"MiB ({r['batches']} batches in {r['seconds']:.1f} s)", flush=True)
    label = {"plain": "np.load(mmap_mode='r')[indices]", "ours": "BatchLoader (file reads)"}
    rows = [[f"{r['images']} ({r['images'] * SIZE * SIZE * 3 / 2**20:.0f} MiB)", label[r["method"]], r["batches"],
             f"{r['rss_mb']:.0f}", f"{r['anon_mb']:.0f}", f"{r['file_mb']:.0f}"] for r in results]
    table = markdown_table(["store images", "reader", "batches", "peak RSS MiB", "of it anonymous (peak)",
                            "file-backed (peak)"], rows)
    print(f"\nPeak resident memory reading batches of {BATCH} with {CROP} crops\n")
    print(table)
    write_json(args.json, {"machine": machine(), "results": results, "table": table})


if __name__ == "__main__":
    main()
