"""Training: fit() and train_one_epoch(), the whole core path of a run, readable in one sitting.

Per step: uint8 batch from the loader -> augmentation on the device -> model -> cross-entropy -> the
paper's SGD step. Per epoch: validation, the schedule, a checkpoint, metrics. All randomness is a pure
function of (seed, epoch, step or sample index): the data order and augmentation by construction, dropout
by seeding torch's generator at every step. So a run resumed from any checkpoint, mid-epoch included,
ends with the same weights as one that never stopped.

Faults: SIGTERM/SIGINT only set a flag; at a step boundary the run saves a checkpoint and exits with 143/130
(under torchrun all ranks agree at a log step). A SIGKILL at any moment loses at most the steps since the last
checkpoint (train.checkpoint_every), since checkpoints are written atomically and --resume auto falls back
past an unreadable one. A non-finite loss or gradient stops the run with one line naming the step (or, with
on_nonfinite=skip, skips up to max_nonfinite steps in a row) and never saves the damaged weights. A failed
save (disk full, no permission) warns and training goes on; MAX_FAILED_SAVES in a row stop it. The store is
checked against its manifest's checksum at the start and before every epoch. Test hooks: alexnet/faults.py.

The data argument is resolved to a store by the command (commands/train.py) before training starts.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alexnet import faults
from alexnet.budget import plan_budget, replan_budget
from alexnet.checkpoint import CheckpointManager, load_checkpoint, require_same_classes, saved_train_settings
from alexnet.config import Config
from alexnet.data.augment import ColourStats, augment_train
from alexnet.data.loader import Batch, BatchLoader
from alexnet.data.store import Store, open_store
from alexnet.errors import UserError
from alexnet.evaluate import evaluate
from alexnet.meters import EpochMeter
from alexnet.model import AlexNet
from alexnet.optim import Schedule, build_optimizer, large_batch_note, lr_scale, set_lr
from alexnet.parallel.ddp import (
    DistContext,
    StopFlag,
    agreed_stop,
    barrier,
    elastic_resume,
    init_distributed,
    mark_elastic_job,
    shutdown,
)
from alexnet.parallel.towers import TwoTowerAlexNet, grouped_optimizer_state, load_grouped_optimizer_state
from alexnet.runlog import RunLog, epoch_line, prepare_run_dir
from alexnet.runtime import precision_context, set_up_cpu, settle_auto, use_channels_last

EXIT_SIGTERM, EXIT_SIGINT = 143, 130
MAX_FAILED_SAVES = 3  # checkpoint saves failing in a row (disk full, no permission) before the run stops


@dataclass
class RunState:
    """Everything a checkpoint must hold to continue exactly."""

    epoch: int = 0  # the epoch in progress
    step_in_epoch: int = 0  # the next step to run within it
    global_step: int = 0
    best_error: float = math.inf
    nonfinite_in_row: int = 0
    nonfinite_skipped: int = 0
    elapsed_s: float = 0.0  # wall-clock seconds of this run up to the checkpoint, over every process (budgets)
    # running sums of the epoch in progress: loss, correct, samples (for the epoch's training error)
    epoch_sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Run:
    """What fit() and train_one_epoch() share: the pieces of one run, built by set_up()."""

    cfg: Config
    store: Any  # a Store, or any object with its interface (reproduce's views)
    ctx: DistContext
    device: torch.device  # where batches, augmentation and the loss live (--towers: the first device)
    model: nn.Module  # the weights (grouped convs, or the two towers)
    net: nn.Module  # what a step calls: the model, wrapped in DDP and torch.compile when asked
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    stats: ColourStats
    autocast: contextlib.AbstractContextManager
    train_loader: BatchLoader
    val_loader: BatchLoader | None
    checkpoints: CheckpointManager
    log: RunLog
    progress: bool
    state: RunState = field(default_factory=RunState)
    stop: StopFlag = field(default_factory=StopFlag)
    saved_step: int | None = None  # global step of the newest checkpoint of this run, if any
    resumed_step: int | None = None
    failed_saves: int = 0  # in a row
    saved_this_process: bool = False
    # called with (run, record) after each epoch, before its checkpoint (reproduce's early stops)
    after_epoch: list[Callable[[Run, dict[str, Any]], None]] = field(default_factory=list)
    epoch_times: list[float] = field(default_factory=list)  # seconds of each epoch this process ran (budgets)
    notes: list[str] = field(default_factory=list)  # lines to print once the log is open (the auto settings)
    started: float = field(default_factory=time.perf_counter)  # when this process began the run (budgets)
    elapsed_at_start: float = 0.0  # the run's elapsed_s when this process took it over


def set_up(cfg: Config, store: Any, run_dir: Path, ctx: DistContext, progress: bool = True,
           towers: list[torch.device] | None = None, saved: dict[str, Any] | None = None) -> Run:
    """Model, optimizer, schedule, loaders and logs of a run; nothing is written yet. `saved`: the train section
    of the config of the run being resumed, whose choices for `auto` settings are kept."""
    device = towers[0] if towers else ctx.device
    notes = settle_auto(cfg, device, saved=saved)
    set_up_cpu(cfg)
    if device.type == "cpu" and notes:
        notes[0] += f", {torch.get_num_threads()} threads"
    torch.manual_seed(cfg.train.seed)  # the initial weights
    grouped = AlexNet(cfg.model, cfg.data.crop)
    model = TwoTowerAlexNet.from_grouped(grouped, towers) if towers else grouped.to(device)
    if use_channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    net = model
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if cfg.train.compile:
        net = torch.compile(net)
    scale = lr_scale(cfg)
    stats = ColourStats.build(torch.from_numpy(store.mean), torch.from_numpy(store.pca_eigenvectors),
                              torch.from_numpy(store.pca_eigenvalues), cfg.data.normalize, device)
    train_loader, val_loader = _loaders(cfg, store, ctx, device)
    return Run(cfg, store, ctx, device, model, net, build_optimizer(model, cfg.optim, scale),
               Schedule(cfg.optim, cfg.optim.lr * scale, cfg.train.epochs), stats, precision_context(cfg, device),
               train_loader, val_loader, CheckpointManager(run_dir, cfg.train.keep_last), RunLog(run_dir, ctx.is_main),
               progress and ctx.is_main and sys.stderr.isatty(), notes=notes)


def fit(run: Run, resume: str | None) -> int:
    """Train to the end (or a stop); returns the exit status."""
    cfg, log = run.cfg, run.log
    if resume:
        _resume(run, resume)
    st = run.state  # after _resume, which replaces it
    run.elapsed_at_start = st.elapsed_s
    if cfg.train.budget_s and run.resumed_step is None:  # before config.yaml is written: it holds the count
        n_val = run.val_loader.n if run.val_loader is not None else 0
        run.notes.append(plan_budget(cfg, run.model, run.store, run.device, run.stats,
                                     run.train_loader.steps_per_epoch(), n_val, run.started))
        run.schedule.epochs = cfg.train.epochs
    log.open(cfg, None if run.resumed_step is None else (st.epoch, st.global_step))
    for line in run.notes:
        log.say(line)
    note = large_batch_note(cfg, lr_scale(cfg))
    if note:
        log.say(note)
    run.stop.install()
    try:
        while st.epoch < cfg.train.epochs and not run.schedule.should_stop:
            epoch, start = st.epoch, time.perf_counter()
            # a store truncated or changed under the run is an error, not garbage batches (the checksum
            # reads about 4 MiB, so once per epoch costs nothing)
            run.store.verify()
            outcome = train_one_epoch(run, epoch)
            if outcome != "done":  # a signal or max_steps, at a step boundary: save where we are
                saved = save(run)
                return _stopped_by_signal(run, saved) if outcome == "signal" else 0
            record = _epoch_record(run, epoch, time.perf_counter() - start)
            val = validation_pass(run)
            if val is not None:
                record.update({f"val_{k}": v for k, v in val.items()})
            st.elapsed_s = run.elapsed_at_start + time.perf_counter() - run.started
            budget_note = ""
            if cfg.train.budget_s:
                record["elapsed_s"] = st.elapsed_s
                run.epoch_times.append(time.perf_counter() - start)
                budget_note = replan_budget(cfg, run.epoch_times, st.elapsed_s, epoch + 1, run.device)
                run.schedule.epochs = cfg.train.epochs
                if budget_note:
                    log.save_config(cfg)
            # the schedule follows the validation error, or the training error when there is no val split
            error = val["top1_error"] if val is not None else record["train_top1_error"]
            is_best = val is None or error < st.best_error
            st.best_error = min(st.best_error, error) if val is not None else st.best_error
            record["lr_dropped"] = run.schedule.step(epoch, error)
            st.epoch, st.step_in_epoch, st.epoch_sums = epoch + 1, 0, [0.0, 0.0, 0.0]
            log.record(record)
            log.kernels(run.model, cfg.model.towers, st.global_step)
            log.say(epoch_line(record, cfg.train.epochs) + (f"\n{budget_note}" if budget_note else ""))
            for hook in run.after_epoch:
                hook(run, record)
            saved = save(run, is_best=is_best)
            log.plot_curves()
            if agreed_stop(run.stop, run.ctx, at_sync_point=True):
                return _stopped_by_signal(run, saved)
        if run.schedule.history or st.epoch:
            log.hparams(cfg, st.best_error, st.epoch)
    finally:
        run.stop.uninstall()
        log.close()
    return 0


def train_one_epoch(run: Run, epoch: int) -> str:
    """Run the rest of `epoch`; 'done', or 'signal' / 'max_steps' when stopped at a step boundary."""
    t, st = run.cfg.train, run.state
    steps = run.train_loader.steps_per_epoch()
    run.net.train()
    # sums stay on the device: the host waits for it only at log steps (and on the CPU, where waiting is free)
    meter = EpochMeter(st.epoch_sums, run.device, lambda: _kept_note(run))
    bar = _progress_bar(run, epoch, steps)
    try:
        for batch in run.train_loader.train_epoch(t.seed, epoch, st.step_in_epoch):
            lr = run.schedule.lr_at(epoch + batch.step / steps)
            loss, logits, bad = train_step(run, batch, epoch, lr)
            st.step_in_epoch, st.global_step = batch.step + 1, st.global_step + 1
            if bad is None:  # a non-finite step skipped (on_nonfinite=skip)
                continue
            meter.add(loss, logits, batch.labels, bad, st.global_step)
            at_log = st.global_step % t.log_every == 0
            at_save = bool(t.checkpoint_every) and st.global_step % t.checkpoint_every == 0
            if at_log or at_save:  # never log or save past an undetected bad step (GPU: checked lazily)
                meter.raise_if_bad()
            if at_log:
                mean_loss, ips = meter.interval(run.cfg.optim.batch_size)
                run.log.record({"kind": "train", "epoch": epoch, "step": st.global_step, "loss": mean_loss,
                                "lr": lr, "images_per_s": ips, "time": time.time()})
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.3f}", img_s=f"{ips:.0f}", lr=f"{lr:.2g}")
            if bar is not None:
                bar.update(1)
            reason = _pause_reason(run, at_log)
            if reason or (at_save and batch.step + 1 < steps):
                meter.raise_if_bad()
                st.epoch_sums = meter.totals(run.ctx)
                if reason:
                    return reason  # the caller saves next
                save(run)
    finally:
        if bar is not None:
            bar.close()
    meter.raise_if_bad()
    st.epoch_sums = meter.totals(run.ctx)
    return "done"


def train_step(run: Run, batch: Batch, epoch: int, lr: float) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """One SGD step on one batch: (loss, logits, bad), where `bad` is a device flag for a non-finite loss or
    gradient (checked lazily on the GPU), or None when the step was skipped as non-finite."""
    cfg, t, st = run.cfg, run.cfg.train, run.state
    set_lr(run.optimizer, lr)
    torch.manual_seed(step_seed(t.seed, epoch, batch.step, run.ctx.rank))  # dropout: a function of the step
    x = augment_train(batch.images, batch.index, cfg.data, run.stats, t.seed, epoch)
    if not use_channels_last(cfg, run.device):
        x = x.contiguous()
    with run.autocast:
        logits = run.net(x)
    loss = F.cross_entropy(logits.float(), batch.labels, label_smoothing=cfg.optim.label_smoothing)
    if faults.nan_at_step(st.global_step + 1):  # steps counted from 1, as in metrics.jsonl
        loss = loss * math.nan
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.get_total_norm([p.grad for p in run.model.parameters() if p.grad is not None])
    bad = ~(torch.isfinite(loss) & torch.isfinite(gnorm))
    # the CPU checks at once (no device to wait for); skipping needs the answer before the update
    if (run.device.type == "cpu" or t.on_nonfinite == "skip") and bool(bad):
        if t.on_nonfinite != "skip":
            raise UserError(f"the loss or gradient became non-finite at step {st.global_step + 1} (epoch "
                            f"{epoch + 1}): lower the learning rate or set on_nonfinite=skip; {_kept_note(run)}")
        st.nonfinite_in_row += 1
        st.nonfinite_skipped += 1
        if st.nonfinite_in_row >= t.max_nonfinite:
            raise UserError(f"{st.nonfinite_in_row} non-finite steps in a row up to step {st.global_step + 1}: "
                            f"lower the learning rate; {_kept_note(run)}")
        return loss, logits, None
    st.nonfinite_in_row = 0
    run.optimizer.step()
    return loss, logits, bad


def validation_pass(run: Run) -> dict[str, float] | None:
    """Errors on the validation split (None without one): the end of each epoch."""
    if run.val_loader is None:
        return None
    return evaluate([run.net], run.val_loader, run.cfg.data, [run.stats], run.cfg.train.eval_ten_crop,
                    run.autocast, progress=run.progress)


def save(run: Run, is_best: bool = False) -> bool:
    """Checkpoint the run (rank 0); False when the write failed (the previous checkpoint is then intact)."""
    if not run.ctx.is_main:
        return True
    st = run.state
    try:
        if not run.saved_this_process:
            _tidy_checkpoints(run)
        run.checkpoints.save(state_dict(run), st.global_step, is_best)
    except OSError as exc:  # disk full, no permission: keep training, the previous checkpoint is intact
        run.failed_saves += 1
        why = exc.strerror or str(exc)
        kept = "no earlier checkpoint" if run.saved_step is None else f"the one of step {run.saved_step} is kept"
        if run.failed_saves >= MAX_FAILED_SAVES:
            raise UserError(f"{run.failed_saves} checkpoint saves in a row failed ({why}) in "
                            f"{run.checkpoints.dir}: free space or fix permissions, then resume with "
                            f"--resume auto; {kept}") from None
        print(f"alexnet: warning: checkpoint of step {st.global_step} not saved ({why}); {kept}; "
              f"training goes on (stops after {MAX_FAILED_SAVES} failures in a row)", file=sys.stderr)
        return False
    run.failed_saves, run.saved_step, run.saved_this_process = 0, st.global_step, True
    return True


def state_dict(run: Run) -> dict[str, Any]:
    s = run.store
    return {
        "config": run.cfg.to_dict(),
        "model": run.model.state_dict(),
        "optimizer": grouped_optimizer_state(run.model, run.optimizer),  # towers: as if grouped
        "schedule": run.schedule.state_dict(),
        "run": run.state.to_dict(),
        "classes": list(s.classes),
        "class_names": list(s.class_names),
        "mean": torch.from_numpy(s.mean.copy()),
        "pca_eigenvalues": torch.from_numpy(s.pca_eigenvalues.copy()),
        "pca_eigenvectors": torch.from_numpy(s.pca_eigenvectors.copy()),
        "world_size": run.ctx.world_size,
    }


def load_state_dict(run: Run, ckpt: dict[str, Any]) -> None:
    saved_preset = ckpt["config"].get("preset")
    if saved_preset != run.cfg.preset:
        raise UserError(f"the checkpoint is of preset '{saved_preset}', this run is '{run.cfg.preset}': "
                        "resume with the same preset or start a new --out")
    require_same_classes(list(ckpt.get("classes", [])), list(run.store.classes))
    load_weights(run, ckpt)
    run.schedule.load_state_dict(ckpt["schedule"])
    run.state = RunState(**ckpt["run"])
    if run.cfg.train.budget_s:  # the epoch count the run had chosen for its budget, with the time it has spent
        saved_epochs = int(ckpt["config"].get("train", {}).get("epochs", run.cfg.train.epochs))
        run.cfg.train.epochs = run.schedule.epochs = saved_epochs


def load_weights(run: Run, ckpt: dict[str, Any]) -> None:
    """The checkpoint's weights and velocities (towers: split from their grouped form)."""
    try:
        run.model.load_state_dict(ckpt["model"])
    except RuntimeError:
        raise UserError("the checkpoint's weights do not fit this model (different config): resume with "
                        "the run's own config.yaml") from None
    load_grouped_optimizer_state(run.model, run.optimizer, ckpt["optimizer"])


