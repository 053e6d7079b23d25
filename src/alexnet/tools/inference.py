"""Loading trained models and what inference needs from a checkpoint (classes, mean image, PCA)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from alexnet.checkpoint import load_checkpoint
from alexnet.config import Config, config_from_dict
from alexnet.data.augment import ColourStats
from alexnet.errors import UserError
from alexnet.model import AlexNet


@dataclass
class ModelInfo:
    """What travels with the weights: class ids and names, normalisation statistics."""

    classes: list[str]
    class_names: list[str]
    mean: torch.Tensor  # (S, S, 3) float32
    pca_eigenvalues: torch.Tensor
    pca_eigenvectors: torch.Tensor

    def stats(self, cfg: Config, device: torch.device) -> ColourStats:
        return ColourStats.build(self.mean, self.pca_eigenvectors, self.pca_eigenvalues, cfg.data.normalize, device)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[AlexNet, Config, ModelInfo]:
    ckpt = load_checkpoint(path, "cpu")
    try:
        cfg = config_from_dict(ckpt["config"])
    except (KeyError, UserError) as exc:
        raise UserError(f"{path} holds no usable config ({exc})") from None
    model = AlexNet(cfg.model, cfg.data.crop)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError:
        raise UserError(f"{path}: the weights do not match the saved config") from None
    outputs = cfg.model.num_classes
    if len(ckpt["classes"]) != outputs:
        raise UserError(f"{path} names {len(ckpt['classes'])} classes for a net of {outputs} outputs: the checkpoint "
                        "is damaged or was edited; use another one")
    size = cfg.data.image_size
    if tuple(ckpt["mean"].shape) != (size, size, 3):
        raise UserError(f"{path} holds a mean image of shape {tuple(ckpt['mean'].shape)} for {size}x{size} inputs: "
                        "the checkpoint is damaged or was edited; use another one")
    model.to(device).eval()
    info = ModelInfo(list(ckpt["classes"]), list(ckpt["class_names"]), ckpt["mean"].float(),
                     ckpt["pca_eigenvalues"].float(), ckpt["pca_eigenvectors"].float())
    return model, cfg, info
