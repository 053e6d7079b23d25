"""Figures, with matplotlib (Agg): training curves, the conv1 kernels (the paper's Figure 3), top-5
predictions and fc7 nearest neighbours (the paper's Figure 4, left and right)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alexnet.files import loads_json


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: str | Path, dpi: int = 110) -> Path:
    plt = _pyplot()
    out = Path(out)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


# ------------------------------------------------------------------------------------------------ curves
def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epoch records of a run's metrics.jsonl; a later record for the same epoch replaces an earlier
    one (a resumed run may have logged an epoch twice)."""
    path = Path(run_dir) / "metrics.jsonl"
    by_epoch: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = loads_json(line)
                if rec.get("kind") == "epoch":
                    by_epoch[int(rec["epoch"])] = rec
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a line cut by a crash, or not a record of ours
    return [by_epoch[e] for e in sorted(by_epoch)]


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Short legend names: each run's directory name, with parent directories added until they differ."""
    parts = [Path(r).resolve().parts for r in run_dirs]
    depth = 1
    while depth < max(len(p) for p in parts):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
        depth += 1
    return [str(r) for r in run_dirs]


def plot_curves(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Training curves of runs (see curves_figure) as a PNG."""
    return _save(curves_figure(run_dirs), out)


def curves_figure(run_dirs: Sequence[str | Path]) -> Any:
    """Top-1 error (training and validation), top-5 validation error and the learning rate per epoch.

    Several runs are overlaid, one colour each. A learning-rate drop decided at the end of epoch e takes
    effect from epoch e + 1, so it is drawn as a dotted line halfway between the two. Returns the figure,
    whose three axes are the three panels.
    """
    plt = _pyplot()
    fig, (ax1, ax5, axlr) = plt.subplots(1, 3, figsize=(13, 4.2), constrained_layout=True,
                                         gridspec_kw={"width_ratios": [1, 1, 0.7]})
    for i, (run, label) in enumerate(zip(run_dirs, run_labels(run_dirs))):
        recs = read_metrics(run)
        if not recs:
            continue
        colour = f"C{i % 10}"
        epochs = [r["epoch"] + 1 for r in recs]
        marker = "o" if len(recs) <= 30 else None  # one or a few epochs stay visible as points
        style = {"color": colour, "marker": marker, "markersize": 3}
        ax1.plot(epochs, [r["train_top1_error"] for r in recs], "--", label=f"{label} training", **style)
        with_val = [r for r in recs if "val_top1_error" in r]
        if with_val:
            val_epochs = [r["epoch"] + 1 for r in with_val]
            ax1.plot(val_epochs, [r["val_top1_error"] for r in with_val], "-", label=f"{label} validation",
                     **style)
            ax5.plot(val_epochs, [r["val_top5_error"] for r in with_val], "-", label=f"{label} validation",
                     **style)
        axlr.step(epochs, [r["lr"] for r in recs], where="mid", label=label, **style)
        for r in recs:
            if r.get("lr_dropped"):
                for ax in (ax1, ax5, axlr):
                    ax.axvline(r["epoch"] + 1.5, color=colour, alpha=0.5, linestyle=":", linewidth=1.2)
    ax1.set(title="Top-1 error (dashed: training, solid: validation)", xlabel="epoch", ylabel="error (%)")
    ax5.set(title="Top-5 error (validation)", xlabel="epoch", ylabel="error (%)")
    axlr.set(title="Learning rate", xlabel="epoch", ylabel="learning rate", yscale="log")
    rates = sorted({y for line in axlr.get_lines() for y in line.get_ydata() if line.get_linestyle() != ":"})
    if rates:  # label exactly the rates used, not the log axis' generic ticks
        from matplotlib.ticker import NullLocator

        axlr.yaxis.set_minor_locator(NullLocator())
        axlr.set_yticks(rates, [f"{r:g}" for r in rates])
    for ax in (ax1, ax5):  # errors are percentages: from 0, and at least to 1 so a flat 0 is visible
        highest = max((max(line.get_ydata(), default=0) for line in ax.get_lines()), default=0)
        ax.set_ylim(0, min(100.0, max(1.0, highest * 1.05)) if highest <= 100 else None)
    for ax in (ax1, ax5, axlr):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("Training curves (dotted vertical lines: learning rate divided)", fontsize=11)
    return fig


# ------------------------------------------------------------------------------------------------ kernels
def kernel_grid(weight: np.ndarray, towers: int, columns: int = 0, pad: int = 1,
                tower_gap: int = 4) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Tile conv1 kernels (K, 3, h, w) into one RGB image in [0, 1] on a white background.

    Each kernel is contrast-normalised on its own: its smallest value becomes 0 and its largest 1, over
    all three colours together, so that the colour balance of a kernel stays visible (as the original
    viewer showed them). Tower 1's kernels (the first K / towers, the channel order of the model) fill the
    upper rows, tower 2's the rows below, after a wider gap of `tower_gap` pixels.
    Returns the image and each kernel's top-left pixel (y, x) in it.
    """
    k, channels, h, w = weight.shape
    if channels != 3 or k % towers:
        raise ValueError(f"expected conv1 weights (K, 3, h, w) with K divisible by {towers}, got {weight.shape}")
    per_tower = k // towers
    columns = columns or min(per_tower, 16 if per_tower % 16 == 0 else 12 if per_tower % 12 == 0 else 8)
    rows_per_tower = -(-per_tower // columns)
    block = (h + pad) * rows_per_tower  # height of one tower's rows
    height = pad + block * towers + (tower_gap - pad) * (towers - 1)
    grid = np.ones((height, pad + (w + pad) * columns, 3), dtype=np.float32)
    positions = []
    for i in range(k):
        tower, j = divmod(i, per_tower)
        row, col = divmod(j, columns)
        kern = weight[i].transpose(1, 2, 0).astype(np.float32)
        lo, hi = kern.min(), kern.max()
        kern = (kern - lo) / (hi - lo) if hi > lo else np.full_like(kern, 0.5)
        y = pad + tower * (block + tower_gap - pad) + row * (h + pad)
        x = pad + col * (w + pad)
        grid[y:y + h, x:x + w] = kern
        positions.append((y, x))
    return grid, positions


def plot_kernels(weight: np.ndarray, towers: int, out: str | Path, title: str = "") -> Path:
    """The conv1 kernels as the paper's Figure 3, each tower's block labelled on the left."""
    plt = _pyplot()
    grid, positions = kernel_grid(weight, towers)
    k, _, h, w = weight.shape
    label_room = 0.09 if towers > 1 else 0.02
    width_in = 8.0
    image_h_in = width_in * (1 - label_room - 0.02) * grid.shape[0] / grid.shape[1]
    fig = plt.figure(figsize=(width_in, image_h_in + 0.6))
    ax = fig.add_axes((label_room, 0.02, 1 - label_room - 0.02, image_h_in / (image_h_in + 0.6)))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if towers > 1:
        per_tower = k // towers
        for t in range(towers):
            ys = [y for y, _ in positions[t * per_tower:(t + 1) * per_tower]]
            middle = (min(ys) + max(ys) + h) / 2
            ax.text(-1.5, middle, f"tower {t + 1}", ha="right", va="center", fontsize=10)
    default = f"{k} conv1 kernels of size {h}x{w}x3, each contrast-normalised"
    if towers == 2:
        default += "\ntower 1 above, tower 2 below"
    fig.suptitle(title or default, fontsize=10)
    return _save(fig, out)


# ------------------------------------------------------------------------------------------------ Figure 4
@dataclass
class PredictionTile:
    """One image of the prediction panel with its top classes (most probable first)."""

    image: np.ndarray  # uint8 (H, W, 3)
    caption: str  # file name, or the true class when it is known
    names: list[str]
    probabilities: list[float]
    true_rank: int | None = None  # position of the true class in `names`, when it is among them


PROB_COLOUR, TRUE_COLOUR = "#9ecae1", "#e34a33"


def plot_predictions(tiles: Sequence[PredictionTile], out: str | Path, columns: int = 0,
                     title: str = "") -> Path:
    """Figure 4 (left): each image above a horizontal bar chart of its top classes; the true class red.

    columns=0: at most 5 per row, rows filled evenly (8 images: 2 rows of 4; 10: 2 rows of 5)."""
    plt = _pyplot()
    columns = columns or -(-len(tiles) // -(-len(tiles) // 5))
    rows = -(-len(tiles) // columns)
    height = 4.3 * rows + 0.7
    fig = plt.figure(figsize=(2.9 * columns, height))
    outer = fig.add_gridspec(rows, columns, hspace=0.16, wspace=0.1, left=0.02, right=0.98, bottom=0.01,
                             top=1 - 0.75 / height)
    for n, tile in enumerate(tiles):
        cell = outer[divmod(n, columns)].subgridspec(2, 1, height_ratios=[1.0, 0.62], hspace=0.04)
        ax_img = fig.add_subplot(cell[0])
        ax_img.imshow(tile.image, interpolation="antialiased")
        ax_img.set_xticks([])
        ax_img.set_yticks([])
        ax_img.set_title(_shorten(tile.caption, 30), fontsize=9)
        ax_bar = fig.add_subplot(cell[1])
        k = len(tile.names)
        colours = [TRUE_COLOUR if i == tile.true_rank else PROB_COLOUR for i in range(k)]
        ax_bar.barh(range(k), tile.probabilities, color=colours, height=0.8)
        for i, (name, p) in enumerate(zip(tile.names, tile.probabilities)):
            # names sit on the bars, inside the axes, so long ImageNet names never run into a neighbour
            ax_bar.text(0.02, i, _shorten(name, 24), va="center", ha="left", fontsize=8)
            ax_bar.text(0.98, i, f"{100 * p:.1f}%", va="center", ha="right", fontsize=7, color="#444444")
        ax_bar.set_xlim(0, 1)  # bar length is the probability; the printed percentages replace tick labels
        ax_bar.set_ylim(k - 0.5, -0.5)  # most probable on top
        ax_bar.set_xticks([])
        ax_bar.set_yticks([])
    fig.suptitle(title or f"Top-{max(len(t.names) for t in tiles)} predictions (red: the true class)",
                 fontsize=11)
    return _save(fig, out)


@dataclass
class RetrievalRow:
    """One query image and its nearest images (nearest first), each with a caption."""

    query: np.ndarray
    query_caption: str
    neighbours: list[np.ndarray]
    captions: list[str]


def plot_retrieval(rows: Sequence[RetrievalRow], out: str | Path, title: str = "") -> Path:
    """Figure 4 (right): each query in the first column, its nearest images in fc7 space to the right."""
    plt = _pyplot()
    k = max(len(r.neighbours) for r in rows)
    fig, axes = plt.subplots(len(rows), k + 1, figsize=(1.75 * (k + 1), 2.1 * len(rows) + 0.5),
                             squeeze=False, layout="constrained")
    for r, row in enumerate(rows):
        images = [row.query, *row.neighbours]
        captions = [row.query_caption, *row.captions]
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(images):
                ax.set_axis_off()
                continue
            ax.imshow(images[c], interpolation="antialiased")
            ax.set_xlabel(captions[c], fontsize=7.5, labelpad=2)
            if c == 0:  # frame the query
                for spine in ax.spines.values():
                    spine.set_edgecolor(TRUE_COLOUR)
                    spine.set_linewidth(2.5)
            if r == 0:
                ax.set_title("query" if c == 0 else f"neighbour {c}", fontsize=8.5)
    fig.suptitle(title or "Nearest training images by Euclidean distance of fc7 vectors", fontsize=10)
    return _save(fig, out)