def train(cfg: Config, data: str | Path | Store, run_dir: str | Path, resume: str | None = None,
          progress: bool = True, towers: list[torch.device] | None = None) -> int:
    """The `alexnet train` entry point: processes, run directory, the store, then fit.

    `data`: a store (or its folder); commands/train.py prepares raw images into one first. `towers`: two
    devices for the paper's model parallelism (one process). Under torchrun a restarted worker
    (TORCHELASTIC_RESTART_COUNT > 0) of the job that started this run resumes it (--resume auto).
    """
    started = time.perf_counter()  # a budget counts from here
    run_dir = Path(run_dir)
    faults.check_environment()
    ctx = init_distributed(cfg.train.device)
    try:
        if towers and ctx.distributed:
            raise UserError("--towers places one model on two devices in one process: drop --nproc/torchrun, "
                            "or drop --towers for data parallelism")
        resume = resume or elastic_resume(run_dir)
        if ctx.is_main:
            prepare_run_dir(run_dir, resume)
            mark_elastic_job(run_dir)
        barrier()  # no rank goes on before rank 0 has accepted the run directory
        store = data if isinstance(data, Store) else open_store(data)
        store.verify()
        adapt_to_store(cfg, store)
        saved = saved_train_settings(run_dir, resume)
        run = set_up(cfg, store, run_dir, ctx, progress, towers, saved)
        run.started = started
        status = fit(run, resume)
        # every rank done before any tears down: gloo aborts a process whose peer closed its connections
        # while it was still finishing ("terminate called without an active exception")
        barrier()
        return status
    finally:
        shutdown()


