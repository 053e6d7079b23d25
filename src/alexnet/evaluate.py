"""Top-1 / top-5 error, centre crop or ten crops, one model or several averaged in probability.

Counts are summed across ranks exactly (each rank evaluates a disjoint share, no padding), so the error
does not depend on the number of processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.config import DataConfig
from alexnet.data.augment import ColourStats, eval_views
from alexnet.data.loader import BatchLoader
from alexnet.parallel.ddp import all_reduce_sum


def topk_correct(probs: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[torch.Tensor]:
    """Number of samples whose label is among the k most probable classes, for each k."""
    kmax = min(max(ks), probs.shape[1])
    top = probs.topk(kmax, dim=1).indices
    hits = top == labels[:, None]
    return [hits[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


@torch.no_grad()
def predict_probs(models: Sequence[nn.Module], images: torch.Tensor, cfg: DataConfig,
                  stats: Sequence[ColourStats], ten_crop: bool, autocast: contextlib.AbstractContextManager
                  | None = None) -> torch.Tensor:
    """Softmax probabilities averaged over views (ten crops) and over models: (B, classes)."""
    bsz = images.shape[0]
    total = None
    for model, st in zip(models, stats):
        views = eval_views(images, cfg, st, ten_crop)
        with autocast or contextlib.nullcontext():
            logits = model(views)
        probs = F.softmax(logits.float(), dim=1).view(-1, bsz, logits.shape[1]).mean(0)
        total = probs if total is None else total + probs
    return total / len(models)


@torch.no_grad()
def evaluate(models: Sequence[nn.Module], loader: BatchLoader, cfg: DataConfig,
             stats: Sequence[ColourStats], ten_crop: bool = False,
             autocast: contextlib.AbstractContextManager | None = None, progress: bool = False) -> dict[str, float]:
    """Errors in percent over the whole split (all ranks together) and the number of images counted.

    progress: a tqdm bar of this rank's images (on stderr; pass False off a terminal and on other ranks)."""
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    device = loader.device
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # top1 hits, top5 hits, nll sum, count
    bar = None
    if progress:
        from tqdm import tqdm

        share = loader.n // loader.world_size + (1 if loader.rank < loader.n % loader.world_size else 0)
        bar = tqdm(total=share, desc="validation" + (" (ten crops)" if ten_crop else ""), unit="img",
                   dynamic_ncols=True, leave=False)
    for batch in loader.eval_batches():
        if bar is not None:
            bar.update(len(batch.labels))
        probs = predict_probs(models, batch.images, cfg, stats, ten_crop, autocast)
        c1, c5 = topk_correct(probs, batch.labels)
        nll = -torch.log(probs.gather(1, batch.labels[:, None]).clamp_min(1e-12)).sum()
        sums += torch.stack([c1.double(), c5.double(), nll.double(),
                             torch.tensor(float(len(batch.labels)), dtype=torch.float64, device=device)])
    if bar is not None:
        bar.close()
    for m, t in zip(models, was_training):
        m.train(t)
    all_reduce_sum(sums)
    c1, c5, nll, n = sums.tolist()
    n_safe = max(n, 1.0)
    return {"top1_error": 100.0 * (1 - c1 / n_safe), "top5_error": 100.0 * (1 - c5 / n_safe),
            "loss": nll / n_safe, "images": int(n)}
