"""Per-layer output shapes, parameters and multiply-adds of a model (`alexnet summary`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from alexnet.model import AlexNet, LocallyConnected2d


def layer_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """Multiply-adds of one layer for one image: conv = outputs x (in/groups x k x k), linear = in x out."""
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return out[0].numel() * (module.in_channels // module.groups) * k
    if isinstance(module, LocallyConnected2d):  # as a convolution: every output unit sees C x k x k inputs
        return out[0].numel() * module.in_channels * module.kernel_size ** 2
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


def summarize(model: AlexNet, input_size: int) -> dict[str, Any]:
    """Run one image through the model and record every leaf layer."""
    rows: list[dict[str, Any]] = []
    hooks = []

    def hook(name: str):
        def fn(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            rows.append({
                "name": name,
                "layer": module.__class__.__name__,
                "output": list(out.shape[1:]),
                "parameters": sum(p.numel() for p in module.parameters(recurse=False)),
                "macs": layer_macs(module, args[0], out),
            })
        return fn

    for name, module in model.named_modules():
        if not list(module.children()) and not isinstance(module, nn.Identity):
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {
        "input": [3, input_size, input_size],
        "layers": rows,
        "parameters": sum(p.numel() for p in model.parameters()),
        "macs": sum(r["macs"] for r in rows),
    }


def format_table(summary: dict[str, Any], title: str) -> str:
    lines = [title, f"{'layer':<16}{'type':<20}{'output':<18}{'parameters':>14}{'mult-adds':>16}"]
    for r in summary["layers"]:
        shape = "x".join(str(d) for d in r["output"])
        lines.append(f"{r['name']:<16}{r['layer']:<20}{shape:<18}{r['parameters']:>14,}{r['macs']:>16,}")
    lines.append(f"{'total':<54}{summary['parameters']:>14,}{summary['macs']:>16,}")
    return "\n".join(lines)