def adapt_to_store(cfg: Config, store: Any) -> None:
    """Take the class count and image size from the store (a 10-class folder trains a 10-way net)."""
    n = len(store.classes)
    if n < 2:
        raise UserError(f"the data has {n} class: training needs at least two")
    cfg.model.num_classes = n
    if store.size != cfg.data.image_size:
        if store.size < cfg.data.crop:
            raise UserError(f"the store holds {store.size}x{store.size} images, smaller than the {cfg.data.crop} "
                            "crop: prepare it with a larger --size or set data.crop")
        cfg.data.image_size = store.size


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """Seed of torch's generator (dropout) for one step of one rank: a pure function of its position."""
    return (((seed * 1_000_003 + epoch) * 1_000_033 + step) * 1_009 + rank) & 0x7FFF_FFFF_FFFF


# ------------------------------------------------------------------------------------------------ helpers


def _loaders(cfg: Config, store: Any, ctx: DistContext, device: torch.device) -> tuple[BatchLoader, BatchLoader | None]:
    t, batch = cfg.train, cfg.optim.batch_size
    train = store.split("train")
    train_loader = BatchLoader(train.images, train.labels, batch, device, rank=ctx.rank, world_size=ctx.world_size,
                               prefetch=t.prefetch, limit=t.limit_train, on_device=t.store_on_device,
                               decode_on_device=t.gpu_decode)
    if train_loader.steps_per_epoch() < 1:
        raise UserError(f"the training split has {train_loader.n} images, fewer than one batch of {batch}: "
                        "lower optim.batch_size")
    if not store.has_split("val"):
        return train_loader, None
    val = store.split("val")
    return train_loader, BatchLoader(val.images, val.labels, batch, device, rank=ctx.rank,
                                     world_size=ctx.world_size, prefetch=t.prefetch, limit=t.limit_val,
                                     decode_on_device=t.gpu_decode)


