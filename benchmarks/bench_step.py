"""Training step rate on synthetic input: each preset against the same net written plainly (and torchvision).

    .venv/bin/python benchmarks/bench_step.py [--presets paper,cifar] [--batch 128] [--repeats 2] [--compile]
                                              [--device cpu|cuda] [--json benchmarks/out/step.json]

Plain = the preset's layers with torch.nn.LocalResponseNorm per tower, torch.optim.SGD, NCHW, float32
(benchmarks/plain.py), as stock PyTorch runs it; "plain at its best" = the same net with every stock setting that
usually makes it faster: channels_last, torch.optim.SGD(fused=True), freed memory kept, and bf16 autocast for a
preset that trains in it (cifar). "vs plain's best" is against the faster of the two in the run, so the ratio
credits ours only with what stock settings cannot do. Ours = the
preset as `alexnet train` runs it: alexnet.lrn.layer LRN, PaperSGD (foreach), channels_last, bf16 autocast on CUDA
and where the preset trains in it.
For `paper` also torchvision's alexnet (one tower, no LRN, the same 0.72 G multiply-adds per image) in each of its
settings: NCHW and channels_last, torch.optim.SGD with its fused kernel (its fastest, docs/PERFORMANCE.md),
glibc's memory defaults and ours; the
ratio "vs torchvision's best" is against the fastest of them in the same run, so that no comparison rests on a
setting that handicaps the peer. Where oneDNN has bf16 kernels for the CPU (AVX-512 BF16, AMX), both nets also step
under bf16 autocast (train.precision=bf16, an option), compared with each other. torch.compile when --compile is
given. Every variant steps on the same fixed batch (no data loading), in one process: all of a preset's variants
are built and warmed up, then stepped in turn, one step each, for --repeats rounds, so that a machine shared with
other work slows them alike; each time is the median of its steps. The ratios are what counts.

Host memory on the CPU: `alexnet train` keeps freed memory for reuse (train.keep_freed_memory, glibc;
alexnet/runtime.py), which spares a step its page faults. That setting is process-wide, so it is switched
before each variant's steps: ours run with it, plain and torchvision with glibc's defaults, as each is run
by default; "torchvision alexnet, memory kept" runs torchvision's net with ours, for the nets alone.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import machine, make_step, markdown_table, median, time_steps, write_json
from plain import flops_note, plain_net, plain_sgd, torchvision_sgd

from alexnet.config import Config, build_config
from alexnet.model import AlexNet
from alexnet.optim import build_optimizer
from alexnet.runtime import keep_freed_memory, release_freed_memory

PRESETS = ("paper", "one-tower", "cifar", "figure1", "demo")


def variants(cfg: Config, device: torch.device, batch: int, compile_too: bool
             ) -> list[tuple[str, Callable[[], Callable[[], None]], bool]]:
    """(name, build, keeps freed memory) for each variant of the preset."""
    crop = cfg.data.crop
    x = torch.randn(batch, 3, crop, crop, device=device) * 50
    y = torch.randint(0, cfg.model.num_classes, (batch,), device=device)
    xcl = x.contiguous(memory_format=torch.channels_last)
    cuda = device.type == "cuda"

    def plain() -> Callable[[], None]:
        m = plain_net(cfg).to(device)
        return make_step(m, plain_sgd(m, cfg), x, y)

    def plain_at_its_best() -> Callable[[], None]:
        """The plain net with every stock setting that speeds it up: channels_last, torch.optim.SGD's fused
        kernel, freed memory kept (the row's flag), bf16 autocast where the preset trains in it."""
        m = plain_net(cfg).to(device).to(memory_format=torch.channels_last)
        bf16 = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda or preset_bf16)
        return make_step(m, plain_sgd(m, cfg, at_its_best=True), xcl, y, bf16)

    def torchvision_alexnet(channels_last: bool, bf16_on_cpu: bool = False) -> Callable[[], Callable[[], None]]:
        def build() -> Callable[[], None]:
            import torchvision

            m = torchvision.models.alexnet().to(device)
            if channels_last:
                m = m.to(memory_format=torch.channels_last)
            # as ours: bf16 autocast on CUDA, and on the CPU in the bf16 rows
            bf16 = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda or bf16_on_cpu)
            return make_step(m, torchvision_sgd(m), xcl if channels_last else x, y, bf16)
        return build

    def ours(channels_last: bool, compiled: bool = False,
             bf16_on_cpu: bool = False) -> Callable[[], Callable[[], None]]:
        def build() -> Callable[[], None]:
            m = AlexNet(cfg.model, crop).to(device)
            if channels_last:
                m = m.to(memory_format=torch.channels_last)
            net = torch.compile(m) if compiled else m
            bf16 = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda or bf16_on_cpu or preset_bf16)
            return make_step(net, build_optimizer(m, cfg.optim), xcl if channels_last else x, y, bf16)
        return build

    preset_bf16 = cfg.train.precision == "bf16" and not cuda and cpu_bf16()  # the cifar preset's setting
    precision = "bf16 autocast" if cuda or preset_bf16 else "fp32"
    out = [("plain", plain, False), ("plain at its best", plain_at_its_best, True)]
    if cfg.preset == "paper":
        for layout, cl in (("NCHW", False), ("channels_last", True)):
            out.append((f"torchvision alexnet {layout}", torchvision_alexnet(cl), False))
            if not cuda:
                out.append((f"torchvision alexnet {layout}, memory kept", torchvision_alexnet(cl), True))
        out.append((f"ours NCHW, {precision}", ours(False), True))
    out.append((f"ours channels_last, {precision}", ours(True), True))
    if cfg.preset == "paper" and not cuda and cpu_bf16():
        # train.precision=bf16 (an option; float32 is the default on the CPU): both nets in it, each in its best
        # layout and memory setting, so that the bf16 ratio too is against torchvision at its best
        out.append(("torchvision alexnet channels_last, memory kept, bf16 autocast", torchvision_alexnet(True, True),
                    True))
        out.append(("ours channels_last, bf16 autocast", ours(True, bf16_on_cpu=True), True))
    if compile_too:
        out.append((f"ours channels_last, {precision}, torch.compile", ours(True, True), True))
    return out


