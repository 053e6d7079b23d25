"""torch.hub entry points: torch.hub.load(REPO_OR_DIR, "alexnet", preset=..., weights=...).

    model = torch.hub.load("path/to/this/checkout", "alexnet", source="local", preset="paper")
    model = torch.hub.load("path/to/this/checkout", "alexnet", source="local", preset="one-tower",
                           weights="torchvision")
"""

import os
import sys

dependencies = ["torch", "torchvision", "numpy", "yaml"]

# the package lives in src/: make it importable when torch.hub loads this file from a checkout
_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if os.path.isdir(_SRC) and _SRC not in sys.path:
    sys.path.insert(0, _SRC)


def alexnet(preset: str = "paper", weights: str | None = None, **overrides):  # noqa: ANN201 - torch.hub's API
    """The network of a preset (paper, one-tower, cifar, cifar-convnet, figure1, demo); `weights` as in
    alexnet.build_model: None, a checkpoint path, or "torchvision" (one-tower, from torch's hub cache)."""
    from alexnet import build_model

    return build_model(preset, weights=weights, **overrides)
