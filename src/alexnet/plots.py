"""Figures, with matplotlib (Agg): training curves and the conv1 kernels (the paper's Figure 3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epoch records of a run's metrics.jsonl; a later record for the same epoch replaces an earlier
    one (a resumed run may have logged an epoch twice)."""
    path = Path(run_dir) / "metrics.jsonl"
    by_epoch: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if rec.get("kind") == "epoch":
                by_epoch[int(rec["epoch"])] = rec
    return [by_epoch[e] for e in sorted(by_epoch)]


def plot_curves(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Training and validation top-1 / top-5 error per epoch, learning-rate drops marked; runs overlaid."""
    plt = _pyplot()
    fig, (ax1, ax5) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for i, run in enumerate(run_dirs):
        recs = read_metrics(run)
        if not recs:
            continue
        colour = f"C{i}"
        label = Path(run).name
        epochs = [r["epoch"] + 1 for r in recs]
        ax1.plot(epochs, [r["train_top1_error"] for r in recs], "--", color=colour, label=f"{label} train")
        if "val_top1_error" in recs[0]:
            ax1.plot(epochs, [r["val_top1_error"] for r in recs], "-", color=colour, label=f"{label} val")
            ax5.plot(epochs, [r["val_top5_error"] for r in recs], "-", color=colour, label=f"{label} val")
        for r in recs:
            if r.get("lr_dropped"):
                for ax in (ax1, ax5):
                    ax.axvline(r["epoch"] + 1, color=colour, alpha=0.3, linestyle=":")
    ax1.set(title="Top-1 error", xlabel="epoch", ylabel="error (%)")
    ax5.set(title="Top-5 error (validation)", xlabel="epoch", ylabel="error (%)")
    for ax in (ax1, ax5):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("Training curves (dotted lines: learning-rate drops)", fontsize=10)
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def kernel_grid(weight: np.ndarray, towers: int, columns: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Tile conv1 kernels (K, 3, h, w) into one RGB image; each kernel contrast-normalized to [0, 1] on its own
    (as the original viewer). Tower 1's kernels fill the upper rows, tower 2's the rows below.
    Returns the image and each kernel's (row, column) tile position."""
    k, _, h, w = weight.shape
    per_tower = k // towers
    columns = columns or min(per_tower, 16 if per_tower % 16 == 0 else 12 if per_tower % 12 == 0 else 8)
    rows_per_tower = -(-per_tower // columns)
    pad = 1
    grid = np.ones(((h + pad) * rows_per_tower * towers + pad, (w + pad) * columns + pad, 3), dtype=np.float32)
    positions = []
    for i in range(k):
        tower, j = divmod(i, per_tower)
        r, c = tower * rows_per_tower + j // columns, j % columns
        kern = weight[i].transpose(1, 2, 0).astype(np.float32)
        lo, hi = kern.min(), kern.max()
        kern = (kern - lo) / (hi - lo) if hi > lo else np.zeros_like(kern)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y:y + h, x:x + w] = kern
        positions.append((r, c))
    return grid, positions


def plot_kernels(weight: np.ndarray, towers: int, out: str | Path, title: str = "") -> Path:
    plt = _pyplot()
    grid, _ = kernel_grid(weight, towers)
    fig = plt.figure(figsize=(8, 8 * grid.shape[0] / grid.shape[1] + 0.6))
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.9))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    k, _, h, w = weight.shape
    fig.suptitle(title or f"{k} conv1 kernels of size {h}x{w}x3"
                 + (" (tower 1 above, tower 2 below)" if towers == 2 else ""), fontsize=10)
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
