"""Figure 1 of the paper: the four-layer CIFAR-10 net reaches 25% training error six times faster with ReLU
than with tanh, each with the learning rate that trains it fastest and no regularisation.

What is measured:
- Training error: the running error of the epoch, i.e. the share of training images misclassified at the
  moment their batch was trained on (what cuda-convnet printed and plotted, and what train.py logs as
  train_top1_error). The `figure1` preset has no dropout and no augmentation, so the net in training mode
  is the net in evaluation mode; the running error only lags the end-of-epoch error a little, equally for
  both activations. It costs nothing, where a second pass over 45,000 images would cost a third of an epoch.
- Learning rates: for each activation, every candidate rate trains for `sweep_epochs` on a random
  `sweep_images` of the training split and is scored by its top-1 error on a disjoint random `holdout` of
  the training split (never the val split); the lowest error wins, a diverging rate loses.
- Schedule: the `figure1` preset divides the rate by 10 when the training error stops improving (the
  paper's heuristic), the same rule for both nets.
- Epochs to the target: the first epoch whose training error is at or below it, and the crossing
  interpolated linearly between the two epochs around it. Both runs stop there, or at `max_epochs`.

Runs: OUT/sweep/<activation>-lr<rate> for the sweep, OUT/<activation>-lr<rate> for the chosen rate, each an
ordinary run directory continued (--resume auto) or reused when the command is run again.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alexnet.config import Config, build_config
from alexnet.errors import UserError
from alexnet.reproduce.common import StoreView, disjoint_samples, finished_epochs, fit, take
from alexnet.train import Run

ACTIVATIONS = ("relu", "tanh")
PAPER_RATIO = 6.0  # Figure 1: ReLU reaches 25% training error six times faster than tanh
DEFAULT_RATES = (0.003, 0.01, 0.03, 0.1, 0.3)  # half-decades around the preset's rate (inputs are unit-scaled)


@dataclass
class Figure1Options:
    target: float = 25.0  # training error (%) both nets must reach
    max_epochs: int = 60
    rates: tuple[float, ...] = DEFAULT_RATES
    sweep_epochs: int = 2
    sweep_images: int = 10_000  # training images of each sweep run
    holdout: int = 5_000  # training images held out to score the rates
    seed: int = 0
    activations: tuple[str, ...] = ACTIVATIONS  # both for the ratio; one alone to run it in its own process
    overrides: dict[str, Any] = field(default_factory=dict)  # config keys on top of the figure1 preset


@dataclass
class Curve:
    """One activation's result."""

    activation: str
    lr: float
    errors: list[float]  # training error after each epoch, %
    seconds: list[float]  # wall time of each epoch
    epochs_to_target: int | None  # first epoch (1-based) at or below the target; None: never reached
    crossing: float | None  # the same, interpolated between epochs


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
    overrides = {**opts.overrides, "model.activation": activation, "optim.lr": lr, "train.epochs": epochs,
                 "train.seed": opts.seed}
    return build_config("figure1", None, overrides)


class _FigureRun(Run):
    """A run without its per-epoch curves.png: the reproduction draws its own figure, and redrawing a
    matplotlib figure after every epoch costs about as much as a sweep epoch itself."""

    def plot_curves(self) -> None:
        pass


class _StopAtTarget(_FigureRun):
    """A run that stops after the epoch whose training error reaches the target.

    The stop is the schedule's own flag, set before the epoch's checkpoint is written, so a finished run
    resumed later stays finished.
    """

    def __init__(self, *args: Any, target: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.target = target

    def log(self, record: dict[str, Any]) -> None:
        super().log(record)
        if record.get("kind") == "epoch" and record["train_top1_error"] <= self.target:
            self.schedule.should_stop = True


def _fit(cfg: Config, view: StoreView, run_dir: Path, target: float | None = None) -> None:
    if target is None:
        fit(cfg, view, run_dir, _FigureRun)
    else:
        fit(cfg, view, run_dir, functools.partial(_StopAtTarget, target=target))


def sweep(store: Any, activation: str, out: Path, opts: Figure1Options, say=print) -> dict[float, float]:
    """Held-out top-1 error (%) of each candidate rate after the short run; 100 for a rate that diverged."""
    train = store.split("train")
    n = len(train)
    if opts.sweep_images + opts.holdout > n:
        raise UserError(f"the sweep needs {opts.sweep_images} + {opts.holdout} training images, the store has {n}: "
                        "lower --sweep-images or --holdout")
    fit_index, held_index = disjoint_samples(n, [opts.sweep_images, opts.holdout], opts.seed)
    view = StoreView(store, {"train": take(train, fit_index), "val": take(train, held_index)})
    scores: dict[float, float] = {}
    for lr in opts.rates:
        run_dir = out / "sweep" / f"{activation}-lr{lr:g}"
        failed = run_dir / "diverged.txt"
        if failed.is_file():
            scores[lr] = 100.0
        else:
            try:
                _fit(_config(activation, lr, opts.sweep_epochs, opts), view, run_dir)
                records = finished_epochs(run_dir)
                scores[lr] = records[-1]["val_top1_error"]
            except UserError as exc:
                if "non-finite" not in str(exc):
                    raise
                run_dir.mkdir(parents=True, exist_ok=True)
                failed.write_text(f"{exc}\n")
                scores[lr] = 100.0
        say(f"  sweep {activation} lr {lr:g}: held-out top-1 error {scores[lr]:.2f}%"
            + (" (diverged)" if failed.is_file() else ""))
    return scores


def best_rate(scores: dict[float, float]) -> float:
    """The rate with the lowest held-out error; ties go to the smaller rate (the safer one)."""
    return min(scores, key=lambda lr: (scores[lr], lr))


def train_to_target(store: Any, activation: str, lr: float, out: Path, opts: Figure1Options) -> Curve:
    """Train on the whole training split until the target training error or max_epochs."""
    run_dir = out / f"{activation}-lr{lr:g}"  # another rate (a wider sweep) is another run
    view = StoreView(store, {"train": store.split("train")})  # no val split: nothing but training is timed
    _fit(_config(activation, lr, opts.max_epochs, opts), view, run_dir, opts.target)
    records = finished_epochs(run_dir)
    errors = [r["train_top1_error"] for r in records]
    k, crossing = crossing_epoch(errors, opts.target)
    return Curve(activation, lr, errors, [r["epoch_time"] for r in records], k, crossing)


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
    """Sweep, train both nets, plot; returns the curves and the ratio line."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    curves = []
    for activation in opts.activations:
        say(f"{activation}: learning-rate sweep ({opts.sweep_epochs} epochs on {opts.sweep_images} training "
            f"images, scored on {opts.holdout} other training images)")
        lr = best_rate(sweep(store, activation, out, opts, say))
        say(f"{activation}: training with lr {lr:g} until {opts.target:g}% training error "
            f"(at most {opts.max_epochs} epochs)")
        curves.append(train_to_target(store, activation, lr, out, opts))
    for c in curves:
        say(curve_line(c, opts.target))
    if len(curves) < len(ACTIVATIONS):
        return curves, ""  # one activation alone: no ratio, no figure (run both to get them)
    figure = plot(curves, opts.target, out / "figure1.png")
    ratio = ratio_line(curves[0], curves[1], opts.target)
    say(ratio)
    say(f"figure: {figure}   ({time.perf_counter() - start:.0f} s in all)")
    return curves, ratio
