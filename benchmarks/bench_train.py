"""Training from a real store, through the loader and augmentation, as `alexnet train` runs it.

    .venv/bin/python benchmarks/bench_train.py [--quick] [--presets paper,one-tower,cifar,figure1,demo]
                                               [--epoch-images 3840] [--device cpu|cuda] [--json ...]

1. Step rate of each preset with real input (train.train_one_epoch: loader thread, augmentation, model,
   PaperSGD, the per-step checks) against the same Run's model and optimizer stepping again and again on
   one batch already loaded and augmented, in the same process, in alternating blocks: the ratio is what
   the data path costs (the loader restarts at each block, so its first batch is not prefetched there).
   Also the process's peak resident memory (the kernel's high-water mark). paper and one-tower read the
   ImageNet photos' store (256, 224 crops), the small presets the CIFAR-10 store (32).
2. The cifar preset's epoch end to end against the plain way (ImageFolder JPEGs + torchvision transforms +
   DataLoader with 2 workers + the same net with torch.nn.LocalResponseNorm + torch.optim.SGD), the model as
   it comes (NCHW, float32, SGD's loop) and at its best stock settings (channels_last, fused SGD, freed memory
   kept, the preset's bf16), the faster of the two the baseline: the same
   number of training images (--epoch-images, a subset of the 45,000: the epoch time scales with it), from
   process start (model, store, workers) to the last step, each side twice in fresh processes, alternating,
   the faster run of each kept; peak memory of the process and its workers (PSS).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_data import cases as data_cases
from common import (
    OUT,
    SHARED_DATA,
    MemorySampler,
    machine,
    make_step,
    markdown_table,
    median,
    no_data_message,
    peak_rss_mb,
    sync,
    time_steps,
    write_json,
)

from alexnet.config import build_config
from alexnet.data.augment import augment_train
from alexnet.runtime import keep_freed_memory
from alexnet.train import train_one_epoch

STORE_OF = {"paper": "imagenet", "one-tower": "imagenet", "cifar": "cifar10", "figure1": "cifar10", "demo": "cifar10"}


def make_run(preset: str, store_path: str, device: torch.device, overrides: dict, run_dir: Path):
    from alexnet.data.store import open_store
    from alexnet.parallel.ddp import DistContext
    from alexnet.train import adapt_to_store, set_up

    cfg = build_config(preset, overrides={"train.device": device.type, **overrides})
    store = open_store(store_path)
    adapt_to_store(cfg, store)
    return set_up(cfg, store, run_dir, DistContext(device=device), progress=False)


def run_steps(run, n: int) -> None:
    """n more training steps of `run`, crossing epoch ends as fit() does."""
    st = run.state
    target = st.global_step + n
    run.cfg.train.max_steps = target
    while st.global_step < target:
        if st.step_in_epoch >= run.train_loader.steps_per_epoch():
            st.epoch, st.step_in_epoch = st.epoch + 1, 0
        train_one_epoch(run, st.epoch)


def reused_batch_step(run) -> Callable[[], None]:  # noqa: ANN001
    """A training step of `run`'s model and optimizer on one real augmented batch, kept and reused: the step
    without reading or augmentation."""
    cfg = run.cfg
    first = next(iter(run.train_loader.train_epoch(cfg.train.seed, 0)))
    x = augment_train(first.images, first.index, cfg.data, run.stats, cfg.train.seed, 0)
    return make_step(run.net, run.optimizer, x, first.labels, run.autocast)


def steps(preset: str, store_path: str, device: torch.device, warmup: int, rounds: int, block: int) -> dict:
    """Seconds per step with real input and with one batch reused, same model: `rounds` blocks of `block`
    steps of each in turn (so a load coming and going on a shared machine slows both alike)."""
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(preset, store_path, device, {"train.log_every": 10**9}, Path(tmp))
        cfg = run.cfg
        synthetic = reused_batch_step(run)
        run_steps(run, warmup)
        time_steps(synthetic, warmup, 0, device)
        real, synth = [], []
        for _ in range(rounds):
            sync(device)
            start = time.perf_counter()
            run_steps(run, block)
            sync(device)
            real.append((time.perf_counter() - start) / block)
            synth.append(sum(time_steps(synthetic, 0, block, device)) / block)
        peak_gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        return {"preset": preset, "real_s": median(real), "synthetic_s": median(synth), "batch": cfg.optim.batch_size,
                "peak_rss_mb": peak_rss_mb(), "peak_gpu_mb": peak_gpu}


def epoch_ours(store_path: str, images: int, device: torch.device) -> dict:
    with tempfile.TemporaryDirectory() as tmp, MemorySampler(0.2) as mem:
        start = time.perf_counter()
        run = make_run("cifar", store_path, device, {"train.limit_train": images, "train.log_every": 10**9},
                       Path(tmp))
        outcome = train_one_epoch(run, 0)
        sync(device)
        elapsed = time.perf_counter() - start
    assert outcome == "done"
    return {"seconds": elapsed, "steps": run.state.global_step, "peak_pss_mb": mem.peak["pss_mb"],
            "train_loss": run.state.epoch_sums[0] / max(run.state.epoch_sums[2], 1)}


def epoch_plain(store_path: str, images: int, device: torch.device, workers: int, at_its_best: bool) -> dict:
    from plain import plain_loader, plain_net, plain_sgd

    from alexnet.data.store import open_store

    with MemorySampler(0.2) as mem:
        start = time.perf_counter()
        cfg = build_config("cifar")
        store = open_store(store_path)
        torch.manual_seed(0)
        # as stock PyTorch runs it (NCHW, float32, SGD's loop), or at its best stock settings (as bench_step's
        # "plain at its best": channels_last, SGD's fused kernel, freed memory kept, the preset's bf16 autocast);
        # which is faster depends on the CPU (bf16 pays only with AMX), so both run and the faster is the baseline
        if at_its_best:
            keep_freed_memory()
        layout = torch.channels_last if at_its_best else torch.contiguous_format
        model = plain_net(cfg).to(device).to(memory_format=layout)
        opt = plain_sgd(model, cfg, at_its_best=at_its_best)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" or (
            at_its_best and cfg.train.precision == "bf16"))
        batch = cfg.optim.batch_size
        loader = plain_loader(str(SHARED_DATA / "cifar10" / "train"), store, cfg.data.crop, batch, images // batch,
                              workers, resize=False, pin=device.type == "cuda")
        model.train()
        n, loss_sum = 0, 0.0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast:
                logits = model(x.contiguous(memory_format=layout))
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += float(loss)
            n += 1
        sync(device)
        elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "steps": n, "peak_pss_mb": mem.peak["pss_mb"], "train_loss": loss_sum / max(n, 1)}


def child(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    kind, what = args.one.split(":")
    store = data_cases(args.quick)[STORE_OF.get(what, "cifar10")]["store"]
    if kind == "steps":
        big = STORE_OF[what] == "imagenet"
        warmup, rounds, block = (1, 2, 1) if big else (3, 2 if args.quick else 4, 5)
        out = steps(what, store, device, warmup, rounds, block)
    elif what == "ours":
        out = epoch_ours(store, args.epoch_images, device)
    else:
        out = epoch_plain(store, args.epoch_images, device, args.workers, at_its_best=what == "plain-best")
    print(json.dumps(out))


def spawn(args: argparse.Namespace, one: str) -> dict:
    cmd = [sys.executable, __file__, "--one", one, "--device", args.device, "--epoch-images", str(args.epoch_images),
           "--workers", str(args.workers)] + (["--quick"] if args.quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and images: a smoke test, not for quoting")
    ap.add_argument("--presets", default="paper,one-tower,cifar,figure1,demo")
    ap.add_argument("--epoch-images", type=int, default=None, help="training images in the timed epoch")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader worker processes of the plain way")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path, default=OUT / "train.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.epoch_images is None:
        args.epoch_images = 1280 if args.quick else 3840
    if args.one:
        child(args)
        return
    available = data_cases(args.quick)
    step_rows, step_results = [], []
    for preset in filter(None, args.presets.split(",")):
        if STORE_OF[preset] not in available:
            print(no_data_message(STORE_OF[preset]), flush=True)
            continue
        r = spawn(args, f"steps:{preset}")
        step_results.append(r)
        print(f"{preset:9s} real input {r['real_s'] * 1000:.0f} ms/step, one batch reused "
              f"{r['synthetic_s'] * 1000:.0f} ms/step, peak RSS {r['peak_rss_mb']:.0f} MiB", flush=True)
        step_rows.append([preset, STORE_OF[preset], f"{r['real_s'] * 1000:.0f}", f"{r['synthetic_s'] * 1000:.0f}",
                          f"{r['synthetic_s'] / r['real_s']:.2f}", f"{r['batch'] / r['real_s']:.1f}",
                          f"{r['peak_rss_mb']:.0f}"])
    tables = [markdown_table(["preset", "store", "real input ms/step", "one batch reused ms/step",
                              "real / reused rate", "real images/s", "peak RSS MiB"], step_rows)]
    epoch_results = {}
    if "cifar10" in available:
        # in turn, twice: the faster of each side's two runs (a shared machine's load comes and goes)
        for _ in range(1 if args.quick else 2):
            for side in ("plain", "plain-best", "ours"):
                r = spawn(args, f"epoch:{side}")
                print(f"cifar epoch, {side}: {r['seconds']:.1f} s for {r['steps']} steps, peak "
                      f"{r['peak_pss_mb']:.0f} MiB", flush=True)
                if side not in epoch_results or r["seconds"] < epoch_results[side]["seconds"]:
                    epoch_results[side] = r
        stock, best, o = epoch_results["plain"], epoch_results["plain-best"], epoch_results["ours"]
        p = min(stock, best, key=lambda r: r["seconds"])  # the plain way's faster form is the baseline
        tables.append(markdown_table(
            ["cifar preset, one epoch of", "plain, stock (JPEG DataLoader, 2 workers)", "plain, net at its best",
             "ours (store)", "speed-up against the faster plain", "plain peak MiB", "ours peak MiB"],
            [[f"{args.epoch_images} images ({o['steps']} steps)", f"{stock['seconds']:.1f} s",
              f"{best['seconds']:.1f} s", f"{o['seconds']:.1f} s", f"{p['seconds'] / o['seconds']:.2f}x",
              f"{p['peak_pss_mb']:.0f}", f"{o['peak_pss_mb']:.0f}"]]))
        full = 45000 / args.epoch_images
        print(f"(a full epoch of 45,000 images: about {p['seconds'] * full:.0f} s plain, {o['seconds'] * full:.0f} s "
              "ours, scaled linearly)")
    else:
        print(no_data_message("cifar10"), flush=True)
    table = "\n\n".join(tables)
    print(f"\nTraining from real stores on {args.device}\n")
    print(table)
    write_json(args.json, {"machine": machine(), "device": args.device, "steps": step_results,
                           "epoch": epoch_results, "epoch_images": args.epoch_images, "table": table})


if __name__ == "__main__":
    main()
