"""Training batches per second of the data path alone: store + loader + augmentation against the plain way.

    .venv/bin/python benchmarks/bench_data.py [--quick] [--workers 2] [--device cpu|cuda] [--json ...]

Ours: alexnet's BatchLoader (background thread reading the store file) and augment_train (crop, mirror,
mean image, PCA colour noise for the whole batch), exactly as `alexnet train` runs them.
Plain: torchvision's ImageFolder over the same photos as JPEGs, the same augmentation as per-image
transforms (resize and centre crop to S first, as the store was made), DataLoader with --workers processes.

Two data sets, from ../shared/data next to the repository (skipped with a message when absent):
- imagenet: the 250 ILSVRC-2012 photos, each 8 times (symlinks) so an epoch holds 15 batches; stored at
  256, 224 crops; 30 batches (two epochs) for the plain way;
- cifar10: the 45,000 training JPEGs, stored at 32, 28 crops (the cifar preset), the first 60 batches for
  the plain way.
Each measurement runs in a fresh process from a cold start (worker start-up, first reads, the compiled
loops' first call included) to the last batch, and records the peak memory of that process and its workers
(PSS: shared pages counted once). Ours runs 10 times as many batches as the plain way (20 passes over the
imagenet store, 600 batches of cifar10's): at 10 ms a batch, 30 batches would last about as long as its one-time
start (about 0.3 s, mostly Numba's first call), which a training run pays once, not once per 30 batches.
The methods alternate, --repeats times (default 2); each keeps its fastest run and its largest peak (one
cold start lasts about a second for ours, so a single run moved by 2x with the machine's other work).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import (
    OUT,
    SHARED_DATA,
    MemorySampler,
    machine,
    markdown_table,
    no_data_message,
    real_store,
    sync,
    write_json,
)

COPIES = 8
OURS_TIMES = 10  # ours runs this many times the plain way's batches (module docstring)


def imagenet_source() -> Path | None:
    """benchmarks/out/sources/imagenet-samples-x8/<wnid>/<copy>_<file>: symlinks to the real photos."""
    data = SHARED_DATA / "imagenet-samples"
    if not data.is_dir():
        return None
    where = OUT / "sources" / f"imagenet-samples-x{COPIES}"
    done = where / ".complete"
    if not done.exists():
        for class_dir in sorted(p for p in data.iterdir() if p.is_dir()):
            (where / class_dir.name).mkdir(parents=True, exist_ok=True)
            for photo in sorted(class_dir.iterdir()):
                for c in range(COPIES):
                    link = where / class_dir.name / f"{c}_{photo.name}"
                    if not link.is_symlink():
                        link.symlink_to(photo.resolve())
        done.write_text("")
    return where


def cases(quick: bool) -> dict[str, dict]:
    """name -> folder of JPEGs, store, crop, batches to time."""
    out = {}
    src = imagenet_source()
    if src is not None:
        # the store of the copies: prepared once like any folder (sources/ holds only symlinks)
        from alexnet.data.store import is_store
        from alexnet.prepare.writer import prepare

        store = OUT / "stores" / f"imagenet-samples-x{COPIES}-s256"
        if not is_store(store):
            print(f"preparing {src} into {store} (once) ...", flush=True)
            prepare(src, store, size=256, progress=False)
        out["imagenet"] = {"folder": str(src), "store": str(store), "crop": 224, "resize": True,
                           "batches": 6 if quick else 30}
    else:
        print(no_data_message("imagenet-samples"), flush=True)
    cifar = real_store("cifar10", 32)
    if cifar is not None:
        out["cifar10"] = {"folder": str(SHARED_DATA / "cifar10" / "train"), "store": str(cifar), "crop": 28,
                          "resize": False, "batches": 15 if quick else 60}
    else:
        print(no_data_message("cifar10"), flush=True)
    return out


def run_ours(case: dict, device: torch.device, resident: bool, batch: int) -> int:
    from alexnet.config import DataConfig
    from alexnet.data.augment import ColourStats, augment_train
    from alexnet.data.loader import BatchLoader
    from alexnet.data.store import open_store

    store = open_store(case["store"])
    split = store.split("train")
    cfg = DataConfig(image_size=store.size, crop=case["crop"])
    stats = ColourStats.build(torch.from_numpy(store.mean), torch.from_numpy(store.pca_eigenvectors),
                              torch.from_numpy(store.pca_eigenvalues), cfg.normalize, device)
    loader = BatchLoader(split.images, split.labels, batch, device, on_device=resident)
    n, epoch = 0, 0
    while n < case["batches"] * OURS_TIMES:
        for b in loader.train_epoch(0, epoch):
            augment_train(b.images, b.index, cfg, stats, 0, epoch)
            n += 1
            if n == case["batches"] * OURS_TIMES:
                break
        epoch += 1
    sync(device)
    return n


def run_plain(case: dict, device: torch.device, workers: int, batch: int) -> int:
    from plain import plain_loader

    from alexnet.data.store import open_store

    store = open_store(case["store"])
    loader = plain_loader(case["folder"], store, case["crop"], batch, case["batches"], workers, case["resize"],
                          pin=device.type == "cuda")
    n = 0
    for x, y in loader:
        x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        n += 1
    sync(device)
    return n


def one(spec: str, device: torch.device, workers: int, batch: int, quick: bool) -> dict:
    """Time one (case, method) in this process; the caller runs each in a fresh process."""
    name, method = spec.split(":")
    case = cases(quick)[name]
    with MemorySampler() as mem:
        start = time.perf_counter()
        if method == "plain":
            n = run_plain(case, device, workers, batch)
        else:
            n = run_ours(case, device, method == "ours-resident", batch)
        elapsed = time.perf_counter() - start
    peak_gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"case": name, "method": method, "batches": n, "seconds": elapsed, "batches_per_s": n / elapsed,
            "images_per_s": n * batch / elapsed, "peak_pss_mb": mem.peak["pss_mb"], "peak_gpu_mb": peak_gpu}


def parts(device: torch.device, batch: int, repeats: int) -> list[list[str]]:
    """The two halves alone, best of `repeats` (ms per batch): cutting the views of an in-memory batch (every
    method the code has: the compiled loop on the CPU, one gather everywhere), and reading a
    batch's rows from a store file (file reads against indexing the memory map)."""
    import numpy as np

    from alexnet.data.augment import ColourStats, crop_views
    from alexnet.data.loader import BatchLoader

    def best(fn) -> float:
        times = []
        for _ in range(repeats + 1):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
        return min(times[1:]) * 1000

    rng = np.random.default_rng(0)
    rows = []
    for size, crop in ((256, 224), (32, 28)):
        images = torch.from_numpy(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)).to(device)
        stats = ColourStats.build(torch.full((size, size, 3), 120.0), torch.eye(3), torch.ones(3), "mean-image",
                                  device)
        oy, ox = (torch.randint(0, size - crop + 1, (batch,), device=device) for _ in range(2))
        flip, offsets = torch.rand(batch, device=device) < 0.5, torch.randn(batch, 3, device=device)
        for m in ["compiled", "gather"] if device.type == "cpu" else ["gather"]:
            args = (images, oy, ox, flip, crop, stats, offsets)
            ms = best(lambda m=m, args=args: crop_views(*args, method=m))
            rows.append([f"cut {batch} views of {crop} from {size} (crop, mirror, mean, colour offset): {m}",
                         f"{ms:.1f}"])
    images = rng.integers(0, 256, (2 * batch, 256, 256, 3), dtype=np.uint8)
    path = OUT / "memory" / "parts-images.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, images)
    mapped = np.load(path, mmap_mode="r")
    loader = BatchLoader(mapped, np.zeros(len(mapped), dtype=np.int64), batch, torch.device("cpu"))
    idx = np.sort(rng.permutation(len(mapped))[:batch])
    rows.append([f"read {batch} rows of 256 x 256 from a store file: BatchLoader (file reads)",
                 f"{best(lambda: loader.read_images(idx)):.1f}"])
    rows.append([f"read {batch} rows of 256 x 256 from a store file: memory map, mapped[indices]",
                 f"{best(lambda: torch.from_numpy(mapped[idx])):.1f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer batches: a smoke test, not for quoting")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader worker processes of the plain way")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each method, alternating; the fastest counts")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path, default=OUT / "data.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one measurement, JSON on stdout
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.one:
        print(json.dumps(one(args.one, device, args.workers, args.batch, args.quick)))
        return
    methods = ["plain", "ours"] + (["ours-resident"] if device.type == "cuda" else [])
    runs: dict[tuple[str, str], list[dict]] = {}
    names = list(cases(args.quick))
    for _ in range(args.repeats):  # the methods alternate; each keeps its fastest run and its largest peak
        for name in names:
            for method in methods:
                cmd = [sys.executable, __file__, "--one", f"{name}:{method}", "--workers", str(args.workers),
                       "--batch", str(args.batch), "--device", args.device] + (["--quick"] if args.quick else [])
                proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"{name:8s} {method:13s} {r['batches_per_s']:7.2f} batches/s  peak {r['peak_pss_mb']:.0f} MiB",
                      flush=True)
                runs.setdefault((name, method), []).append(r)
    results = []
    for same in runs.values():
        fastest = max(same, key=lambda r: r["batches_per_s"])
        results.append({**fastest, "peak_pss_mb": max(r["peak_pss_mb"] for r in same),
                        "runs_batches_per_s": [r["batches_per_s"] for r in same]})
    rows = []
    for r in results:
        base = next(b for b in results if b["case"] == r["case"] and b["method"] == "plain")
        label = {"plain": f"plain: ImageFolder JPEGs + transforms + DataLoader({args.workers} workers)",
                 "ours": "ours: store + BatchLoader + augment_train",
                 "ours-resident": "ours, store resident in GPU memory"}[r["method"]]
        rows.append([r["case"], label, r["batches"], f"{r['batches_per_s']:.2f}", f"{r['images_per_s']:.0f}",
                     f"{r['batches_per_s'] / base['batches_per_s']:.1f}x", f"{r['peak_pss_mb']:.0f}"])
    table = markdown_table(["data", "method", "batches", "batches/s", "images/s", "vs plain", "peak MiB (PSS)"],
                           rows)
    part_rows = parts(device, args.batch, 3 if args.quick else 10)
    table += "\n\n" + markdown_table(["the parts alone, one batch", "best ms"], part_rows)
    print(f"\nTraining batches of {args.batch} (crop, mirror, mean image, PCA noise) on {device}, cold start "
          f"to last batch, fastest of {args.repeats} runs\n")
    print(table)
    write_json(args.json, {"machine": machine(), "device": str(device), "batch": args.batch, "results": results,
                           "parts": part_rows, "table": table})


if __name__ == "__main__":
    main()
