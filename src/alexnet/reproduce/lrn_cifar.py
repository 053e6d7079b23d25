"""The paper's CIFAR-10 claim for local response normalization (section 3.3): its four-layer net, cuda-convnet's
conv-local net (preset `cifar-convnet`), reaches 11% test error with LRN and 13% without.

Each (net, seed) is an ordinary run directory under OUT, trained with --resume auto semantics: a finished run
is skipped, an interrupted one continues exactly. Two schedules:

  short  the preset as it is: the whole training split, the rates of the params file, divided by 10 twice
         near the end (model.* and optim.* overrides apply); an hour or less on a 2-core CPU.
  paper  the methodology of layer-params-conv-local-11pct.cfg: (1) train on the training split less a
         held-out 20% (cuda-convnet's batches 1-4 against batch 5) until the held-out error has not improved
         for `patience` epochs; (2) fold the held-out part in and train `fold_epochs` more epochs at the same
         rate, starting from phase 1's weights and velocities; (3) the rate / 10 for 10 epochs, / 10 again for
         10 epochs. Phases 2 and 3 are one run (milestones). Hours on a CPU, minutes on a GPU.

Every figure is the multiview (ten views) top-1 error on the validation split after the last epoch.
"""

from __future__ import annotations

import copy
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alexnet.config import Config, build_config
from alexnet.errors import UserError
from alexnet.reproduce.common import StoreView, disjoint_samples, finished_epochs, take, train_run
from alexnet.train import Run, load_weights

PRESET = "cifar-convnet"
NETS = {"lrn": {}, "no_lrn": {"model.lrn": False}}


@dataclass(frozen=True)
class PaperSchedule:
    """The params file's methodology; the epoch counts are its own ("about 300", "about 150", 10 and 10)."""

    holdout_fraction: float = 0.2  # batch 5 of CIFAR-10's five training batches
    patience: int = 10  # epochs without a better held-out error that end phase 1
    max_phase1_epochs: int = 350
    fold_epochs: int = 150
    low_rate_epochs: tuple[int, int] = (10, 10)


@dataclass
class NetResult:
    net: str
    errors: list[float] = field(default_factory=list)  # per seed, %
    seconds: list[float] = field(default_factory=list)  # training wall time per seed

    @property
    def mean(self) -> float:
        return statistics.mean(self.errors)


def net_config(net: str, seed: int, overrides: dict[str, Any]) -> Config:
    # validation after each epoch on the centre crop (a tenth of the work); the multiview figure is measured
    # once, on the last checkpoint (multiview_error)
    return build_config(PRESET, None, {**overrides, **NETS[net], "train.seed": seed,
                                       "train.eval_ten_crop": False})


def multiview_error(run_dir: Path, store: Any, progress: bool = False) -> float:
    """Top-1 error (%) of RUN/last.pt on the store's validation split over the ten views, as cuda-convnet's
    --multiview-test: softmax outputs of the 4 corner and centre crops and their mirrors averaged."""
    from alexnet.data.loader import BatchLoader
    from alexnet.evaluate import evaluate
    from alexnet.runtime import pick_device, precision_context
    from alexnet.tools.inference import load_model

    device = pick_device("auto")
    model, cfg, info = load_model(run_dir / "last.pt", device)
    val = store.split("val")
    loader = BatchLoader(val.images, val.labels, 256, device)
    result = evaluate([model], loader, cfg.data, [info.stats(cfg, device)], True, precision_context(cfg, device),
                      progress=progress)
    return result["top1_error"]


def _wall_time(run_dir: Path) -> float:
    return sum(r.get("epoch_time", 0.0) for r in finished_epochs(run_dir))


def _train(cfg: Config, store: Any, run_dir: Path, say, before: Callable[[Run], None] | None = None,
           progress: bool = False) -> list[dict[str, Any]]:
    records = finished_epochs(run_dir)
    done = records and (len(records) >= cfg.train.epochs or _schedule_stopped(run_dir))
    if done:
        say(f"skipped {run_dir.name}: finished")
        return records
    say(f"training {run_dir}")
    train_run(cfg, store, run_dir, before, progress)
    return finished_epochs(run_dir)


def _schedule_stopped(run_dir: Path) -> bool:
    """True when the run's plateau schedule ended it before its epoch cap (phase 1's stop)."""
    last = run_dir / "last.pt"
    if not last.is_file():
        return False
    from alexnet.checkpoint import load_checkpoint

    return bool(load_checkpoint(last)["schedule"]["should_stop"])  # checked and checksummed like any other


