"""Training: train_one_epoch, fit. The whole core path of a run, readable in one sitting.

Per step: uint8 batch from the loader -> augmentation on the device -> model -> cross-entropy -> the
paper's SGD step. Per epoch: validation, the schedule, a checkpoint, metrics. All randomness is a pure
function of (seed, epoch, step or sample index): the data order and augmentation by construction, dropout
by seeding torch's generator at every step. So a run resumed from any checkpoint, mid-epoch included,
ends with the same weights as one that never stopped.

Faults: SIGTERM/SIGINT only set a flag; at the next step boundary the run saves a checkpoint and exits with
143/130 (all ranks agree). A SIGKILL at any moment loses at most the steps since the last checkpoint
(train.checkpoint_every), since checkpoints are written atomically and --resume auto falls back past an
unreadable one. A non-finite loss or gradient stops the run with one line naming the step (or, with
on_nonfinite=skip, skips up to max_nonfinite steps in a row) and never saves the damaged weights. A failed
save (disk full, no permission) warns and training goes on; MAX_FAILED_SAVES in a row stop it. The store is
checked against its manifest's checksum at the start and before every epoch. Test hooks: alexnet/faults.py.

Commands (one GPU, N GPUs, several machines) are in the README; `alexnet train --help` lists the flags.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alexnet import faults
from alexnet.checkpoint import CheckpointManager, atomic_write_text, lock_run_dir
from alexnet.config import Config
from alexnet.cpus import compute_threads
from alexnet.data.augment import ColourStats, augment_train
from alexnet.data.loader import BatchLoader
from alexnet.errors import UserError
from alexnet.evaluate import evaluate
from alexnet.hostmemory import keep_freed_memory
from alexnet.model import AlexNet
from alexnet.optim import Schedule, build_optimizer, set_lr
from alexnet.parallel import (
    DistContext,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    elastic_resume,
    init_distributed,
    mark_elastic_job,
    shutdown,
)
from alexnet.towers import TwoTowerAlexNet, grouped_optimizer_state, load_grouped_optimizer_state

EXIT_SIGTERM, EXIT_SIGINT = 143, 130
MAX_FAILED_SAVES = 3  # checkpoint saves failing in a row (disk full, no permission) before the run stops


class StopFlag:
    """Set by SIGTERM/SIGINT. The handler only records the signal; the loop acts at a step boundary.

    A second Ctrl-C (SIGINT) stops at once, without the checkpoint: for someone who cannot wait for the
    step to finish. The atomic save means even that leaves no broken file.
    """

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """Seed of torch's generator (dropout) for one step of one rank: a pure function of its position."""
    return (((seed * 1_000_003 + epoch) * 1_000_033 + step) * 1_009 + rank) & 0x7FFF_FFFF_FFFF


@dataclass
class RunState:
    """Everything a checkpoint must hold to continue exactly."""

    epoch: int = 0  # the epoch in progress
    step_in_epoch: int = 0  # the next step to run within it
    global_step: int = 0
    best_error: float = math.inf
    nonfinite_in_row: int = 0
    nonfinite_skipped: int = 0
    # running sums of the epoch in progress: loss, correct, samples (for the epoch's training error)
    epoch_sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def precision_context(cfg: Config, device: torch.device) -> contextlib.AbstractContextManager:
    precision = cfg.train.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_scale(cfg: Config) -> float:
    """Large-batch mode (optim.lr_scaling=linear): the paper's rates are for batches of 128, and a batch k
    times larger takes k times the rate (Goyal et al. 2017), best reached by a linear warm-up."""
    return cfg.optim.batch_size / 128 if cfg.optim.lr_scaling == "linear" else 1.0