def _resume(run: Run, resume: str) -> None:
    if resume == "auto":
        found = run.checkpoints.newest_valid(run.device)
        if found is None:
            return  # nothing saved yet: start from the beginning
        path, ckpt = found
    else:
        path, ckpt = Path(resume), load_checkpoint(resume, run.device)
    load_state_dict(run, ckpt)
    run.resumed_step = run.saved_step = run.state.global_step
    run.log.say(f"resumed from {path} (epoch {run.state.epoch + 1}, step {run.state.global_step})")


def _tidy_checkpoints(run: Run) -> None:
    """Before this process's first save: temporary files of saves killed part-way go, and checkpoints newer
    than the one resumed from (unreadable ones, or a later point of a rewound run) are set aside."""
    run.checkpoints.remove_leftovers()
    if run.resumed_step is not None:
        for path in run.checkpoints.set_aside_newer_than(run.resumed_step):
            print(f"alexnet: warning: {path.name[:-len('.unused')]} is newer than the checkpoint resumed from; "
                  f"renamed to {path.name}", file=sys.stderr)


def _epoch_record(run: Run, epoch: int, seconds: float) -> dict[str, Any]:
    loss_sum, correct, seen = run.state.epoch_sums
    steps = run.train_loader.steps_per_epoch()
    last_lr = run.schedule.lr_at(epoch + (steps - 1) / steps)  # the epoch's last step's (warm-up, linear)
    return {"kind": "epoch", "epoch": epoch, "step": run.state.global_step, "train_loss": loss_sum / max(seen, 1),
            "train_top1_error": 100 * (1 - correct / max(seen, 1)), "lr": last_lr, "epoch_time": seconds}


