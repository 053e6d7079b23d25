"""Time to accuracy on real photographs: `alexnet train --preset photos --budget B` against torchvision's alexnet
trained the way torchvision's reference script trains it, on the same folder and budget, one after the other.

    .venv/bin/python benchmarks/bench_photos.py --data FOLDER --budget 30m [--store STORE] [--out DIR]
                                                [--only ours,peer] [--peer-setting auto|W,T] [--reuse-ours]
                                                [--json FILE]

FOLDER holds train/<class>/*.JPEG and val/<class>/*.JPEG (Imagewoof: fetch it as docs/RESULTS.md says). STORE is
the folder prepared by `alexnet prepare FOLDER --out STORE` (prepared here when missing; its time is not counted:
a store is prepared once and trained on many times).

The peer (references/classification/train.py of torchvision, for alexnet): ImageFolder + DataLoader with workers,
RandomResizedCrop(224) + RandomHorizontalFlip, ImageNet normalisation, SGD lr 0.01, momentum 0.9, weight decay
1e-4, the rate following a cosine from 0.01 to 0 over the budget (by elapsed time, since the epoch count is not
known in advance), batch 128, validation each epoch at Resize(256) + CenterCrop(224). In its best CPU settings:
channels_last, torch.optim.SGD(fused=True), freed memory kept (glibc; as ours), bf16 autocast where the CPU has
bf16 arithmetic (as ours does; fp32 elsewhere), the loader workers (0 to 2) and training threads (1 to all
cores) that stepped fastest in a short trial of each, pinned memory off. The budget counts its validation, as ours.

Printed and written: validation top-1 against wall time for each epoch of each, images/s, peak memory (the
process and its workers), and the time each needed to reach the peer's final accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import MemorySampler, machine, markdown_table, write_json
from torch.utils.data import DataLoader

from alexnet.budget import format_duration, parse_duration
from alexnet.hardware import auto_precision
from alexnet.runtime import keep_freed_memory

ROOT = Path(__file__).resolve().parents[1]


def peer_loaders(data: Path, workers: int, batch: int) -> tuple[DataLoader, DataLoader]:
    from torchvision import datasets, transforms

    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    train = datasets.ImageFolder(data / "train", transforms.Compose([
        transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]))
    val = datasets.ImageFolder(data / "val", transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), normalize]))
    kw = {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": False}
    return (DataLoader(train, batch_size=batch, shuffle=True, drop_last=False, **kw),
            DataLoader(val, batch_size=batch, shuffle=False, **kw))


def peer_model(classes: int) -> torch.nn.Module:
    from torchvision.models import alexnet

    return alexnet(num_classes=classes).to(memory_format=torch.channels_last)


def peer_trial(data: Path, batch: int, steps: int = 6) -> dict[tuple[int, int], float]:
    """Images/s of the peer's training for each (loader workers, training threads) of 0 to 2 workers and 1 to all
    cores of threads, a short trial each."""
    rates = {}
    keep_freed_memory()
    cores = len(os.sched_getaffinity(0))
    for workers, threads in [(w, t) for w in (0, 1, 2) for t in range(1, cores + 1)]:
        torch.set_num_threads(threads)
        train, _ = peer_loaders(data, workers, batch)
        model = peer_model(len(train.dataset.classes))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4, fused=True)
        it = iter(train)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=auto_precision(torch.device("cpu")) == "bf16")
        for i in range(steps + 2):
            if i == 2:
                start = time.perf_counter()
            x, y = next(it)
            with autocast:
                loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        rates[workers, threads] = steps * batch / (time.perf_counter() - start)
        print(f"peer trial: {workers} worker(s), {threads} training thread(s): "
              f"{rates[workers, threads]:.1f} images/s", flush=True)
        del it, train
    return rates


def run_peer(data: Path, budget: float, workers: int, threads: int, batch: int) -> dict:
    torch.set_num_threads(threads)
    keep_freed_memory()  # the allocator setting ours runs with, for the peer too (its best: docs/PERFORMANCE.md)
    torch.manual_seed(0)
    train, val = peer_loaders(data, workers, batch)
    model = peer_model(len(train.dataset.classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4, fused=True)
    bf16 = auto_precision(torch.device("cpu")) == "bf16"
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    epochs, seen, train_s = [], 0, 0.0
    start = time.perf_counter()
    with MemorySampler(interval=1.0) as mem:  # smaps_rollup of a 3 GB process is not free: once a second
        while time.perf_counter() - start < budget:
            model.train()
            t0 = time.perf_counter()
            for x, y in train:
                elapsed = time.perf_counter() - start
                if elapsed >= budget:
                    break
                for g in opt.param_groups:  # cosine over the budget, by elapsed time
                    g["lr"] = 0.01 * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
                with autocast:
                    loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                seen += len(y)
            train_s += time.perf_counter() - t0
            top1 = peer_validate(model, val, autocast)
            epochs.append({"epoch": len(epochs) + 1, "elapsed_s": time.perf_counter() - start,
                           "val_top1": top1})
            print(f"peer epoch {len(epochs)}: val top-1 {top1:.2f}% at {format_duration(epochs[-1]['elapsed_s'])}",
                  flush=True)
    return {"name": "torchvision alexnet, reference recipe", "epochs": epochs, "images_per_s": seen / train_s,
            "peak_memory_mib": mem.peak["pss_mb"], "workers": workers, "threads": threads,
            "precision": "bf16" if bf16 else "fp32"}


@torch.no_grad()
def peer_validate(model: torch.nn.Module, val: DataLoader, autocast) -> float:
    model.eval()
    hits = n = 0
    for x, y in val:
        with autocast:
            logits = model(x.contiguous(memory_format=torch.channels_last))
        hits += int((logits.argmax(1) == y).sum())
        n += len(y)
    return 100.0 * hits / n


def run_ours(store: Path, budget_arg: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "alexnet", "train", "--preset", "photos", "--data", str(store), "--out", str(out),
           "--budget", budget_arg, "--no-progress", "eval_ten_crop=false"]
    print("ours: " + " ".join(cmd[2:]), flush=True)
    start = time.perf_counter()
    with MemorySampler(interval=1.0) as mem:  # smaps_rollup of a 3 GB process is not free: once a second
        proc = subprocess.Popen(cmd)
        while proc.poll() is None:
            time.sleep(0.5)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"ours exited with {proc.returncode}")
    return read_ours(out, wall, mem.peak["pss_mb"])


def read_ours(out: Path, wall: float | None, peak: float | None) -> dict:
    """Our run's epochs (validation top-1 against elapsed time) from its metrics.jsonl."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs, seen, train_s = [], 0, 0.0
    for r in records:
        if r["kind"] == "epoch":
            epochs.append({"epoch": r["epoch"] + 1, "elapsed_s": r["elapsed_s"],
                           "val_top1": 100.0 - r["val_top1_error"]})
            train_s += r["epoch_time"]
    steps = max(r["step"] for r in records if r["kind"] == "epoch")
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    seen = steps * cfg["optim"]["batch_size"]
    return {"name": "alexnet --preset photos", "epochs": epochs, "images_per_s": seen / train_s,
            "peak_memory_mib": peak, "wall_s": wall, "precision": cfg["train"]["precision"],
            "channels_last": cfg["train"]["channels_last"]}