def large_batch_note(cfg: Config, scale: float) -> str:
    """The log line saying how the rates were scaled ('' when they were not)."""
    if cfg.optim.lr_scaling != "linear":
        return ""
    o = cfg.optim
    warm = (f"linear warm-up over {o.warmup_epochs:g} epochs" if o.warmup_epochs > 0 else
            "no warm-up (optim.warmup_epochs=0; large scaled rates can diverge early: consider 5)")
    return f"large-batch mode: lr {o.lr:g} x {o.batch_size}/128 = {o.lr * scale:g}, {warm}"


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    # auto: on for CUDA and the CPU alike; on this project's 2-core CPU benchmark channels_last made the paper
    # preset's training step 1.15x faster than NCHW (docs/PERFORMANCE.md).
    return cfg.train.channels_last in ("auto", "on")


class Run:
    """One training run in RUN_DIR: model, optimizer, schedule, data, logs, checkpoints."""

    def __init__(self, cfg: Config, store: Any, run_dir: Path, ctx: DistContext, progress: bool = True,
                 towers: list[torch.device] | None = None) -> None:
        self.cfg, self.store, self.run_dir, self.ctx = cfg, store, run_dir, ctx
        # --towers: the paper's two devices; batches, augmentation and the loss live on the first
        self.device = towers[0] if towers else ctx.device
        t = cfg.train
        threads = compute_threads(t.threads)
        if threads:
            torch.set_num_threads(threads)
        if t.keep_freed_memory:
            keep_freed_memory()
        torch.manual_seed(cfg.train.seed)
        grouped = AlexNet(cfg.model, cfg.data.crop)
        self.model: nn.Module = TwoTowerAlexNet.from_grouped(grouped, towers) if towers else grouped.to(self.device)
        if use_channels_last(cfg, self.device):
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net: nn.Module = self.model
        if ctx.distributed:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
        if t.compile:
            self.net = torch.compile(self.net)
        self.lr_scale = lr_scale(cfg)
        self.optimizer = build_optimizer(self.model, cfg.optim, self.lr_scale)
        self.schedule = Schedule(cfg.optim, cfg.optim.lr * self.lr_scale)
        self.state = RunState()
        self.autocast = precision_context(cfg, self.device)
        self.stats = ColourStats.build(torch.from_numpy(store.mean), torch.from_numpy(store.pca_eigenvectors),
                                       torch.from_numpy(store.pca_eigenvalues), cfg.data.normalize, self.device)
        train = store.split("train")
        self.train_loader = BatchLoader(train.images, train.labels, cfg.optim.batch_size, self.device,
                                        rank=ctx.rank, world_size=ctx.world_size, prefetch=t.prefetch,
                                        limit=t.limit_train, on_device=t.store_on_device)
        if self.train_loader.steps_per_epoch() < 1:
            raise UserError(f"the training split has {self.train_loader.n} images, fewer than one batch of "
                            f"{cfg.optim.batch_size}: lower optim.batch_size")
        val_split = store.split("val") if store.has_split("val") else None
        self.val_loader = None
        if val_split is not None:
            self.val_loader = BatchLoader(val_split.images, val_split.labels, cfg.optim.batch_size, self.device,
                                          rank=ctx.rank, world_size=ctx.world_size, prefetch=t.prefetch,
                                          limit=t.limit_val)
        self.checkpoints = CheckpointManager(run_dir, t.keep_last)
        self.failed_saves = 0  # in a row
        self.saved_step: int | None = None  # global step of the newest checkpoint of this run, if any
        self.resumed_step: int | None = None
        self.saved_this_process = False
        self.progress = progress and ctx.is_main and sys.stderr.isatty()
        self.stop = StopFlag()
        self.writer = None
        self.metrics_file = None

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        s = self.store
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": grouped_optimizer_state(self.model, self.optimizer),  # towers: as if grouped
            "schedule": self.schedule.state_dict(),
            "run": self.state.to_dict(),
            "classes": list(s.classes),
            "class_names": list(s.class_names),
            "mean": torch.from_numpy(s.mean.copy()),
            "pca_eigenvalues": torch.from_numpy(s.pca_eigenvalues.copy()),
            "pca_eigenvectors": torch.from_numpy(s.pca_eigenvectors.copy()),
            "world_size": self.ctx.world_size,
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        saved_preset = ckpt["config"].get("preset")
        if saved_preset != self.cfg.preset:
            raise UserError(f"the checkpoint is of preset '{saved_preset}', this run is '{self.cfg.preset}': "
                            "resume with the same preset or start a new --out")
        require_same_classes(list(ckpt.get("classes", [])), list(self.store.classes))
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError:
            raise UserError("the checkpoint's weights do not fit this model (different config): resume with "
                            "the run's own config.yaml") from None
        load_grouped_optimizer_state(self.model, self.optimizer, ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["schedule"])
        self.state = RunState(**ckpt["run"])

    def save(self, is_best: bool = False) -> bool:
        """Checkpoint the run; False when the write failed (the previous checkpoint is then intact)."""
        if not self.ctx.is_main:
            return True
        try:
            if not self.saved_this_process:
                self._tidy_checkpoints()
            self.checkpoints.save(self.state_dict(), self.state.global_step, is_best)
        except OSError as exc:  # disk full, no permission: keep training, the previous checkpoint is intact
            self.failed_saves += 1
            why = exc.strerror or str(exc)
            kept = "no earlier checkpoint" if self.saved_step is None else f"the one of step {self.saved_step} is kept"
            if self.failed_saves >= MAX_FAILED_SAVES:
                raise UserError(f"{self.failed_saves} checkpoint saves in a row failed ({why}) in "
                                f"{self.checkpoints.dir}: free space or fix permissions, then resume with "
                                f"--resume auto; {kept}") from None
            print(f"alexnet: warning: checkpoint of step {self.state.global_step} not saved ({why}); {kept}; "
                  f"training goes on (stops after {MAX_FAILED_SAVES} failures in a row)", file=sys.stderr)
            return False
        self.failed_saves = 0
        self.saved_step = self.state.global_step
        self.saved_this_process = True
        return True

    def _tidy_checkpoints(self) -> None:
        """Before this process's first save: temporary files of saves killed part-way go, and checkpoints
        newer than the one resumed from (unreadable ones, or a later point of a rewound run) are set aside."""
        self.checkpoints.remove_leftovers()
        if self.resumed_step is not None:
            for path in self.checkpoints.set_aside_newer_than(self.resumed_step):
                print(f"alexnet: warning: {path.name[:-len('.unused')]} is newer than the checkpoint resumed from; "
                      f"renamed to {path.name}", file=sys.stderr)

    # ----------------------------------------------------------------------------------------- logging
    def log(self, record: dict[str, Any]) -> None:
        if not self.ctx.is_main:
            return
        try:
            if self.metrics_file is None:
                self.metrics_file = open(self.run_dir / "metrics.jsonl", "a")
            self.metrics_file.write(json.dumps(record) + "\n")
            self.metrics_file.flush()
        except OSError as exc:  # a full disk loses a metrics line, not the run (checkpoints guard the weights)
            self._log_failed("metrics.jsonl", exc)
        if self.writer is not None:
            prefix = record["kind"]
            try:
                for key, value in record.items():
                    if isinstance(value, (int, float)) and key not in ("epoch", "step", "kind"):
                        self.writer.add_scalar(f"{prefix}/{key}", value, record.get("step", 0))
            except OSError as exc:
                self._log_failed("tensorboard events", exc)
                self.writer = None

    def log_figures(self) -> None:
        """conv1's kernels as an image in TensorBoard after each epoch: the paper's Figure 3 as it forms."""
        if self.writer is None:
            return
        first = self.model.features[0]
        # the towers model holds conv1 as one half per device; its grouped weight is the two halves stacked
        weight = first.weight if hasattr(first, "weight") else torch.cat([half.weight.cpu() for half in first])
        if weight.dim() != 4 or weight.shape[1] != 3:
            return  # conv1 of a locally connected or non-RGB net: nothing to draw
        from alexnet.plots import kernel_grid

        grid, _ = kernel_grid(weight.detach().float().cpu().numpy(), self.cfg.model.towers)
        try:
            self.writer.add_image("conv1/kernels", grid, self.state.global_step, dataformats="HWC")
        except OSError as exc:
            self._log_failed("tensorboard events", exc)

    def log_hparams(self) -> None:
        """The run's config as TensorBoard hparams, with the final metrics, so that runs compare in its table."""
        if self.writer is None or self.schedule.history == [] and self.state.epoch == 0:
            return
        flat = {f"{section}.{key}": (value if isinstance(value, (int, float, str, bool)) else str(value))
                for section, values in self.cfg.to_dict().items() if isinstance(values, dict)
                for key, value in values.items()}
        final = {"hparam/best_val_top1_error": self.state.best_error if math.isfinite(self.state.best_error)
                 else 100.0, "hparam/epochs": float(self.state.epoch)}
        try:
            self.writer.add_hparams(flat, final, run_name="hparams")
        except OSError as exc:
            self._log_failed("tensorboard hparams", exc)

    def _log_failed(self, what: str, exc: OSError) -> None:
        if not getattr(self, "_log_warned", False):
            print(f"alexnet: warning: {what} not written ({exc.strerror or exc}); training goes on", file=sys.stderr)
            self._log_warned = True

    def open_logs(self) -> None:
        if not self.ctx.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a killed process logged past the checkpoint resumed from
            purge = None if self.resumed_step is None else self.resumed_step + 1
            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=purge)
        except ImportError:  # tensorboard is a dependency; a broken install only loses the event files
            self.writer = None

    def close_logs(self) -> None:
        try:
            if self.metrics_file is not None:
                self.metrics_file.close()
            if self.writer is not None:
                self.writer.close()
        except OSError as exc:
            self._log_failed("logs", exc)
        self.metrics_file = None
        self.writer = None

    # ----------------------------------------------------------------------------------------- training
    def train_one_epoch(self, epoch: int) -> str:
        """Run the rest of `epoch`; returns 'done', or 'signal' / 'max_steps' when stopped at a boundary."""
        cfg, t, st = self.cfg, self.cfg.train, self.state
        loader, device = self.train_loader, self.device
        steps = loader.steps_per_epoch()
        self.net.train()
        sums = torch.tensor(st.epoch_sums, dtype=torch.float64, device=device)
        sums_at_start = sums.clone()
        interval_loss = torch.zeros((), dtype=torch.float64, device=device)
        interval_start, interval_steps = time.perf_counter(), 0
        check_every_step = device.type == "cpu" or t.on_nonfinite == "skip"
        first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, initial=st.step_in_epoch, desc=f"epoch {epoch + 1}/{t.epochs}",
                       unit="step", dynamic_ncols=True, leave=False)
        try:
            for batch in loader.train_epoch(t.seed, epoch, st.step_in_epoch):
                lr = self.schedule.lr_at(epoch + batch.step / steps)
                set_lr(self.optimizer, lr)
                torch.manual_seed(step_seed(t.seed, epoch, batch.step, self.ctx.rank))
                x = augment_train(batch.images, batch.index, cfg.data, self.stats, t.seed, epoch)
                if not use_channels_last(cfg, device):
                    x = x.contiguous()
                with self.autocast:
                    logits = self.net(x)
                loss = F.cross_entropy(logits.float(), batch.labels)
                if faults.nan_at_step(st.global_step + 1):  # steps counted from 1, as in metrics.jsonl
                    loss = loss * math.nan
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grads = [p.grad for p in self.model.parameters() if p.grad is not None]
                gnorm = torch.nn.utils.get_total_norm(grads)
                bad = ~(torch.isfinite(loss) & torch.isfinite(gnorm))
                if check_every_step and bool(bad):
                    if t.on_nonfinite == "skip":
                        st.nonfinite_in_row += 1
                        st.nonfinite_skipped += 1
                        if st.nonfinite_in_row >= t.max_nonfinite:
                            raise UserError(f"{st.nonfinite_in_row} non-finite steps in a row up to step "
                                            f"{st.global_step + 1}: lower the learning rate; {self._kept()}")
                        st.step_in_epoch = batch.step + 1
                        st.global_step += 1
                        continue
                    raise UserError(f"the loss or gradient became non-finite at step {st.global_step + 1} "
                                    f"(epoch {epoch + 1}): lower the learning rate or set on_nonfinite=skip; "
                                    f"{self._kept()}")
                st.nonfinite_in_row = 0
                first_bad = torch.where(bad & (first_bad < 0), st.global_step + 1, first_bad)
                self.optimizer.step()

                n = batch.labels.numel()
                correct = (logits.detach().argmax(1) == batch.labels).sum()
                # torch.full fills on the device; torch.tensor(n, device=...) would copy from the host and so wait
                # for the GPU every step
                sums += torch.stack([loss.detach().double() * n, correct.double(),
                                     torch.full((), float(n), dtype=torch.float64, device=device)])
                interval_loss += loss.detach().double()
                interval_steps += 1
                st.step_in_epoch = batch.step + 1
                st.global_step += 1

                at_log = st.global_step % t.log_every == 0
                at_save = bool(t.checkpoint_every) and st.global_step % t.checkpoint_every == 0
                if at_log or at_save:  # never log or save past an undetected bad step (GPU: checked lazily)
                    self._raise_if_bad(first_bad)
                if at_log:
                    elapsed = time.perf_counter() - interval_start
                    mean_loss = float(interval_loss) / max(interval_steps, 1)
                    ips = interval_steps * cfg.optim.batch_size / max(elapsed, 1e-9)
                    self.log({"kind": "train", "epoch": epoch, "step": st.global_step, "loss": mean_loss,
                              "lr": lr, "images_per_s": ips, "time": time.time()})
                    if bar is not None:
                        bar.set_postfix(loss=f"{mean_loss:.3f}", img_s=f"{ips:.0f}", lr=f"{lr:.2g}")
                    interval_loss.zero_()
                    interval_start, interval_steps = time.perf_counter(), 0
                if bar is not None:
                    bar.update(1)

                reason = self._should_pause()
                if reason:
                    self._raise_if_bad(first_bad)  # the caller saves next
                    st.epoch_sums = self._all_ranks_sums(sums, sums_at_start)
                    return reason
                if at_save and batch.step + 1 < steps:
                    st.epoch_sums = self._all_ranks_sums(sums, sums_at_start)
                    self.save()
        finally:
            if bar is not None:
                bar.close()
        self._raise_if_bad(first_bad)
        st.epoch_sums = self._all_ranks_sums(sums, sums_at_start)
        return "done"

    def _all_ranks_sums(self, sums: torch.Tensor, at_start: torch.Tensor) -> list[float]:
        """The epoch's loss/correct/sample sums over all ranks (each rank adds only its own share of a batch).

        Called at the same steps on every rank; the sums at the start already cover all ranks."""
        if not self.ctx.distributed:
            return sums.tolist()
        return (at_start + all_reduce_sum(sums - at_start)).tolist()

    def _raise_if_bad(self, first_bad: torch.Tensor) -> None:
        step = int(first_bad)
        if step >= 0:
            raise UserError(f"the loss or gradient became non-finite at step {step}: lower the learning rate "
                            f"or set on_nonfinite=skip; {self._kept()}")

    def _kept(self) -> str:
        if self.saved_step is None:
            return "no checkpoint was written"
        return f"the last good checkpoint (step {self.saved_step}) is kept"

    def _should_pause(self) -> str:
        """A signal on any rank, or the step limit: every rank must agree, so the flag is max-reduced."""
        signum = self.stop.signum  # one process: a Python int, no device sync
        if self.ctx.distributed:
            flag = torch.tensor([signum], dtype=torch.int64, device=self.device)
            all_reduce_max(flag)
            signum = int(flag[0])
        if signum:
            self.stop.signum = self.stop.signum or signum
            return "signal"
        if self.cfg.train.max_steps and self.state.global_step >= self.cfg.train.max_steps:
            return "max_steps"
        return ""

    def fit(self, resume: str | None) -> int:
        """Train to the end (or a stop); returns the exit status."""
        cfg = self.cfg
        if resume:
            self._resume(resume)
        st = self.state  # after _resume, which replaces it
        if self.ctx.is_main:
            self._take_run_dir()
        self.open_logs()
        note = large_batch_note(cfg, self.lr_scale)
        if note:
            self.say(note)
        self.stop.install()
        try:
            while st.epoch < cfg.train.epochs and not self.schedule.should_stop:
                epoch = st.epoch
                start = time.perf_counter()
                # a store truncated or changed under the run is an error, not garbage batches (the checksum
                # reads about 4 MiB, so once per epoch costs nothing)
                self.store.verify()
                outcome = self.train_one_epoch(epoch)
                if outcome != "done":
                    saved = self.save()
                    if outcome == "signal":
                        return self._stopped_by_signal(saved)
                    return 0
                loss_sum, correct, seen = st.epoch_sums
                record = {"kind": "epoch", "epoch": epoch, "step": st.global_step,
                          "train_loss": loss_sum / max(seen, 1), "train_top1_error": 100 * (1 - correct / max(seen, 1)),
                          "lr": self.schedule.lr, "epoch_time": time.perf_counter() - start}
                val = self.validate()
                is_best = False
                if val is not None:
                    record.update({f"val_{k}": v for k, v in val.items()})
                    is_best = val["top1_error"] < st.best_error
                    st.best_error = min(st.best_error, val["top1_error"])
                    record["lr_dropped"] = self.schedule.step(epoch, val["top1_error"])
                else:
                    record["lr_dropped"] = self.schedule.step(epoch, record["train_top1_error"])
                st.epoch, st.step_in_epoch, st.epoch_sums = epoch + 1, 0, [0.0, 0.0, 0.0]
                self.log(record)
                self.log_figures()
                self.say(_epoch_line(record, cfg.train.epochs))
                saved = self.save(is_best=is_best or val is None)
                self.plot_curves()
                if self.stop.signum:
                    return self._stopped_by_signal(saved)
            self.log_hparams()
        finally:
            self.stop.uninstall()
            self.close_logs()
            self._release_run_dir()
        return 0

    def _take_run_dir(self) -> None:
        """Create and lock RUN (one training process writes it at a time), write config.yaml, and drop the
        metrics a killed process logged past the checkpoint resumed from."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.run_lock = lock_run_dir(self.run_dir)
            atomic_write_text(_yaml_text(self.cfg), self.run_dir / "config.yaml")
            if self.resumed_step is not None:
                self._trim_metrics()
        except OSError as exc:
            self._release_run_dir()
            raise UserError(f"cannot write to {self.run_dir} ({exc.strerror or exc}): choose a writable "
                            "--out or free some space") from None
        except BaseException:
            self._release_run_dir()
            raise

    def _release_run_dir(self) -> None:
        lock, self.run_lock = getattr(self, "run_lock", None), None
        if lock is not None:
            os.close(lock)  # closing releases the lock (so does the process ending, however it ends)

    def _stopped_by_signal(self, saved: bool) -> int:
        name = "SIGINT" if self.stop.signum == signal.SIGINT else "SIGTERM"
        st = self.state
        if saved:
            self.say(f"{name}: checkpoint saved at step {st.global_step}; resume with --resume auto")
        else:
            self.say(f"{name}: the checkpoint of step {st.global_step} could not be written; --resume auto "
                     f"continues from step {self.saved_step if self.saved_step is not None else 0}")
        return EXIT_SIGINT if self.stop.signum == signal.SIGINT else EXIT_SIGTERM

    def _trim_metrics(self) -> None:
        """Drop metrics.jsonl lines logged after the checkpoint resumed from (a killed process's future, which
        the resumed run logs again) and a last line cut short by a kill, so each step appears once."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        kept, dropped = [], 0
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                if record.get("kind") == "epoch":
                    keep = record["epoch"] < self.state.epoch
                else:
                    keep = record.get("step", 0) <= self.state.global_step
            except (ValueError, KeyError, TypeError, AttributeError):
                keep = False
            if keep:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            atomic_write_text("".join(line + "\n" for line in kept), path)

    def validate(self) -> dict[str, float] | None:
        if self.val_loader is None:
            return None
        return evaluate([self.net], self.val_loader, self.cfg.data, [self.stats], self.cfg.train.eval_ten_crop,
                        self.autocast, progress=self.progress)

    def _resume(self, resume: str) -> None:
        if resume == "auto":
            found = self.checkpoints.newest_valid(self.device)
            if found is None:
                return  # nothing saved yet: start from the beginning
            path, ckpt = found
        else:
            from alexnet.checkpoint import load_checkpoint

            path, ckpt = Path(resume), load_checkpoint(resume, self.device)
        self.load_state_dict(ckpt)
        self.resumed_step = self.saved_step = self.state.global_step
        self.say(f"resumed from {path} (epoch {self.state.epoch + 1}, step {self.state.global_step})")

    def plot_curves(self) -> None:
        if not self.ctx.is_main:
            return
        try:
            from alexnet.plots import plot_curves

            plot_curves([self.run_dir], self.run_dir / "curves.png")
        except Exception as exc:  # a figure must never stop a training run
            print(f"alexnet: warning: curves.png not written ({exc})", file=sys.stderr)

    def say(self, line: str) -> None:
        if self.ctx.is_main:
            print(line, flush=True)


