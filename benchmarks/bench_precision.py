"""Precision and memory layout per CPU kind: each preset's training step in fp32 and bf16, NCHW and channels_last,
and what train.precision=auto and train.channels_last=auto pick on this CPU.

    .venv/bin/python benchmarks/bench_precision.py [--presets paper,cifar,photos] [--repeats 3]
                                                    [--isa native|avx2] [--precisions fp32,bf16]
                                                    [--json benchmarks/out/precision.json]

--isa avx2 runs the same steps with torch's and oneDNN's kernels held to AVX2 (ATEN_CPU_CAPABILITY=avx2,
ONEDNN_MAX_CPU_ISA=AVX2) and Numba's LRN loops compiled for an AVX2 CPU (NUMBA_CPU_NAME=haswell): the kernels an
AVX2-only CPU runs, bf16 included (converted to and from float32, as such a CPU must), on this machine's cores,
caches and memory. It approximates an AVX2-only CPU of the same generation; it is not one, and the tables say so.
Each variant is the preset as `alexnet train` steps it (alexnet.lrn, PaperSGD, kept freed memory); the variants
are interleaved, one step each per round, and each figure is the median of its rounds.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

CAPS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "NUMBA_CPU_NAME": "haswell"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="paper,cifar,photos")
    ap.add_argument("--batch", type=int, default=0, help="0: each preset's own batch size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--isa", choices=("native", "avx2"), default="native")
    ap.add_argument("--precisions", default="fp32,bf16", help="bf16 emulated on AVX2 takes minutes a step")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/precision.json"))
    args = ap.parse_args()
    caps = CAPS.get(args.isa, {})
    if any(os.environ.get(k) != v for k, v in caps.items()):  # the caps must be set before torch loads
        os.execvpe(sys.executable, [sys.executable, *sys.argv], {**os.environ, **caps})
    measure(args)


def measure(args: argparse.Namespace) -> None:
    import torch
    from common import machine, make_step, markdown_table, median, time_steps, write_json

    from alexnet.config import build_config
    from alexnet.hardware import CpuFeatures, auto_channels_last, auto_precision, detect
    from alexnet.model import AlexNet
    from alexnet.optim import build_optimizer
    from alexnet.runtime import keep_freed_memory

    keep_freed_memory()
    device = torch.device("cpu")
    features = CpuFeatures(avx2=True) if args.isa == "avx2" else detect()
    label = f"{features.kind}" + (" (kernels capped at AVX2 on this CPU)" if args.isa == "avx2" else "")
    print(f"CPU kind: {label}; auto picks precision {auto_precision(device, features)}, channels_last "
          f"{auto_channels_last(device, features)}", flush=True)
    results, rows = [], []
    for preset in args.presets.split(","):
        cfg = build_config(preset)
        batch = args.batch or cfg.optim.batch_size
        crop = cfg.data.crop
        torch.manual_seed(0)
        x = torch.randn(batch, 3, crop, crop) * 50
        y = torch.randint(0, cfg.model.num_classes, (batch,))
        built = []
        for precision in args.precisions.split(","):
            for layout in ("NCHW", "channels_last"):
                model = AlexNet(cfg.model, crop)
                xin = x
                if layout == "channels_last":
                    model = model.to(memory_format=torch.channels_last)
                    xin = x.contiguous(memory_format=torch.channels_last)
                autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
                step = make_step(model, build_optimizer(model, cfg.optim), xin, y, autocast)
                time_steps(step, 2, 0, device)
                built.append((precision, layout, step, []))
        for _ in range(args.repeats):
            for _p, _l, step, times in built:
                times += time_steps(step, 0, 1, device)
        best = min(median(t) for *_, t in built)
        for precision, layout, _step, times in built:
            secs = median(times)
            results.append({"preset": preset, "precision": precision, "layout": layout, "batch": batch,
                            "seconds_per_step": secs, "images_per_s": batch / secs, "times": times})
            rows.append([preset, precision, layout, f"{secs * 1000:.0f}", f"{batch / secs:.0f}",
                         f"{best / secs:.2f}x"])
            print(f"{preset:7s} {precision} {layout:13s}: {secs * 1000:.0f} ms/step, {batch / secs:.0f} images/s",
                  flush=True)
    table = markdown_table(["preset", "precision", "layout", "ms/step", "images/s", "vs fastest"], rows)
    print(f"\nTraining step per precision and layout, {label}, median of {args.repeats} rounds\n")
    print(table)
    write_json(args.json, {"machine": machine(), "isa": args.isa, "kind": features.kind,
                           "auto": {"precision": auto_precision(device, features),
                                    "channels_last": auto_channels_last(device, features)},
                           "results": results, "table": table})


if __name__ == "__main__":
    main()