def _pause_reason(run: Run, at_log: bool) -> str:
    """'signal' (agreed by every rank), 'max_steps', or '' to go on."""
    if agreed_stop(run.stop, run.ctx, at_sync_point=at_log):
        return "signal"
    if run.cfg.train.max_steps and run.state.global_step >= run.cfg.train.max_steps:
        return "max_steps"
    return ""


def _stopped_by_signal(run: Run, saved: bool) -> int:
    name = "SIGINT" if run.stop.signum == signal.SIGINT else "SIGTERM"
    step = run.state.global_step
    if saved:
        run.log.say(f"{name}: checkpoint saved at step {step}; resume with --resume auto")
    else:
        run.log.say(f"{name}: the checkpoint of step {step} could not be written; --resume auto continues "
                    f"from step {run.saved_step if run.saved_step is not None else 0}")
    return EXIT_SIGINT if run.stop.signum == signal.SIGINT else EXIT_SIGTERM


def _kept_note(run: Run) -> str:
    if run.saved_step is None:
        return "no checkpoint was written"
    return f"the last good checkpoint (step {run.saved_step}) is kept"


def _progress_bar(run: Run, epoch: int, steps: int) -> Any:
    if not run.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=steps, initial=run.state.step_in_epoch, desc=f"epoch {epoch + 1}/{run.cfg.train.epochs}",
                unit="step", dynamic_ncols=True, leave=False)