def require_same_classes(saved: list[str], data: list[str]) -> None:
    """A resumed run must see the classes it was trained on, in the same order: output k of the net means
    class k of the checkpoint, and training on other data would silently give it another meaning."""
    if saved == data:
        return
    first = next((i for i, (a, b) in enumerate(zip(saved, data)) if a != b), min(len(saved), len(data)))
    where = (f"class {first} is '{saved[first]}' in the checkpoint but '{data[first]}' in the data"
             if first < min(len(saved), len(data)) else "one list continues where the other ends")
    raise UserError(f"the checkpoint was trained on {len(saved)} classes, the data has {len(data)} and they differ "
                    f"({where}): resume on the run's own data, or start a new --out")


def _epoch_line(r: dict[str, Any], epochs: int) -> str:
    val = ""
    if "val_top1_error" in r:
        val = f"  val top-1 {r['val_top1_error']:.2f}%  top-5 {r['val_top5_error']:.2f}%"
    drop = "  (lr dropped)" if r.get("lr_dropped") else ""
    return (f"epoch {r['epoch'] + 1}/{epochs}  loss {r['train_loss']:.4f}  train top-1 "
            f"{r['train_top1_error']:.2f}%{val}  lr {r['lr']:.3g}  {r['epoch_time']:.1f}s{drop}")


