"""The steps of `alexnet demo` (commands/demo.py parses its flags and prints): generated images prepared into a
store, and the trained checkpoint evaluated with ten crops, its conv1 kernels drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from alexnet.data.loader import BatchLoader
from alexnet.data.store import open_store
from alexnet.evaluate import evaluate
from alexnet.plots import plot_kernels
from alexnet.prepare.synthetic import write_image_folder
from alexnet.prepare.writer import prepare
from alexnet.tools.inference import load_model


def make_data(out: Path, train_per_class: int, val_per_class: int, size: int) -> Path:
    """OUT/images (generated shapes, class folders) prepared into OUT/store; returns the store's folder."""
    write_image_folder(out / "images", train_per_class, val_per_class)
    prepare(out / "images", out / "store", size=size, progress=False)
    return out / "store"


def evaluate_run(run_dir: Path, store_dir: Path, progress: bool) -> dict[str, Any]:
    """RUN/best.pt's ten-crop errors on the store's validation split, with chance and the kernels' figure."""
    cpu = torch.device("cpu")
    model, cfg, info = load_model(run_dir / "best.pt")
    val = open_store(store_dir).split("val")
    result = evaluate([model], BatchLoader(val.images, val.labels, 128, cpu), cfg.data, [info.stats(cfg, cpu)],
                      ten_crop=True, progress=progress)
    result["chance_top1_error"] = 100 * (1 - 1 / len(info.classes))
    result["kernels"] = plot_kernels(model.features[0].weight.detach().numpy(), cfg.model.towers,
                                     run_dir / "kernels.png")
    return result