def time_to(epochs: list[dict], top1: float) -> float | None:
    return next((e["elapsed_s"] for e in epochs if e["val_top1"] >= top1), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--store", type=Path)
    ap.add_argument("--budget", default="30m")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "photos")
    ap.add_argument("--only", default="ours,peer")
    ap.add_argument("--peer-setting", default="auto", metavar="WORKERS,THREADS",
                    help="the peer's loader workers and training threads (auto: the fastest in a short trial)")
    ap.add_argument("--reuse-ours", action="store_true",
                    help="read a finished run of ours in OUT/ours instead of training it again")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "photos.json")
    args = ap.parse_args()
    budget = parse_duration(args.budget)
    runs = []
    if "ours" in args.only:
        store = args.store or args.out / "store"
        if not (store / "manifest.json").is_file():
            subprocess.run([sys.executable, "-m", "alexnet", "prepare", str(args.data), "--out", str(store),
                            "--no-progress"], check=True)
        out = args.out / "ours"
        if args.reuse_ours and (out / "metrics.jsonl").is_file():
            runs.append(read_ours(out, wall=None, peak=None))
        elif out.exists():
            raise SystemExit(f"{out} exists: remove it, give another --out, or pass --reuse-ours")
        else:
            runs.append(run_ours(store, args.budget, out))
    if "peer" in args.only:
        workers, threads = (max(peer_trial(args.data, args.batch).items(), key=lambda kv: kv[1])[0]
                            if args.peer_setting == "auto" else map(int, args.peer_setting.split(",")))
        runs.append(run_peer(args.data, budget, workers, threads, args.batch))
    target = next((r["epochs"][-1]["val_top1"] for r in runs if r["name"].startswith("torchvision")), None)
    rows = []
    for r in runs:
        final = r["epochs"][-1]
        reach = time_to(r["epochs"], target) if target is not None else None
        rows.append([r["name"], r["precision"], len(r["epochs"]), f"{final['val_top1']:.2f}%",
                     format_duration(final["elapsed_s"]), f"{r['images_per_s']:.1f}",
                     "-" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}",
                     "-" if reach is None else format_duration(reach)])
    table = markdown_table(["run", "precision", "epochs", "val top-1 (centre)", "wall time", "train images/s",
                            "peak memory MiB", "time to the peer's final top-1"], rows)
    curves = "\n".join(f"{r['name']}: " + ", ".join(f"{e['val_top1']:.1f}% at {e['elapsed_s'] / 60:.1f} min"
                                                    for e in r["epochs"]) for r in runs)
    print(f"\nPhotographs at 224, budget {format_duration(budget)}, {args.data}\n\n{table}\n\n{curves}")
    write_json(args.json, {"machine": machine(), "budget_s": budget, "data": str(args.data), "runs": runs,
                           "table": table})


if __name__ == "__main__":
    main()
