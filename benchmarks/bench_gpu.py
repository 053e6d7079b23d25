"""The whole training pipeline on one GPU: store -> loader -> augmentation -> paper net -> PaperSGD.

    python benchmarks/bench_gpu.py [--images 20480] [--batches 128,1024] [--steps 40] [--no-compile]
                                   [--variants] [--jpeg] [--json benchmarks/out/gpu.json]

The store is the ImageNet photos' store of bench_data.py (256 x 256, 224 crops) tiled to --images rows, so
an epoch is many batches long (the content does not change the speed). Each case builds a `Run` exactly as
`alexnet train` does (bf16 autocast, channels_last, the data path's prefetch thread, PaperSGD, the per-step
bookkeeping) and times --steps steps of train.train_one_epoch after a warm-up (compilation included there),
against the same model and optimizer stepping one already augmented batch again and again (what the step
costs with a free data path). Beside them torchvision's alexnet, stepped the same way (bf16, channels_last,
fused SGD), eager and compiled.

Cases: the store in pinned host memory (copied batch by batch) or resident in GPU memory
(train.store_on_device), eager or torch.compile, at each batch size. The share of the GPU's peak counts
6 x 0.724 G = 4.35 GFLOP per training image (forward multiply-adds, x2 for FLOPs, x3 for forward and the
two backward products), against the card's dense bf16 peak and against a bf16 8192^3 matrix product
measured in the same run.

--jpeg adds the same store as a JPEG store (prepare --format jpeg, quality 90), eager, batches decoded by the
CPU threads (libjpeg-turbo) and by nvJPEG on the GPU (train.gpu_decode): can the cores, or the GPU's decoder,
feed the step.

--variants instead times the paper model alone on a synthetic batch (bf16, channels_last) with its LRN
layers computed by the fused Triton kernels, by the eager passes, and without LRN, with grouped or
per-tower convolutions, eager and compiled: where the step's time goes. (Under torch.compile the layer is
inductor's own fusion either way.)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_data import cases as data_cases
from bench_train import make_run, reused_batch_step, run_steps
from common import OUT, machine, make_step, markdown_table, sync, write_json
from plain import torchvision_sgd

FLOP_PER_IMAGE = 6 * 0.7244e9  # forward MACs of the paper preset (`alexnet summary --preset paper`)
DENSE_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "4090": 165e12}


def card_peak(name: str) -> float | None:
    return next((v for k, v in DENSE_BF16_PEAK.items() if k in name), None)


def matmul_rate(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def tiled_store(src: Path, dst: Path, images: int) -> Path:
    """A copy of store `src` whose train split repeats its rows up to `images` (val split dropped)."""
    from alexnet.data.store import MANIFEST, checksum

    if (dst / MANIFEST).exists():
        return dst
    manifest = json.loads((src / MANIFEST).read_text())
    rows = np.load(src / "train" / "images.npy", mmap_mode="r")
    labels = np.load(src / "train" / "labels.npy")
    take = np.arange(images) % len(labels)
    (dst / "train").mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(dst / "train" / "images.npy", mode="w+", dtype=np.uint8,
                                    shape=(images, *rows.shape[1:]))
    for start in range(0, images, 4096):
        out[start:start + 4096] = rows[take[start:start + 4096]]
    out.flush()
    del out
    np.save(dst / "train" / "labels.npy", labels[take])
    (dst / "mean.npy").write_bytes((src / "mean.npy").read_bytes())
    info = dict(manifest["splits"]["train"])
    images_path = dst / "train" / "images.npy"
    info.update(count=images, images_bytes=images_path.stat().st_size,
                checksum=checksum(images_path, dst / "train" / "labels.npy"))
    manifest["splits"] = {"train": info}
    (dst / MANIFEST).write_text(json.dumps(manifest))
    return dst


def jpeg_store(raw: Path) -> Path:
    """The tiled store converted to JPEG (once): `alexnet prepare RAW --out ... --format jpeg`."""
    from alexnet.data.store import is_store
    from alexnet.prepare.writer import prepare

    out = raw.with_name(raw.name + "-jpeg")
    if not is_store(out):
        prepare(raw, out, progress=False, encoding="jpeg")
    return out


def pipeline(store: Path, batch: int, compiled: bool, resident: bool, steps: int, device: torch.device,
             **extra: object) -> dict:
    """images/s of train.train_one_epoch, and of the same model re-stepping one augmented batch."""
    import gc

    gc.collect()  # the previous case's run and its resident store
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    overrides = {"optim.batch_size": batch, "train.compile": compiled, "train.store_on_device": resident,
                 "train.log_every": 10**9, **extra}
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run("paper", str(store), device, overrides, Path(tmp))
        start = time.perf_counter()
        run_steps(run, 5)  # warm-up: cuDNN's choices, compilation, the loader's first batches
        sync(device)
        warmup_s = time.perf_counter() - start
        start = time.perf_counter()
        run_steps(run, steps)
        sync(device)
        real_s = (time.perf_counter() - start) / steps

        model_rate = images_per_second(reused_batch_step(run), batch, 3, steps, device)
        peak_gb = torch.cuda.max_memory_allocated(device) / 2**30
    return {"batch": batch, "compiled": compiled, "resident": resident, "warmup_s": warmup_s,
            "pipeline_images_s": batch / real_s, "model_images_s": model_rate, "peak_gpu_gb": peak_gb}


def images_per_second(step: Callable[[], None], batch: int, warmup: int, steps: int, device: torch.device) -> float:
    """batch * steps over the time of `steps` calls of `step` after `warmup` untimed ones, one sync at each end
    (the GPU's queue stays full, as in training)."""
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def synthetic_rate(net: torch.nn.Module, opt: torch.optim.Optimizer, batch: int, compiled: bool, steps: int,
                   device: torch.device) -> float:
    """images/s of `net` (on `device`, channels_last) stepping one random 224-pixel batch in bf16."""
    x = torch.randn(batch, 3, 224, 224, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    step = make_step(torch.compile(net) if compiled else net, opt, x, y, torch.autocast("cuda", dtype=torch.bfloat16))
    return images_per_second(step, batch, 5, steps, device)


def torchvision_rate(batch: int, compiled: bool, steps: int, device: torch.device) -> float:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.alexnet().to(device).to(memory_format=torch.channels_last)
    opt = torchvision_sgd(net)
    return synthetic_rate(net, opt, batch, compiled, steps, device)


def model_variant_rate(batch: int, compiled: bool, steps: int, device: torch.device, **overrides: object) -> float:
    """images/s of the paper model alone (PaperSGD, bf16 autocast, channels_last) on one synthetic batch."""
    from alexnet.config import build_config
    from alexnet.model import AlexNet
    from alexnet.optim import build_optimizer

    cfg = build_config("paper", overrides=overrides)
    torch.manual_seed(0)
    net = AlexNet(cfg.model, cfg.data.crop).to(device).to(memory_format=torch.channels_last)
    return synthetic_rate(net, build_optimizer(net, cfg.optim, 1.0), batch, compiled, steps, device)


def variants(batches: list[int], compile_modes: list[bool], steps: int, device: torch.device) -> str:
    """The model alone: LRN by the fused kernels, by the eager passes, and no LRN at all."""
    from alexnet.lrn import layer as ops

    rows = []
    for batch in batches:
        for compiled in compile_modes:
            for convs in ("grouped", "split"):
                rates = []
                for kernel, lrn in (("triton", True), ("eager", True), ("triton", False)):
                    ops.CUDA_KERNEL = kernel
                    rates.append(model_variant_rate(batch, compiled, steps, device,
                                                    **{"model.tower_convs": convs, "model.lrn": lrn}))
                ops.CUDA_KERNEL = "triton"
                rows.append([batch, "compiled" if compiled else "eager", convs, *(f"{r:,.0f}" for r in rates),
                             f"{rates[0] / rates[1]:.2f}"])
                print(" | ".join(str(c) for c in rows[-1]), flush=True)
    return markdown_table(["batch", "step", "tower convolutions", "LRN fused (images/s)", "LRN eager passes",
                           "no LRN", "fused / eager"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20480, help="rows of the tiled store")
    ap.add_argument("--batches", default="128,1024")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per case")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--variants", action="store_true", help="the model alone with and without LRN (see above)")
    ap.add_argument("--jpeg", action="store_true", help="also a JPEG store, decoded by CPU threads and by nvJPEG")
    ap.add_argument("--json", default=str(OUT / "gpu.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA GPU visible")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    compile_modes = [False] if args.no_compile else [False, True]
    batches = [int(b) for b in args.batches.split(",")]
    if args.variants:
        table = variants(batches, compile_modes, args.steps, device)
        print(table)
        write_json(args.json, {"machine": machine(), "table": table})
        return
    src = Path(data_cases(quick=True)["imagenet"]["store"])
    store = tiled_store(src, OUT / "stores" / f"imagenet-tiled-{args.images}", args.images)
    info = machine()
    peak = card_peak(info.get("gpu", ""))
    measured = matmul_rate(device)
    print(f"{info.get('gpu')}: bf16 8192^3 matrix product {measured / 1e12:.0f} TFLOP/s; dense bf16 peak "
          f"{peak / 1e12 if peak else float('nan'):.0f} TFLOP/s", flush=True)
    results, rows = [], []
    for batch in batches:
        for compiled in compile_modes:
            for resident in (False, True):
                r = pipeline(store, batch, compiled, resident, args.steps, device)
                results.append(r)
                share = r["pipeline_images_s"] * FLOP_PER_IMAGE
                rows.append([batch, "compiled" if compiled else "eager", "GPU memory" if resident else "pinned host",
                             f"{r['pipeline_images_s']:,.0f}", f"{r['model_images_s']:,.0f}",
                             f"{r['pipeline_images_s'] / r['model_images_s']:.2f}",
                             f"{100 * share / peak:.1f}%" if peak else "-", f"{100 * share / measured:.1f}%",
                             f"{r['peak_gpu_gb']:.1f}", f"{r['warmup_s']:.0f}"])
                print(" | ".join(str(c) for c in rows[-1]), flush=True)
        for gpu_decode in ((False, True) if args.jpeg else ()):
            r = pipeline(jpeg_store(store), batch, False, False, args.steps, device, **{"train.gpu_decode": gpu_decode})
            results.append({**r, "jpeg": True, "gpu_decode": gpu_decode})
            rows.append([batch, "eager", "JPEG, " + ("nvJPEG on the GPU" if gpu_decode else "CPU threads"),
                         f"{r['pipeline_images_s']:,.0f}", f"{r['model_images_s']:,.0f}",
                         f"{r['pipeline_images_s'] / r['model_images_s']:.2f}", "-", "-", f"{r['peak_gpu_gb']:.1f}",
                         f"{r['warmup_s']:.0f}"])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
        for compiled in compile_modes:
            rate = torchvision_rate(batch, compiled, args.steps, device)
            results.append({"batch": batch, "compiled": compiled, "torchvision_images_s": rate})
            rows.append([batch, f"torchvision alexnet, {'compiled' if compiled else 'eager'}", "synthetic",
                         "-", f"{rate:,.0f}", "-", f"{100 * rate * FLOP_PER_IMAGE / peak:.1f}%" if peak else "-",
                         f"{100 * rate * FLOP_PER_IMAGE / measured:.1f}%", "-", "-"])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
    table = markdown_table(["batch", "step", "store", "pipeline images/s", "model alone images/s",
                            "pipeline / model", "of dense bf16 peak", "of measured matmul rate", "peak GPU GiB",
                            "warm-up s"], rows)
    print(table)
    write_json(args.json, {"machine": info, "matmul_flops": measured, "peak_flops": peak,
                           "flop_per_image": FLOP_PER_IMAGE, "results": results, "table": table})


if __name__ == "__main__":
    main()
