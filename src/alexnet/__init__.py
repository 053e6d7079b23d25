"""alexnet: the 2012 ImageNet network of Krizhevsky, Sutskever and Hinton on PyTorch.

    import alexnet
    model = alexnet.build_model("paper")                 # 60,965,224 parameters, two towers
    model = alexnet.build_model("paper", lrn=False)      # any config key as an override
    model = alexnet.build_model("paper", weights="runs/paper/best.pt")         # trained weights
    model = alexnet.build_model("one-tower", weights="torchvision")            # torchvision's, from the hub cache
    model, cfg = alexnet.load("runs/demo/best.pt")       # a trained model and its config
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from alexnet.config import Config
    from alexnet.model import AlexNet


TORCHVISION_WEIGHTS = "alexnet-owt-7be5be79.pth"  # the file torchvision.models.alexnet(weights=...) downloads


def build_model(preset: str = "paper", weights: str | None = None, **overrides: Any) -> AlexNet:
    """The nn.Module of a preset, with config overrides (bare or dotted keys: lrn=False, towers=1).

    weights: None (the preset's initialisation), a checkpoint path (its weights, in eval mode; the checkpoint
    must be of this preset, and overrides are not allowed since the checkpoint fixes the config), or
    "torchvision" for the one-tower preset with torchvision's ImageNet weights, read from torch's hub cache
    (`torch.hub.get_dir()/checkpoints/alexnet-owt-7be5be79.pth`, where torchvision puts them; nothing is
    downloaded here).
    """
    from alexnet.config import build_config
    from alexnet.errors import UserError
    from alexnet.model import AlexNet

    if weights is None:
        cfg = build_config(preset, overrides={k.replace("__", "."): v for k, v in overrides.items()})
        return AlexNet(cfg.model, cfg.data.crop)
    if overrides:
        raise UserError("build_model: the weights fix the config; give no overrides with weights=")
    if weights == "torchvision":
        return _torchvision_model(preset)
    from alexnet.tools.inference import load_model

    model, cfg, _ = load_model(weights)
    if cfg.preset != preset:
        raise UserError(f"{weights} holds a '{cfg.preset}' model, not '{preset}': ask for preset='{cfg.preset}'")
    return model


def _torchvision_model(preset: str) -> AlexNet:
    from pathlib import Path

    import torch

    from alexnet.config import config_from_dict
    from alexnet.errors import UserError
    from alexnet.model import AlexNet
    from alexnet.tools.torchvision_weights import checkpoint_from_state_dict, read_state_dict

    if preset != "one-tower":
        raise UserError(f"torchvision's weights are for the one-tower preset, not '{preset}'")
    path = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_WEIGHTS
    if not path.is_file():
        raise UserError(f"{path} is not there: let torchvision download it once (torchvision.models.alexnet("
                        "weights='DEFAULT')) or copy the file there")
    ckpt = checkpoint_from_state_dict(read_state_dict(path), source=str(path))
    cfg = config_from_dict(ckpt["config"])
    model = AlexNet(cfg.model, cfg.data.crop)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def load(path: str, device: str = "cpu") -> tuple[AlexNet, Config]:
    """A trained model (in eval mode) and its resolved config, from a checkpoint written by training."""
    from alexnet.tools.inference import load_model

    model, cfg, _ = load_model(path, device)
    return model, cfg


__all__ = ["build_model", "load", "__version__"]
