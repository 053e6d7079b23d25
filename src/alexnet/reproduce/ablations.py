"""The paper's ingredients removed one at a time from the `cifar-ingredients` preset, validation error over seeds.

Each (variant, seed) is an ordinary training run in OUT/<variant>-e<epochs>-n<images>-seed<seed>[-<tag>], trained
by train.Run with --resume auto semantics: a finished run is skipped (its files are not touched), an
interrupted one continues exactly, so the command can be stopped and started again at will. The budget
(epochs, training images) is part of the directory name, so runs of different budgets never mix. The table reports the
last epoch's centre-crop validation error beside the effect the paper reports for each ingredient.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alexnet.config import Config, build_config
from alexnet.reproduce.common import finished_epochs, random_subset, train_run

PRESET = "cifar-ingredients"  # every paper ingredient present, so each can be removed


@dataclass(frozen=True)
class Variant:
    name: str
    removed: str  # what is taken away, in words
    overrides: dict[str, Any]
    paper: str  # the effect of removing it that the paper reports (SPEC section 4)


VARIANTS = (
    Variant("all", "nothing (the cifar-ingredients preset)", {}, "-"),
    Variant("no-lrn", "local response normalization", {"model.lrn": False},
            "+1.4 top-1, +1.2 top-5 (ImageNet); four-layer CIFAR-10 net: 13% error without, 11% with"),
    Variant("plain-pooling", "overlapping pooling (3/2 -> 2/2)", {"model.pooling": "plain"},
            "+0.4 top-1, +0.3 top-5"),
    Variant("one-tower", "two towers (one tower of half width)", {"model.towers": 1},
            "+1.7 top-1, +1.2 top-5"),
    Variant("no-pca", "PCA colour noise", {"data.pca_std": 0.0}, "more than +1 top-1"),
    Variant("no-dropout", "dropout", {"model.dropout": 0.0}, "substantial overfitting (no number given)"),
    Variant("no-crops-flips", "random crops and flips", {"data.random_crop": False, "data.flip": False},
            "substantial overfitting (no number given)"),
)


@dataclass
class Result:
    variant: Variant
    top1: list[float]  # last-epoch validation errors, one per seed, %
    top5: list[float]


def variant_config(variant: Variant, seed: int, epochs: int | None, overrides: dict[str, Any]) -> Config:
    """The cifar-ingredients preset, the caller's overrides, the variant's removal; milestones scaled to `epochs`."""
    merged = {**overrides, **variant.overrides, "train.seed": seed}
    cfg = build_config(PRESET, None, merged)
    if epochs is not None and epochs != cfg.train.epochs:
        # keep the preset's schedule shape: a milestone at 2/3 of 30 epochs is one at 2/3 of `epochs`
        scale = epochs / cfg.train.epochs
        cfg.optim.milestones = sorted({max(1, round(m * scale)) for m in cfg.optim.milestones})
        cfg.train.epochs = epochs
    return cfg


def run_dir_for(out: Path, variant: Variant, epochs: int, seed: int, overrides: dict[str, Any],
                train_images: int) -> Path:
    """OUT/<variant>-e<epochs>-n<training images>-seed<seed>, plus a tag of the caller's overrides when there
    are any, so that a finished run is only ever reused for the same settings."""
    tag = ""
    if overrides:
        key = json.dumps(sorted((k, repr(v)) for k, v in overrides.items()))
        tag = "-" + hashlib.sha256(key.encode()).hexdigest()[:8]
    return out / f"{variant.name}-e{epochs}-n{train_images}-seed{seed}{tag}"


def run_variant(store: Any, variant: Variant, seed: int, epochs: int | None, overrides: dict[str, Any],
                out: Path, say=print, progress: bool = False) -> tuple[float, float]:
    """Train one (variant, seed) unless its run is finished; its last-epoch (top-1, top-5) validation error."""
    cfg = variant_config(variant, seed, epochs, overrides)
    run_dir = run_dir_for(out, variant, cfg.train.epochs, seed, overrides, len(store.split("train")))
    records = finished_epochs(run_dir)
    if len(records) >= cfg.train.epochs:
        say(f"skipped {variant.name} seed {seed}: finished ({run_dir})")
    else:
        say(f"training {variant.name} seed {seed} ({variant.removed} removed) in {run_dir}")
        train_run(cfg, store, run_dir, progress=progress)
        records = finished_epochs(run_dir)
    last = records[cfg.train.epochs - 1]
    return last["val_top1_error"], last["val_top5_error"]


def _mean_std(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}"


def table(results: list[Result]) -> str:
    """Markdown: one row per variant, the change against the full recipe beside the paper's."""
    base = next((r for r in results if r.variant.name == "all"), None)
    rows = ["| removed | val top-1 % | val top-5 % | change top-1 | change top-5 | paper: removing it |",
            "|---|---|---|---|---|---|"]
    for r in results:
        if base is None or r is base:
            d1 = d5 = "-"
        else:
            d1 = f"{statistics.mean(r.top1) - statistics.mean(base.top1):+.2f}"
            d5 = f"{statistics.mean(r.top5) - statistics.mean(base.top5):+.2f}"
        rows.append(f"| {r.variant.removed} | {_mean_std(r.top1)} | {_mean_std(r.top5)} | {d1} | {d5} "
                    f"| {r.variant.paper} |")
    return "\n".join(rows)


def reproduce_ablations(store: Any, out: Path, seeds: int, epochs: int | None, overrides: dict[str, Any],
                        variants: tuple[Variant, ...] = VARIANTS, train_images: int = 0, say=print,
                        only_seed: int | None = None, progress: bool = False) -> str:
    """Every variant for seeds 0..seeds-1 (or `only_seed` alone), on all training images or a fixed random
    `train_images` of them (the same for every run); writes and returns OUT/ablations.md."""
    n_train = len(store.split("train"))
    if train_images and train_images < n_train:
        store = random_subset(store, train_images)
        n_train = train_images
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for variant in variants:
        top1, top5 = [], []
        for seed in range(seeds) if only_seed is None else (only_seed,):
            e1, e5 = run_variant(store, variant, seed, epochs, overrides, out, say, progress)
            top1.append(e1)
            top5.append(e5)
        results.append(Result(variant, top1, top5))
    n_epochs = variant_config(variants[0], 0, epochs, overrides).train.epochs
    n_val = len(store.split("val"))
    n_seeds = seeds if only_seed is None else 1
    text = (f"Ablations of the `{PRESET}` preset: {n_epochs} epochs on {n_train} training images, {n_seeds} seed(s) "
            f"({'mean ± std over seeds' if n_seeds > 1 else 'one seed, no spread'}); last-epoch centre-crop error "
            f"on the {n_val} validation images. Change = variant minus the full recipe, in percentage points; "
            "the paper's figures are for ImageNet unless said.\n\n" + table(results) + "\n")
    (out / "ablations.md").write_text(text)
    return text
