"""alexnet: the 2012 ImageNet network of Krizhevsky, Sutskever and Hinton on PyTorch.

    import alexnet
    model = alexnet.build_model("paper")                 # 60,965,224 parameters, two towers
    model = alexnet.build_model("paper", lrn=False)      # any config key as an override
    model, cfg = alexnet.load("runs/demo/best.pt")       # a trained model and its config
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from alexnet.config import Config
    from alexnet.model import AlexNet


def build_model(preset: str = "paper", **overrides: Any) -> AlexNet:
    """The nn.Module of a preset, with config overrides (bare or dotted keys: lrn=False, towers=1)."""
    from alexnet.config import build_config
    from alexnet.model import AlexNet

    cfg = build_config(preset, overrides={k.replace("__", "."): v for k, v in overrides.items()})
    return AlexNet(cfg.model, cfg.data.crop)


def load(path: str, device: str = "cpu") -> tuple[AlexNet, Config]:
    """A trained model (in eval mode) and its resolved config, from a checkpoint written by training."""
    from alexnet.inference import load_model

    model, cfg, _ = load_model(path, device)
    return model, cfg


__all__ = ["build_model", "load", "__version__"]
