"""Where a training step's time goes: the paper preset against torchvision's alexnet, per op, per layer.

    .venv/bin/python benchmarks/profile_step.py [--preset paper] [--batch 128] [--steps 3] [--precision fp32|bf16]
                                                [--json benchmarks/out/profile.json]

torch.profiler over `--steps` training steps of each net, on a fixed synthetic batch, each in its fastest
setting on this device (the one bench_step.py finds): channels_last, freed host memory kept for reuse (ours:
train.keep_freed_memory; the same setting given to torchvision's net), ours with PaperSGD (foreach), torchvision's
with torch.optim.SGD(fused=True). The profiled steps of the two nets alternate, one each in turn, so that a
machine whose speed drifts slows both alike. Prints two tables, in milliseconds per step:

- by kind of work: convolutions forward and backward (oneDNN), FC layers, LRN forward and backward (our fused
  kernels), pooling, ReLU, dropout, the loss, the optimizer, and the rest;
- by layer: each convolution's forward and backward and each FC layer, matched through the weight's shape
  (recorded by the profiler), so that conv1 of 96 maps can be set against torchvision's conv1 of 64.

The profiler's own overhead is small against ops of milliseconds, but its event buffers take heap memory: the
first step it records breaks up the heap that freed tensors were reused from, and the big tensors of that
step and the next fault their pages in again (tens of thousands of page faults; ours, with the larger maps,
more than torchvision's), which would show up as slow fills and ReLU backward passes that the unprofiled step
does not have. So each profiled step is the last of a run of `--settle` + 1 recorded steps, and the page
faults of the steps kept are printed beside the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import resource
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from common import machine, make_step, markdown_table, write_json
from plain import torchvision_sgd
from torch.profiler import ProfilerActivity, profile, schedule

from alexnet.config import Config, build_config
from alexnet.model import AlexNet
from alexnet.optim import build_optimizer
from alexnet.runtime import keep_freed_memory

# op name -> kind of work; the first pattern that matches wins. Ops under the optimizer's own record
# ("Optimizer.step#...") are counted as optimizer whatever they are (see `self_times`).
KINDS = [
    (r"convolution_backward", "convolution backward"),
    (r"mkldnn_convolution|_convolution$|conv2d", "convolution forward"),
    (r"^aten::(addmm|mm|linear|t)$", "FC layers (forward and backward)"),
    (r"LocalResponseNorm.*Backward", "LRN backward"),
    (r"LocalResponseNorm", "LRN forward"),
    (r"max_pool2d.*backward", "pooling backward"),
    (r"max_pool2d", "pooling forward"),
    (r"threshold_backward", "ReLU backward"),
    (r"relu|clamp_min", "ReLU forward"),
    (r"bernoulli|dropout|aten::mul$|aten::div_$", "dropout (forward and backward)"),
    (r"log_softmax|nll_loss|cross_entropy", "loss"),
]


def kind_of(name: str) -> str:
    for pattern, kind in KINDS:
        if re.search(pattern, name):
            return kind
    return "other (copies, fills, autograd bookkeeping)"


def build(which: str, cfg: Config, x: torch.Tensor, y: torch.Tensor, autocast) -> tuple[torch.nn.Module, Callable]:
    if which == "ours":
        model = AlexNet(cfg.model, cfg.data.crop).to(memory_format=torch.channels_last)
        opt = build_optimizer(model, cfg.optim)
    else:
        import torchvision

        model = torchvision.models.alexnet().to(memory_format=torch.channels_last)
        opt = torchvision_sgd(model)
    return model, make_step(model, opt, x, y, autocast)


def layer_names(model: torch.nn.Module) -> dict[tuple[int, ...], str]:
    """Weight shape -> the layer's name (conv1..conv5, fc6..fc8 in the order of the model's modules). A layer
    computed as its two towers (ours: conv1 on the CPU, model.tower_convs=auto) shows the half of its weight
    that each tower uses, so that half shape names it too."""
    names: dict[tuple[int, ...], str] = {}
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for i, m in enumerate(convs, 1):
        out, *rest = m.weight.shape
        names.setdefault(tuple(m.weight.shape), f"conv{i}")
        names.setdefault((out // 2, *rest), f"conv{i}")
    for i, m in enumerate(linears, 6):
        names.setdefault(tuple(m.weight.shape), f"fc{i}")
    return names


def self_times(prof: profile) -> list[tuple[str, list, float]]:
    """(op name, its input shapes, self CPU time in ms) of every op, with the optimizer's ops folded into one
    entry "optimizer" (its foreach kernels would otherwise look like any other add)."""
    events = prof.events()
    opt_ranges = [(e.time_range.start, e.time_range.end) for e in events if e.name.startswith("Optimizer.")]

    def in_optimizer(e) -> bool:
        return any(s <= e.time_range.start and e.time_range.end <= t for s, t in opt_ranges)

    out = []
    for e in events:
        if e.name.startswith("Optimizer."):
            continue
        ms = e.self_cpu_time_total / 1000
        out.append(("optimizer" if in_optimizer(e) else e.name, e.input_shapes, ms))
    return out


def settled_profile(step: Callable[[], None], settle: int) -> tuple[list[tuple[str, list, float]], int]:
    """The self times of one step recorded after `settle` recorded steps (see the module docstring), and the
    minor page faults that step took."""
    cycles: list[list[tuple[str, list, float]]] = []
    # the steps thrown away are the warm-up, recorded on purpose; and each cycle's events are taken as it ends
    warnings.filterwarnings("ignore", message=".*won't be using warmup.*")
    warnings.filterwarnings("ignore", message=".*clears events at the end of each cycle.*")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True,
                 schedule=schedule(wait=0, warmup=0, active=1, repeat=settle + 1),
                 on_trace_ready=lambda p: cycles.append(self_times(p))) as prof:
        for _ in range(settle + 1):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            step()
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            prof.step()
    return cycles[-1], faults


def by_layer(entries: list[tuple[str, list, float]], names: dict[tuple[int, ...], str]) -> dict[str, float]:
    """Convolution forward/backward and FC time per layer, found by the weight's shape among the inputs."""
    out: dict[str, float] = defaultdict(float)
    for name, shapes, ms in entries:
        kind = kind_of(name)
        if not kind.startswith(("convolution", "FC")):
            continue
        layer = next((names[tuple(s)] for s in shapes if isinstance(s, list) and tuple(s) in names), None)
        if layer is None and kind.startswith("FC"):
            # mm in the backward sees transposed shapes: match either orientation
            layer = next((names[tuple(reversed(s))] for s in shapes
                          if isinstance(s, list) and tuple(reversed(s)) in names), None)
        if layer is not None:
            part = "forward and backward" if kind.startswith("FC") else kind.split()[-1]
            out[f"{layer} {part}"] += ms
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="profiled steps of each net (after 3 untimed ones)")
    ap.add_argument("--settle", type=int, default=2,
                    help="recorded steps thrown away before each kept one (the heap settles under the profiler)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/profile.json"))
    args = ap.parse_args()
    keep_freed_memory()  # both nets: the memory setting is process-wide, and it is the faster for both
    cfg = build_config(args.preset)
    crop = cfg.data.crop
    torch.manual_seed(0)
    x = (torch.randn(args.batch, 3, crop, crop) * 50).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,))
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())
    nets = {which: build(which, cfg, x, y, autocast) for which in ("ours", "torchvision")}
    for _ in range(3):
        for _model, step in nets.values():
            step()
    entries: dict[str, list] = {which: [] for which in nets}
    totals: dict[str, float] = defaultdict(float)
    faults: dict[str, list[int]] = {which: [] for which in nets}
    for _ in range(args.steps):
        for which, (_model, step) in nets.items():
            got, step_faults = settled_profile(step, args.settle)
            entries[which] += got
            totals[which] += sum(ms for _n, _s, ms in got)
            faults[which].append(step_faults)
    per_step = {w: totals[w] / args.steps for w in nets}

    kinds: dict[str, dict[str, float]] = {w: defaultdict(float) for w in nets}
    for w in nets:
        for name, _shapes, ms in entries[w]:
            kinds[w]["optimizer (zero_grad and step)" if name == "optimizer" else kind_of(name)] += ms / args.steps
    order = sorted(set(kinds["ours"]) | set(kinds["torchvision"]),
                   key=lambda k: -(kinds["ours"].get(k, 0) + kinds["torchvision"].get(k, 0)))
    rows = [[k, f"{kinds['ours'].get(k, 0):.0f}", f"{kinds['torchvision'].get(k, 0):.0f}",
             f"{kinds['ours'].get(k, 0) - kinds['torchvision'].get(k, 0):+.0f}"] for k in order]
    rows.append(["**the step**", f"{per_step['ours']:.0f}", f"{per_step['torchvision']:.0f}",
                 f"{per_step['ours'] - per_step['torchvision']:+.0f}"])
    kind_table = markdown_table(["kind of work", "ours, ms/step", "torchvision, ms/step", "ours - torchvision"],
                                rows)

    layers = {w: {k: v / args.steps for k, v in by_layer(entries[w], layer_names(nets[w][0])).items()} for w in nets}
    names = sorted(set(layers["ours"]) | set(layers["torchvision"]))
    layer_rows = [[n, f"{layers['ours'].get(n, 0):.0f}", f"{layers['torchvision'].get(n, 0):.0f}",
                   f"{layers['ours'].get(n, 0) - layers['torchvision'].get(n, 0):+.0f}"] for n in names]
    layer_table = markdown_table(["layer", "ours, ms/step", "torchvision, ms/step", "ours - torchvision"], layer_rows)

    print(f"\nProfile of the {args.preset} preset's step against torchvision's alexnet, batch {args.batch}, "
          f"{args.precision}, channels_last, memory kept, {args.steps} profiled steps each, alternating; "
          f"{torch.get_num_threads()} threads; minor page faults in the kept steps: "
          + ", ".join(f"{w} {faults[w]}" for w in nets) + "\n")
    print(kind_table)
    print()
    print(layer_table)
    write_json(args.json, {"machine": machine(), "preset": args.preset, "batch": args.batch,
                           "precision": args.precision, "per_step_ms": per_step, "page_faults": faults,
                           "kinds": {w: dict(kinds[w]) for w in nets}, "layers": layers,
                           "table": kind_table + "\n\n" + layer_table})


if __name__ == "__main__":
    main()
