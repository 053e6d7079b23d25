"""The paper's SGD rule and its learning-rate schedule (SPEC section 2).

Paper, section 5:   v <- 0.9 v - 0.0005 * lr * w - lr * grad ;   w <- w + v
The learning rate lives inside the velocity, so after a drop the old velocity still carries the old rate.
torch.optim.SGD keeps v <- m v + (grad + wd w) and steps w <- w - lr v: the same while lr is constant,
different after every drop. Both are offered (optim.rule); the paper's is the default.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from alexnet.config import Config, OptimConfig


class PaperSGD(torch.optim.Optimizer):
    """v <- m v - wd lr w - lr g;  w <- w + v, per parameter group, with torch's foreach kernels.

    Group options: lr, momentum, weight_decay. Use `param_groups_for` to give biases no decay and an
    lr multiplier, as the authors' code did.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.01, momentum: float = 0.9,
                 weight_decay: float = 0.0005) -> None:
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"invalid PaperSGD settings lr={lr} momentum={momentum} weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            velocities = []
            for p in params:
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                velocities.append(state["velocity"])
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            torch._foreach_mul_(velocities, m)
            if wd:
                torch._foreach_add_(velocities, params, alpha=-wd * lr)
            torch._foreach_add_(velocities, grads, alpha=-lr)
            torch._foreach_add_(params, velocities)
        return loss


def weighted_layers(model: nn.Module) -> list[nn.Module]:
    """The layers with a weight matrix or kernel (conv, locally connected, linear), in the model's order."""
    return [m for m in model.modules()
            if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.ndim >= 2]


def param_groups_for(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Weights: full decay. Biases: decay only if cfg.bias_decay, lr times bias_lr_mult.

    A bias is a parameter named `bias` (a locally connected layer's has one per output unit, so is not 1-d)
    or any 1-d parameter. With cfg.layer_weight_decay each weighted layer's weights get their own decay
    (cuda-convnet's per-layer `wc`), one group per distinct value. Each group carries `lr_mult` so a
    schedule can set group lr = base lr * lr_mult.
    """
    decay_of: dict[int, float] = {}
    if cfg.layer_weight_decay:
        for layer, wd in zip(weighted_layers(model), cfg.layer_weight_decay):
            decay_of[id(layer.weight)] = wd
    weights: dict[float, list[nn.Parameter]] = {}
    biases = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.rsplit(".", 1)[-1] == "bias":
            biases.append(p)
        else:
            weights.setdefault(decay_of.get(id(p), cfg.weight_decay), []).append(p)
    if not weights:
        weights[cfg.weight_decay] = []
    groups = [{"params": params, "weight_decay": wd, "lr_mult": 1.0, "name": "weights" if i == 0 else f"weights-{i}"}
              for i, (wd, params) in enumerate(weights.items())]
    if biases:
        groups.append({
            "params": biases,
            "weight_decay": cfg.weight_decay if cfg.bias_decay else 0.0,
            "lr_mult": cfg.bias_lr_mult,
            "name": "biases",
        })
    for g in groups:
        g["lr"] = cfg.lr * g["lr_mult"]
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr_scale: float = 1.0) -> torch.optim.Optimizer:
    groups = param_groups_for(model, cfg)
    for g in groups:
        g["lr"] *= lr_scale
    if cfg.rule == "paper":
        return PaperSGD(groups, lr=cfg.lr * lr_scale, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr * lr_scale, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           foreach=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)


class Schedule:
    """The learning rate per epoch: plateau (paper), milestones, constant, or linear decay to 0.

    plateau: divide by 1/factor when the validation error has not improved by more than min_improvement
    for `patience` epochs; at most `drops` times; when it stalls again after the last drop, stop.
    The decision is a pure function of the validation errors seen, so every rank agrees given the same
    (exactly reduced) errors, and a resumed run continues identically from the state_dict.
    """

    def __init__(self, cfg: OptimConfig, base_lr: float, epochs: int = 0) -> None:
        self.cfg = cfg
        self.epochs = epochs  # the run's length: where the linear schedule reaches 0
        self.base_lr = base_lr
        self.lr = base_lr
        self.best = math.inf
        self.bad_epochs = 0
        self.drops_done = 0
        self.should_stop = False
        self.history: list[dict[str, float]] = []

    def lr_at(self, epoch_progress: float) -> float:
        """The rate to use at a (fractional) epoch; warm-up and the linear schedule follow progress inside an
        epoch, the others change only between epochs."""
        w = self.cfg.warmup_epochs
        if w > 0 and epoch_progress < w:
            return self.lr * (epoch_progress + 1e-12) / w
        if self.cfg.schedule == "linear" and self.epochs > w:
            return self.lr * max(0.0, 1.0 - (epoch_progress - w) / (self.epochs - w))
        return self.lr

    def step(self, epoch: int, val_error: float) -> bool:
        """Record epoch `epoch` (0-based, just finished) with its top-1 error; True when the lr dropped."""
        cfg = self.cfg
        dropped = False
        if cfg.schedule == "milestones":
            if (epoch + 1) in cfg.milestones:
                self.lr *= cfg.factor
                self.drops_done += 1
                dropped = True
        elif cfg.schedule == "plateau":
            if val_error < self.best - cfg.min_improvement:
                self.best = val_error
                self.bad_epochs = 0
            else:
                self.bad_epochs += 1
                if self.bad_epochs >= cfg.patience:
                    if self.drops_done < cfg.drops:
                        self.lr *= cfg.factor
                        self.drops_done += 1
                        self.bad_epochs = 0
                        dropped = True
                    else:
                        self.should_stop = True
        self.best = min(self.best, val_error)
        self.history.append({"epoch": epoch, "val_error": val_error, "lr": self.lr})
        return dropped

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "best": self.best, "bad_epochs": self.bad_epochs,
                "drops_done": self.drops_done, "should_stop": self.should_stop, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr = float(state["lr"])
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self.drops_done = int(state["drops_done"])
        self.should_stop = bool(state["should_stop"])
        self.history = list(state["history"])


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