def cpu_bf16() -> bool:
    """oneDNN has bf16 kernels for this CPU (AVX-512 BF16 or AMX)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def with_memory_setting(step: Callable[[], None], keep: bool) -> Callable[[], None]:
    """The step with the process's host-memory setting switched to `keep` first (see the module docstring)."""
    def run() -> None:
        if keep:
            keep_freed_memory()
        else:
            release_freed_memory()
        step()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2,
                    help="untimed steps after the first (large inputs): kept memory settles in a few steps")
    ap.add_argument("--repeats", type=int, default=2, help="timed rounds for presets with 224 inputs")
    ap.add_argument("--small-repeats", type=int, default=10, help="repeats for presets with small inputs")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (compilation time reported)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/step.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    results = []
    for preset in args.presets.split(","):
        cfg = build_config(preset)
        big = cfg.data.crop >= 128
        repeats = args.repeats if big else args.small_repeats
        warmup = args.warmup if big else max(args.warmup, 3)
        built = []
        for name, build, keep in variants(cfg, device, args.batch, args.compile and preset == "paper"):
            torch.manual_seed(0)
            t0 = time.perf_counter()
            step = with_memory_setting(build(), keep)
            step()  # first step: allocations, and compilation for torch.compile
            first = time.perf_counter() - t0
            time_steps(step, warmup, 0, device)
            built.append((name, step, first, []))
        # one step of each variant in turn, `repeats` rounds: a load that comes and goes on a shared machine
        # then slows every variant alike instead of whichever happened to run at the time
        for _ in range(repeats):
            for _name, step, _first, times in built:
                times += time_steps(step, 0, 1, device)
        for name, _step, first, times in built:
            secs = median(times)
            results.append({"preset": preset, "variant": name, "seconds_per_step": secs, "times": times,
                            "images_per_s": args.batch / secs, "first_step_s": first,
                            "gmacs_per_image": flops_note(cfg)})
            print(f"{preset:9s} {name}: {secs * 1000:.0f} ms/step, {args.batch / secs:.1f} images/s "
                  f"(first step {first:.1f} s)", flush=True)
        del built
        if device.type == "cuda":
            torch.cuda.empty_cache()
    rows = []

    def best_torchvision(bf16_row: bool) -> dict | None:
        """torchvision's fastest row of the same precision (the bf16 rows are compared among themselves)."""
        rows_tv = [b for b in results if b["variant"].startswith("torchvision alexnet")
                   and b["variant"].endswith("bf16 autocast") == bf16_row]
        return max(rows_tv, key=lambda b: b["images_per_s"]) if rows_tv else None

    best_tv = best_torchvision(False)
    for r in results:
        same = [b for b in results if b["preset"] == r["preset"]]
        base = next(b for b in same if b["variant"] == "plain")
        # the plain way's faster row: "at its best" is usually, not always (bf16 pays only with AMX; small nets
        # can run faster in NCHW), so the ratio is against whichever of the two was faster in this run
        best_plain = max((b for b in same if b["variant"].startswith("plain")), key=lambda b: b["images_per_s"])
        peer = best_torchvision(r["variant"].endswith("bf16 autocast"))
        vs_tv = (f"{r['images_per_s'] / peer['images_per_s']:.2f}x" if peer and r["preset"] == "paper" else "")
        rows.append([r["preset"], r["variant"], f"{r['seconds_per_step'] * 1000:.0f}", f"{r['images_per_s']:.1f}",
                     f"{r['images_per_s'] / base['images_per_s']:.2f}x",
                     f"{r['images_per_s'] / best_plain['images_per_s']:.2f}x", vs_tv])
    if best_tv:
        print(f"\ntorchvision's best setting in this run: {best_tv['variant']}")
    table = markdown_table(["preset", "variant", "ms/step", "images/s", "vs plain", "vs plain's best",
                            "vs torchvision's best (same precision)"], rows)
    print(f"\nTraining step on synthetic input, batch {args.batch}, {device}, median of "
          f"{args.repeats} (large inputs) / {args.small_repeats} (small) steps, variants interleaved\n")
    print(table)
    write_json(args.json, {"machine": machine(), "device": str(device), "batch": args.batch, "results": results,
                           "table": table})


if __name__ == "__main__":
    main()