def prepare_run_dir(run_dir: Path, resume: str | None) -> None:
    """Refuse to write over an existing run unless it is being resumed."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file: choose a directory")
    above = next((p for p in run_dir.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UserError(f"--out {run_dir} lies below {above}, which is a file: choose a directory")
    existing = run_dir.is_dir() and any((run_dir / n).exists() for n in ("config.yaml", "last.pt", "checkpoints"))
    if existing and not resume:
        raise UserError(f"{run_dir} already holds a run: continue it with --resume auto or choose another --out")


def train(cfg: Config, data: str, run_dir: str | Path, resume: str | None = None, progress: bool = True,
          towers: list[torch.device] | None = None) -> int:
    """The `alexnet train` entry point: data, run directory, processes, then Run.fit.

    `towers`: two devices for the paper's model parallelism (one process). Under torchrun a restarted
    worker (TORCHELASTIC_RESTART_COUNT > 0) of the job that started this run resumes it (--resume auto).
    """
    from alexnet.data.resolve import resolve_data

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
        # rank 0 prepares a folder into a store first; the others then find it ready
        store = None
        if ctx.is_main:
            store = resolve_data(data, run_dir.parent / "stores", cfg.data.image_size, progress=True)
        barrier()
        if store is None:
            store = resolve_data(data, run_dir.parent / "stores", cfg.data.image_size, progress=False)
        store.verify()
        adapt_to_store(cfg, store)
        run = Run(cfg, store, run_dir, ctx, progress, towers)
        status = run.fit(resume)
        # every rank done before any tears down: gloo aborts a process whose peer closed its connections
        # while it was still finishing ("terminate called without an active exception")
        barrier()
        return status
    finally:
        shutdown()


def _yaml_text(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


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
