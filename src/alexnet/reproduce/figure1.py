"""Figure 1 of the paper: the four-layer CIFAR-10 net reaches 25% training error six times faster with ReLU
than with tanh, the learning rate of each "chosen independently to make training as fast as possible", and no
regularisation.

The protocol (the paper's, as the default `--setting paper`):
- Inputs and initialisation as in the paper's code: pixel values minus the mean image, not scaled; weights
  N(0, 0.01^2), biases 0; momentum 0.9, no weight decay, a constant rate (the `figure1` preset). With
  `lr_drop` the rate is divided by 10 when the training error has not improved by 0.5 points for 2 epochs
  (the paper's heuristic, on training error, since nothing else is measured), the same rule for both nets.
- Rate selection by what the paper optimised: every rate of a log grid trains on the whole training split
  until the target training error (or `max_epochs`), and the rate that reaches it in the fewest epochs
  (interpolated) wins. Run one after another (smallest rate first), a run stops once it can no longer win:
  at the epoch where an earlier rate reached the target. When the winner (or, if no rate reached the target,
  the rate whose training error ended lowest) is at an edge of the grid, the grid grows by one step past
  that edge (at most `max_extend` times a side), so that the chosen rate has slower rates on both sides.
- Training error: the running error of the epoch, the share of training images misclassified at the moment
  their batch was trained on (what cuda-convnet printed and plotted; train.py's train_top1_error). The net
  has no dropout and no augmentation, so it is the same net in training and evaluation mode.
- Epochs to the target: the first epoch at or below it, and the crossing interpolated between the epochs
  around it.

`--setting modern` keeps the earlier measurement's inputs: scaled to unit variance, PyTorch's default init and
the rate-drop heuristic, with the same rate selection.

Runs: OUT/<activation>-lr<rate>, ordinary run directories continued (--resume auto) or reused when the
command is run again; several run at once in separate processes with `jobs`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm import tqdm

from alexnet.config import Config, build_config
from alexnet.errors import UserError
from alexnet.reproduce.common import StoreView, finished_epochs, train_run
from alexnet.train import Run

ACTIVATIONS = ("relu", "tanh")
PAPER_RATIO = 6.0  # Figure 1: ReLU reaches 25% training error six times faster than tanh
# settings: overrides of the figure1 preset (which is the paper's) and each one's default grid of rates
SETTINGS: dict[str, dict[str, Any]] = {
    "paper": {},
    "modern": {"data.normalize": "imagenet", "model.init": "torchvision", "optim.schedule": "plateau",
               "optim.patience": 2, "optim.min_improvement": 0.5},
}
DEFAULT_RATES = {"paper": (0.0003, 0.001, 0.003, 0.01), "modern": (0.003, 0.01, 0.03, 0.1)}
LR_DROP = {"optim.schedule": "plateau", "optim.patience": 2, "optim.min_improvement": 0.5}


@dataclass
class Figure1Options:
    target: float = 25.0  # training error (%) both nets must reach
    max_epochs: int = 60
    rates: tuple[float, ...] = DEFAULT_RATES["paper"]
    setting: str = "paper"
    lr_drop: bool = False  # the rate-drop heuristic (always on in the modern setting)
    max_extend: int = 2  # grid steps added past an edge that wins, per side
    jobs: int = 1  # runs at once, each in its own process
    seed: int = 0
    activations: tuple[str, ...] = ACTIVATIONS  # both for the ratio; one alone to run it in its own process
    overrides: dict[str, Any] = field(default_factory=dict)  # config keys on top of the figure1 preset
    progress: bool = False  # bars on stderr: each run's steps (one job), or the runs finished (several jobs)


@dataclass
class Curve:
    """One (activation, rate) run's result."""

    activation: str
    lr: float
    errors: list[float]  # training error after each epoch, %
    seconds: list[float]  # wall time of each epoch
    epochs_to_target: int | None  # first epoch (1-based) at or below the target; None: never reached
    crossing: float | None  # the same, interpolated between epochs
    diverged: bool = False


