"""torchvision's alexnet weights as an alexnet checkpoint of the `one-tower` preset.

torchvision's alexnet is the one-tower net of "One weird trick" (Krizhevsky 2014) and the `one-tower`
preset builds it with the same state_dict names and shapes, so the weights load unchanged. What a
checkpoint adds to the weights:

- classes: the 1000 ILSVRC-2012 wnids, sorted; torchvision's class index is the sorted-wnid order too.
  The wnid list ships with this package (alexnet/data/ilsvrc2012_wnids.txt).
- class_names: torchvision's ImageNet category names (AlexNet_Weights.IMAGENET1K_V1.meta, no download).
- mean: the `one-tower` preset normalises as torchvision does ((x / 255 - mean) / std per channel), so
  the mean image is ImageNet's per-channel mean, (0.485, 0.456, 0.406) x 255, at 256 x 256.
- the RGB PCA for colour noise (used only if training goes on from the checkpoint): ImageNet's
  eigenvalues and eigenvectors as published with fb.resnet.torch (datasets/imagenet.lua, the `pca` table
  its transforms.Lighting uses; 0..1 pixel units, eigenvalues 0.2175, 0.0188, 0.0045, eigenvectors as
  columns), taken as variances and scaled by 255^2 to the 0..255 units of a store. (fb.resnet.torch itself
  multiplies its noise by these numbers directly, without a square root.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from alexnet.checkpoint import FORMAT, atomic_save, safe_load, with_checksum
from alexnet.config import build_config
from alexnet.data.augment import IMAGENET_MEAN
from alexnet.errors import UserError
from alexnet.files import check_output
from alexnet.model import AlexNet

# fb.resnet.torch's ImageNet PCA in 0..1 units; columns of IMAGENET_PCA_EIGENVECTORS are the eigenvectors.
IMAGENET_PCA_EIGENVALUES_01 = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
IMAGE_SIZE = 256  # torchvision's Resize(256) before CenterCrop(224)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict .pth file (as torchvision downloads them), loaded without running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist: pass torchvision's alexnet weights (a state_dict .pth file)")
    try:
        sd = safe_load(path)
    except Exception as exc:  # pickle errors, refused globals, truncation: all mean "not a usable weights file"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path} is not a readable state_dict file ({first[:160]})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]  # some training scripts wrap it
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path} does not hold a state_dict (names -> tensors): save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in sd.items()}  # DataParallel-saved weights too


def read_class_list(path: str | Path, count: int) -> tuple[list[str], list[str]]:
    """A text file with one class per line: "id" or "id<TAB or spaces>name", in the model's output order."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--classes {path} does not exist")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise UserError(f"--classes {path} is not UTF-8 text: one class id per line") from None
    except OSError as exc:
        raise UserError(f"cannot read --classes {path}: {exc.strerror or exc}") from None
    if len(lines) != count:
        raise UserError(f"--classes {path} lists {len(lines)} classes but the weights have {count} outputs")
    ids, names = [], []
    for line in lines:
        parts = line.split(None, 1)
        ids.append(parts[0])
        names.append(parts[1] if len(parts) > 1 else parts[0])
    return ids, names


def checkpoint_from_state_dict(sd: dict[str, torch.Tensor], classes: list[str] | None = None,
                               class_names: list[str] | None = None, source: str = "") -> dict[str, Any]:
    """The checkpoint dict (alexnet.checkpoint's format) of a one-tower model with these weights."""
    from alexnet.data.classnames import ilsvrc2012_wnids, imagenet_categories

    head = sd.get("classifier.6.weight")
    if head is None:
        raise UserError("the weights have no classifier.6.weight: they are not torchvision's alexnet")
    num_classes = int(head.shape[0])
    if classes is None:
        if num_classes != 1000:
            raise UserError(f"the weights have {num_classes} outputs, not ImageNet's 1000: name the classes "
                            "with --classes FILE (one class id per line, optionally followed by a name)")
        classes, class_names = list(ilsvrc2012_wnids()), list(imagenet_categories())
    cfg = build_config("one-tower", overrides={"model.num_classes": num_classes, "model.init": "torchvision"})
    model = AlexNet(cfg.model, cfg.data.crop)
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        missing = getattr(exc, "args", [""])[0].splitlines()[1:2]
        raise UserError("the weights do not fit torchvision's alexnet layout"
                        f"{': ' + missing[0].strip() if missing else ''}") from None
    eigenvalues = torch.tensor(IMAGENET_PCA_EIGENVALUES_01, dtype=torch.float32) * 255.0**2
    mean = torch.tensor([255.0 * m for m in IMAGENET_MEAN], dtype=torch.float32)
    return {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "classes": list(classes),
        "class_names": list(class_names or classes),
        "mean": mean.expand(IMAGE_SIZE, IMAGE_SIZE, 3).contiguous(),
        "pca_eigenvalues": eigenvalues,
        "pca_eigenvectors": torch.tensor(IMAGENET_PCA_EIGENVECTORS, dtype=torch.float32),
        "source": {"torchvision_weights": source},
    }


def import_torchvision(weights: str | Path, out: str | Path, classes_file: str | Path | None = None,
                       overwrite: bool = False) -> Path:
    """Write the checkpoint of torchvision alexnet weights to `out` (atomically)."""
    out = check_output(Path(out), "-o", overwrite, [weights] + ([classes_file] if classes_file else []))
    sd = read_state_dict(weights)
    classes = names = None
    if classes_file is not None:
        head = sd.get("classifier.6.weight")
        classes, names = read_class_list(classes_file, int(head.shape[0]) if head is not None else -1)
    atomic_save(with_checksum(checkpoint_from_state_dict(sd, classes, names, str(weights))), out)
    return out
