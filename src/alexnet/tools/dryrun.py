"""`alexnet train ... --dry-run`: what a run would be, measured, without writing anything.

It resolves the config, the data (a store is opened and verified; a folder or archive is only located, since
preparing it would write), the model and the run folder, prints parameters, multiply-adds, steps per epoch,
a memory estimate, and a time estimate from a few training steps timed on random batches of the run's shape,
device, precision and memory layout.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from alexnet.config import Config
from alexnet.model import AlexNet
from alexnet.optim import build_optimizer


def activation_bytes(model: AlexNet, crop: int, batch: int) -> int:
    """Bytes of every layer output for one batch in float32: about what autograd keeps for the backward pass."""
    total = 0

    def hook(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * 4 * batch

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, crop, crop))
    finally:
        for h in handles:
            h.remove()
        model.train()
    return total


def timed_steps(cfg: Config, model: AlexNet, device: torch.device, steps: int = 3) -> float:
    """Median seconds of a training step (forward, loss, backward, update) on random data, after one warm-up."""
    from alexnet.runtime import precision_context, use_channels_last

    model = model.to(device)
    if use_channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg.optim)
    batch = cfg.optim.batch_size
    x = torch.randn(batch, 3, cfg.data.crop, cfg.data.crop, device=device) * 50
    if use_channels_last(cfg, device):
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, cfg.model.num_classes, (batch,), device=device)
    autocast = precision_context(cfg, device)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with autocast:
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def dry_run(cfg: Config, data: str, run_dir: Path, resume: str | None, cache: Path,
            steps: int = 3) -> dict[str, Any]:
    """Everything checked and measured, nothing written; the report as a dict (printed by the command)."""
    from alexnet.data.store import is_store, open_store
    from alexnet.runlog import prepare_run_dir
    from alexnet.runtime import compute_threads, pick_device
    from alexnet.tools.summary import summarize
    from alexnet.train import adapt_to_store

    prepare_run_dir(run_dir, resume)
    report: dict[str, Any] = {"run_dir": str(run_dir), "resume": resume}
    path = Path(data).expanduser()
    if path.is_dir() and (is_store(path) or (path / "manifest.json").is_file()):
        store = open_store(path)
        store.verify()
        adapt_to_store(cfg, store)
        n_train = len(store.split("train"))
        n_val = len(store.split("val")) if store.has_split("val") else 0
        report["data"] = f"store {path}: {n_train} training images, {n_val} validation, {len(store.classes)} classes"
    else:
        from alexnet.errors import UserError

        if data != "cifar10" and not path.exists():
            raise UserError(f"data '{data}' does not exist")
        n_train = n_val = None
        report["data"] = (f"{data}: not a store; a real run prepares it once into {cache} "
                          "(not done in a dry run, which writes nothing)")
    threads = compute_threads(cfg.train.threads)
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(cfg.train.device)
    from alexnet.runtime import settle_auto

    report["settings"] = settle_auto(cfg, device)
    torch.manual_seed(cfg.train.seed)
    model = AlexNet(cfg.model, cfg.data.crop)
    summary = summarize(model, cfg.data.crop)
    batch = cfg.optim.batch_size
    params = summary["parameters"]
    # weights, gradients and velocities in float32, plus the layer outputs autograd keeps for a batch
    state_bytes = 3 * 4 * params
    act_bytes = activation_bytes(model, cfg.data.crop, batch)
    step_seconds = timed_steps(cfg, model, device, steps)
    report.update({
        "preset": cfg.preset, "device": str(device), "parameters": params, "macs_per_image": summary["macs"],
        "batch_size": batch, "memory_bytes_estimate": state_bytes + act_bytes,
        "step_seconds": step_seconds, "images_per_second": batch / step_seconds, "epochs": cfg.train.epochs,
    })
    if n_train is not None:
        steps_per_epoch = n_train // batch
        epoch_seconds = steps_per_epoch * step_seconds
        report.update({"steps_per_epoch": steps_per_epoch, "epoch_seconds_estimate": epoch_seconds,
                       "total_seconds_estimate": epoch_seconds * cfg.train.epochs})
        if cfg.train.budget_s:
            report.update(_budget_plan(cfg, model, store, device, steps_per_epoch, n_val))
    elif cfg.train.budget_s:
        report["budget_s"] = cfg.train.budget_s
        report["budget_note"] = "the epoch count is chosen when the data is a store (prepared), from its size"
    return report


def _budget_plan(cfg: Config, model: AlexNet, store: Any, device: torch.device, steps_per_epoch: int,
                 n_val: int) -> dict[str, Any]:
    """What `--budget` would choose: real steps on the store's images timed as a run times them."""
    from alexnet.budget import estimate_epoch, plan_epochs
    from alexnet.data.augment import ColourStats

    stats = ColourStats.build(torch.from_numpy(store.mean), torch.from_numpy(store.pca_eigenvectors),
                              torch.from_numpy(store.pca_eigenvalues), cfg.data.normalize, device)
    est = estimate_epoch(cfg, model, store, device, stats, steps_per_epoch, n_val)
    epochs = plan_epochs(cfg.train.budget_s, 0.0, est.total_s)
    return {"budget_s": cfg.train.budget_s, "budget_epochs": epochs, "budget_epoch_train_s": est.train_s,
            "budget_epoch_val_s": est.val_s, "budget_total_s": epochs * est.total_s}


def format_report(r: dict[str, Any]) -> str:
    def span(seconds: float) -> str:
        return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"

    lines = [
        f"dry run: nothing was written; a run would write {r['run_dir']}"
        + (f" (resuming: {r['resume']})" if r["resume"] else ""),
        f"data: {r['data']}",
        f"model: preset {r['preset']}, {r['parameters']:,} parameters, {r['macs_per_image']:,} multiply-adds "
        "per image (forward)",
        f"memory: about {r['memory_bytes_estimate'] / 2**30:.2f} GiB (weights, gradients, velocities and one "
        f"batch of {r['batch_size']}'s layer outputs, float32)",
        f"speed on {r['device']}: {r['step_seconds'] * 1000:.0f} ms a step, {r['images_per_second']:.0f} images/s "
        "(random batches: the model's step alone)",
    ]
    lines += r.get("settings", [])
    if "budget_epochs" in r:
        lines.append(f"budget {span(r['budget_s'])}: {r['budget_epochs']} epochs of about "
                     f"{span(r['budget_epoch_train_s'])} training and {span(r['budget_epoch_val_s'])} validation "
                     f"each, {span(r['budget_total_s'])} in all (timed on the store's images; checked again after "
                     "every epoch of the run)")
    elif "steps_per_epoch" in r:
        lines.append(f"time: {r['steps_per_epoch']} steps an epoch, about {span(r['epoch_seconds_estimate'])} an "
                     f"epoch, {span(r['total_seconds_estimate'])} for {r['epochs']} epochs (validation not counted)")
    if "budget_note" in r:
        lines.append(f"budget {span(r['budget_s'])}: {r['budget_note']}")
    return "\n".join(lines)