def crossing_epoch(errors: list[float], target: float) -> tuple[int | None, float | None]:
    """(first 1-based epoch with error <= target, that crossing interpolated linearly between epochs).

    Epoch k's error is plotted at x = k; before the first epoch there is no point, so a net below the target
    after its first epoch crosses at 1.
    """
    for k, err in enumerate(errors, start=1):
        if err <= target:
            if k == 1:
                return 1, 1.0
            before = errors[k - 2]
            return k, (k - 1) + (before - target) / (before - err)
    return None, None


def _config(activation: str, lr: float, epochs: int, opts: Figure1Options) -> Config:
    overrides = {**SETTINGS[opts.setting], **(LR_DROP if opts.lr_drop else {}), **opts.overrides,
                 "model.activation": activation, "optim.lr": lr, "train.epochs": epochs, "train.seed": opts.seed}
    return build_config("figure1", None, overrides)


def _stop_at_target(target: float) -> Callable[[Run], None]:
    """Set up a run to stop after the epoch whose training error reaches `target`, and to draw no per-epoch
    curves.png (the reproduction draws its own figure).

    The stop is the schedule's own flag, set before the epoch's checkpoint is written, so a finished run
    resumed later stays finished.
    """

    def stop_at_target(run: Run, record: dict[str, Any]) -> None:
        if record["train_top1_error"] <= target:
            run.schedule.should_stop = True

    def set_up(run: Run) -> None:
        run.log.curves = False
        run.after_epoch.append(stop_at_target)

    return set_up


def run_dir_for(out: Path, activation: str, lr: float) -> Path:
    return out / f"{activation}-lr{lr:g}"


def train_to_target(store: Any, activation: str, lr: float, out: Path, opts: Figure1Options,
                    cap: int | None = None) -> Curve:
    """Train on the whole training split until the target training error or `cap` epochs (max_epochs); a rate
    whose loss turns non-finite is recorded as diverged (it never reaches the target)."""
    run_dir = run_dir_for(out, activation, lr)
    failed = run_dir / "diverged.txt"
    if not failed.is_file():
        view = StoreView(store, {"train": store.split("train")})  # no val split: nothing but training is timed
        try:
            train_run(_config(activation, lr, cap or opts.max_epochs, opts), view, run_dir,
                _stop_at_target(opts.target), opts.progress and opts.jobs <= 1)
        except UserError as exc:
            if "non-finite" not in str(exc):
                raise
            run_dir.mkdir(parents=True, exist_ok=True)
            failed.write_text(f"{exc}\n")
    records = finished_epochs(run_dir)
    errors = [r["train_top1_error"] for r in records]
    k, crossing = crossing_epoch(errors, opts.target) if not failed.is_file() else (None, None)
    return Curve(activation, lr, errors, [r["epoch_time"] for r in records], k, crossing, failed.is_file())


def _train_in_process(store_root: str, activation: str, lr: float, out: Path, opts: Figure1Options) -> Curve:
    import torch

    from alexnet.data.store import open_store

    torch.set_num_threads(1)  # one run per core
    return train_to_target(open_store(store_root), activation, lr, out, opts)


def fastest(curves: dict[float, Curve]) -> float | None:
    """The rate that reached the target in the fewest (interpolated) epochs; ties go to the smaller rate.
    None when no rate reached it."""
    reached = [lr for lr, c in curves.items() if c.crossing is not None]
    if not reached:
        return None
    return min(reached, key=lambda lr: (curves[lr].crossing, lr))


def leading(curves: dict[float, Curve]) -> float | None:
    """The rate to grow the grid around: the fastest to the target, or when none reached it, the one whose
    training error ended lowest (the direction the fastest rate lies in); None when every rate diverged."""
    best = fastest(curves)
    if best is not None:
        return best
    alive = [lr for lr, c in curves.items() if c.errors and not c.diverged]
    return min(alive, key=lambda lr: (curves[lr].errors[-1], lr)) if alive else None


