"""Training step rate: the `paper` preset against the same net written plainly and torchvision's alexnet.

    .venv/bin/python benchmarks/bench_step.py [--batch 128] [--repeats 5] [--device cpu|cuda]

Plain = grouped nn.Conv2d, torch.nn.LocalResponseNorm (per tower), torch.optim.SGD, NCHW, float32: what a
careful reader of the paper writes in an afternoon. Ours = alexnet.build_model("paper") with its fast LRN,
PaperSGD (foreach), channels_last where it wins. All on the same synthetic batch, measured in one run;
the ratio is what counts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, markdown_table, median, time_steps, write_json  # noqa: E402

import alexnet  # noqa: E402
from alexnet.optim import PaperSGD  # noqa: E402


class TowerLRN(nn.Module):
    """torch.nn.LocalResponseNorm applied to each tower's half of the maps."""

    def __init__(self) -> None:
        super().__init__()
        self.lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.cat([self.lrn(a), self.lrn(b)], dim=1)


def plain_paper_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, 4, 2), nn.ReLU(inplace=True), TowerLRN(), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, 1, 2, groups=2), nn.ReLU(inplace=True), TowerLRN(), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, 1, 1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, 1, 1, groups=2), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, 1, 1, groups=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Flatten(),
        nn.Linear(9216, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 1000),
    )


def make_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              autocast: bool = False):
    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def variants(device: torch.device, batch: int):
    x = torch.randn(batch, 3, 224, 224, device=device) * 50
    y = torch.randint(0, 1000, (batch,), device=device)
    xcl = x.contiguous(memory_format=torch.channels_last)

    def plain():
        m = plain_paper_net().to(device)
        return make_step(m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4), x, y)

    def tv():
        m = torchvision.models.alexnet().to(device)
        return make_step(m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4), x, y)

    def ours(channels_last: bool, bf16: bool = False):
        def build():
            m = alexnet.build_model("paper").to(device)
            if channels_last:
                m = m.to(memory_format=torch.channels_last)
            return make_step(m, PaperSGD(m.parameters(), lr=0.01), xcl if channels_last else x, y, bf16)
        return build

    out = [("plain (grouped Conv2d, nn.LocalResponseNorm, optim.SGD)", plain),
           ("torchvision alexnet (one tower, no LRN, optim.SGD)", tv),
           ("paper preset, NCHW", ours(False)),
           ("paper preset, channels_last", ours(True))]
    if device.type == "cuda":
        out.append(("paper preset, channels_last, bf16 autocast", ours(True, True)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/out/step.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    results = []
    for name, build in variants(device, args.batch):
        step = build()
        secs = median(time_steps(step, args.warmup, args.repeats, device))
        results.append({"variant": name, "seconds_per_step": secs, "images_per_s": args.batch / secs})
        print(f"{name}: {secs * 1000:.0f} ms/step, {args.batch / secs:.1f} images/s", flush=True)
        del step
    base = results[0]["images_per_s"]
    tvrate = results[1]["images_per_s"]
    rows = [[r["variant"], f"{r['seconds_per_step'] * 1000:.0f}", f"{r['images_per_s']:.1f}",
             f"{r['images_per_s'] / base:.2f}x", f"{r['images_per_s'] / tvrate:.2f}x"] for r in results]
    print()
    print(f"Training step, batch {args.batch}, {device}: {machine()}")
    print(markdown_table(["variant", "ms/step", "images/s", "vs plain", "vs torchvision"], rows))
    write_json(args.json, {"machine": machine(), "batch": args.batch, "results": results})


if __name__ == "__main__":
    main()