def holdout_view(store: Any, fraction: float, seed: int = 0) -> StoreView:
    """The training split cut in two at random (fixed by `seed`): the larger part to train on, the rest as
    validation, as cuda-convnet's batches 1-4 against batch 5."""
    train = store.split("train")
    n_hold = int(round(len(train) * fraction))
    if n_hold < 1 or n_hold >= len(train):
        raise UserError(f"the training split has {len(train)} images: too few to hold out {fraction:.0%}")
    fit_index, hold_index = disjoint_samples(len(train), [len(train) - n_hold, n_hold], seed)
    return StoreView(store, {"train": take(train, fit_index), "val": take(train, hold_index)})


def start_from(checkpoint: Path) -> Callable[[Run], None]:
    """Set up a run to start from another run's weights and velocities (phase 2 from phase 1) when it has no
    checkpoint of its own; its epoch count and schedule are its own."""

    def set_up(run: Run) -> None:
        if run.checkpoints.newest_valid(run.device) is None:
            from alexnet.checkpoint import load_checkpoint

            load_weights(run, load_checkpoint(checkpoint, run.device))
            run.log.say(f"starting from {checkpoint} (its weights and velocities)")

    return set_up


def run_paper_schedule(store: Any, cfg: Config, run_dir: Path, sched: PaperSchedule, say,
                       progress: bool = False) -> list[dict[str, Any]]:
    """Phases 1-3 above; the records of the final run (phases 2-3)."""
    phase1 = copy.deepcopy(cfg)
    phase1.optim.schedule, phase1.optim.patience, phase1.optim.drops = "plateau", sched.patience, 0
    phase1.train.epochs = sched.max_phase1_epochs
    phase1.train.eval_ten_crop = False  # the stop rule looks at the centre crop: cheaper, and enough to see a plateau
    _train(phase1, holdout_view(store, sched.holdout_fraction), run_dir / "phase1", say, progress=progress)

    final = copy.deepcopy(cfg)
    final.optim.schedule = "milestones"
    first, second = sched.low_rate_epochs
    final.optim.milestones = [sched.fold_epochs, sched.fold_epochs + first]
    final.train.epochs = sched.fold_epochs + first + second
    return _train(final, store, run_dir / "final", say, start_from(run_dir / "phase1" / "last.pt"), progress)


def reproduce_lrn_cifar(store: Any, out: Path, seeds: int, schedule: str, overrides: dict[str, Any],
                        only_seed: int | None = None, only_net: str | None = None, say=print,
                        paper: PaperSchedule = PaperSchedule(), progress: bool = False) -> tuple[str, dict[str, Any]]:
    """Train both nets for every seed (or the one asked for); write OUT/lrn-cifar.md and OUT/results.json."""
    if not store.has_split("val"):
        raise UserError("the store has no validation split: prepare CIFAR-10 with its test (or val) split")
    out.mkdir(parents=True, exist_ok=True)
    results = {net: NetResult(net) for net in NETS}
    for net in NETS if only_net is None else (only_net,):
        for seed in range(seeds) if only_seed is None else (only_seed,):
            cfg = net_config(net, seed, overrides)
            run_dir = out / f"{schedule}-{net}-seed{seed}"
            if schedule == "paper":
                run_paper_schedule(store, cfg, run_dir, paper, say, progress)
                seconds = _wall_time(run_dir / "phase1") + _wall_time(run_dir / "final")
                final_dir = run_dir / "final"
            else:
                _train(cfg, store, run_dir, say, progress=progress)
                seconds = _wall_time(run_dir)
                final_dir = run_dir
            results[net].errors.append(multiview_error(final_dir, store, progress))
            results[net].seconds.append(seconds)
    data = {net: {"errors": r.errors, "mean": r.mean if r.errors else None, "seconds": r.seconds}
            for net, r in results.items()}
    text = table(results, schedule, len(store.split("train")), len(store.split("val")))
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "lrn-cifar.md").write_text(text)
    return text, data


def table(results: dict[str, NetResult], schedule: str, n_train: int, n_val: int) -> str:
    rows = [f"The paper's CIFAR-10 net (preset `{PRESET}`), `{schedule}` schedule, {n_train} training images; "
            f"multiview (ten views) top-1 error on the {n_val} validation images, one figure per seed.", "",
            "| net | errors % | mean % | paper | training time |", "|---|---|---|---|---|"]
    paper = {"lrn": "11%", "no_lrn": "13%"}
    for net, r in results.items():
        if not r.errors:
            continue
        errors = ", ".join(f"{e:.2f}" for e in r.errors)
        minutes = ", ".join(f"{s / 60:.0f}" for s in r.seconds)
        rows.append(f"| {'with LRN' if net == 'lrn' else 'without LRN'} | {errors} | {r.mean:.2f} | {paper[net]} "
                    f"| {minutes} min |")
    if all(r.errors for r in results.values()):
        rows += ["", f"Difference (without - with): {results['no_lrn'].mean - results['lrn'].mean:+.2f} points "
                     "(paper: +2)."]
    return "\n".join(rows) + "\n"