def grid_extension(rates: list[float], best: float | None, extended: dict[str, int], max_extend: int) -> float | None:
    """The next rate to try when the winner sits at an edge of the grid: one grid step past it (the step is
    the ratio of the two rates nearest that edge); None when the winner is inside, or the edge is spent."""
    if best is None or len(rates) < 2:
        return None
    rates = sorted(rates)
    if best == rates[0] and extended["low"] < max_extend:
        extended["low"] += 1
        return rates[0] * rates[0] / rates[1]
    if best == rates[-1] and extended["high"] < max_extend:
        extended["high"] += 1
        return rates[-1] * rates[-1] / rates[-2]
    return None


def _run_all(store: Any, pairs: list[tuple[str, float]], out: Path, opts: Figure1Options,
             grids: dict[str, dict[float, Curve]]) -> list[Curve]:
    """Train each (activation, rate). One after another, a run stops once it can no longer be the fastest:
    at the epoch where an earlier rate of its activation reached the target (a tie goes to the smaller rate,
    and rates run smallest first), which saves the slow and the stuck rates most of their epochs."""
    if opts.jobs <= 1 or len(pairs) == 1:
        curves = []
        for a, lr in pairs:
            done = {**grids[a], **{c.lr: c for c in curves if c.activation == a}}
            best = fastest(done)
            cap = opts.max_epochs if best is None else min(opts.max_epochs, math.ceil(done[best].crossing))
            curves.append(train_to_target(store, a, lr, out, opts, cap))
        return curves
    with ProcessPoolExecutor(min(opts.jobs, len(pairs)), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_train_in_process, str(store.root), a, lr, out, opts) for a, lr in pairs]
        # the workers draw no bars of their own (they would overwrite each other): one bar counts the runs
        with tqdm(total=len(futures), desc="figure1 runs", unit="run", disable=not opts.progress,
                  dynamic_ncols=True, leave=False) as bar:
            for _ in as_completed(futures):
                bar.update()
        return [f.result() for f in futures]


def choose_rates(store: Any, out: Path, opts: Figure1Options, say=print) -> dict[str, dict[float, Curve]]:
    """Every activation's grid, grown past a winning edge, each rate trained to the target."""
    grids: dict[str, dict[float, Curve]] = {a: {} for a in opts.activations}
    pending = [(a, lr) for a in opts.activations for lr in opts.rates]
    extended = {a: {"low": 0, "high": 0} for a in opts.activations}
    while pending:
        for curve in _run_all(store, sorted(pending, key=lambda p: (p[0], p[1])), out, opts, grids):
            grids[curve.activation][curve.lr] = curve
            say("  " + curve_line(curve, opts.target))
        pending = []
        for a in opts.activations:
            more = grid_extension(list(grids[a]), leading(grids[a]), extended[a], opts.max_extend)
            if more is not None:
                say(f"{a}: the fastest rate is at the edge of the grid: trying lr {more:.3g} as well")
                pending.append((a, float(f"{more:.3g}")))
    return grids


def rate_table(grids: dict[str, dict[float, Curve]], target: float) -> str:
    """Markdown: one row per rate, epochs to the target for each activation (interpolated in brackets)."""
    rates = sorted({lr for g in grids.values() for lr in g})
    names = list(grids)
    rows = ["| learning rate | " + " | ".join(f"{a}: epochs to {target:g}%" for a in names) + " |",
            "|---|" + "---|" * len(names)]
    for lr in rates:
        cells = []
        for a in names:
            c = grids[a].get(lr)
            if c is None:
                cells.append("-")
            elif c.diverged:
                cells.append("diverged")
            elif c.epochs_to_target is None:
                cells.append(f"not in {len(c.errors)} ({c.errors[-1]:.1f}% at the end)")
            else:
                best = fastest(grids[a]) == lr
                text = f"{c.epochs_to_target} ({c.crossing:.2f})"
                cells.append(f"**{text}**" if best else text)
        rows.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def ratio_line(relu: Curve, tanh: Curve, target: float) -> str:
    """'tanh needs N times as many epochs as ReLU', or a bound when tanh never got there."""
    if relu.epochs_to_target is None:
        return f"ReLU did not reach {target:g}% within {len(relu.errors)} epochs: no ratio"
    if tanh.epochs_to_target is None:
        bound = len(tanh.errors) / relu.epochs_to_target
        return (f"ratio tanh/ReLU > {bound:.1f} (tanh did not reach {target:g}% in {len(tanh.errors)} epochs; "
                f"paper: {PAPER_RATIO:g})")
    assert relu.crossing is not None and tanh.crossing is not None
    return (f"ratio tanh/ReLU: {tanh.epochs_to_target / relu.epochs_to_target:.1f} in whole epochs, "
            f"{tanh.crossing / relu.crossing:.1f} interpolated (paper: {PAPER_RATIO:g})")


def curve_line(c: Curve, target: float) -> str:
    if c.diverged:
        return f"{c.activation}: lr {c.lr:g} diverged (non-finite loss)"
    if c.epochs_to_target is None:
        return (f"{c.activation}: lr {c.lr:g}, did not reach {target:g}% in {len(c.errors)} epochs "
                f"(last {c.errors[-1]:.2f}%, {sum(c.seconds):.0f} s)")
    wall = sum(c.seconds[: c.epochs_to_target])
    return (f"{c.activation}: lr {c.lr:g}, {target:g}% training error after {c.epochs_to_target} epochs "
            f"({c.crossing:.2f} interpolated), {wall:.0f} s")


def plot(curves: list[Curve], target: float, path: Path) -> Path:
    """The paper's Figure 1: training error against epochs, ReLU solid, tanh dashed, the target line."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2), constrained_layout=True)
    for c in curves:
        style = "-" if c.activation == "relu" else "--"
        name = "ReLU" if c.activation == "relu" else "tanh"
        epochs = range(1, len(c.errors) + 1)
        ax.plot(epochs, c.errors, style, color="black", label=f"{name} (lr {c.lr:g})")
    ax.axhline(target, color="grey", linewidth=0.8)
    ax.set(xlabel="Epochs", ylabel="Training error rate (%)", title="Four-layer net on CIFAR-10 (Figure 1)")
    top = max((max(c.errors) for c in curves if c.errors), default=100.0)
    ax.set_ylim(0, min(100.0, math.ceil(top / 5) * 5 + 5))
    ax.set_xlim(left=0)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def reproduce_figure1(store: Any, out: Path, opts: Figure1Options, say=print) -> tuple[list[Curve], str]:
    """Choose each activation's rate, plot the two fastest curves; returns them and the ratio line. Writes
    OUT/figure1.md (the rate table and the ratio) and OUT/figure1.png when both activations ran."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    drop = "with the rate-drop heuristic" if opts.lr_drop or opts.setting == "modern" else "at a constant rate"
    say(f"setting {opts.setting}, {drop}: every rate of {', '.join(f'{r:g}' for r in opts.rates)} trained until "
        f"{opts.target:g}% training error (at most {opts.max_epochs} epochs)")
    grids = choose_rates(store, out, opts, say)
    curves = []
    for grid in grids.values():
        lead = leading(grid)
        chosen = grid[lead] if lead is not None else next(iter(grid.values()))
        curves.append(chosen)
        say(f"chosen: {curve_line(chosen, opts.target)}")
    table = rate_table(grids, opts.target)
    if len(curves) < len(ACTIVATIONS):
        return curves, ""  # one activation alone: no ratio, no figure (run both to get them)
    figure = plot(curves, opts.target, out / "figure1.png")
    ratio = ratio_line(curves[0], curves[1], opts.target)
    (out / "figure1.md").write_text(f"Setting {opts.setting}, {drop}; epochs to {opts.target:g}% training error "
                                    f"(interpolated in brackets), fastest rate in bold.\n\n{table}\n\n{ratio}\n")
    say(table)
    say(ratio)
    say(f"figure: {figure}   ({time.perf_counter() - start:.0f} s in all)")
    return curves, ratio
