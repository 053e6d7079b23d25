"""Top-k classes of image files, for `alexnet predict` (the paper's Figure 4, left).

Each image is decoded exactly as `prepare` stores it (alexnet.prepare.decode.load_image: shorter side to S,
centre S x S), then seen through the centre crop or the ten views, as in evaluation. When an image sits
in a folder named like one of the classes (its id or its name), that class is taken as its true class.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from alexnet.config import Config
from alexnet.errors import UserError
from alexnet.tools.inference import ModelInfo

# Files inside a folder are taken as images by these suffixes; a file named on the command line is tried
# whatever its name (the decoder goes by content).
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jfif"}


@dataclass
class Prediction:
    path: Path
    classes: list[int]  # the top-k class indices, most probable first
    probabilities: list[float]
    true_class: int | None  # from the parent folder's name, when it names a class


def collect_images(paths: Sequence[str | Path]) -> list[tuple[Path, bool]]:
    """(file, named) pairs: files as given (named=True), folders searched recursively for image suffixes."""
    found: list[tuple[Path, bool]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found.append((path, True))
        elif path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise UserError(f"{path} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}): "
                                "pass image files or folders of them")
            found.extend((p, False) for p in inside)
        else:
            raise UserError(f"{path} does not exist: pass image files or folders of them")
    return found


def true_class_of(path: Path, info: ModelInfo) -> int | None:
    """The class named by the image's folder (class id such as a wnid, or class name), if any."""
    folder = path.parent.name
    for names in (info.classes, info.class_names):
        if folder in names:
            return names.index(folder)
    return None


def decode(path: Path, size: int) -> np.ndarray:
    """uint8 (S, S, 3) as prepare stores it; UserError naming the file when it is not a usable image."""
    from alexnet.prepare.decode import SkipImage, load_image

    try:
        return load_image(path, size)
    except SkipImage as exc:
        raise UserError(f"{path} is not a usable image ({exc}): pass JPEG, PNG or other image files") from None


def decoded_batches(files: Sequence[tuple[Path, bool]], size: int,
                    batch_size: int) -> Iterator[tuple[list[Path], np.ndarray]]:
    """Batches of decoded images. A named file that fails is an error; one found in a folder is skipped
    with a warning, so that one damaged photo does not stop a folder."""
    paths: list[Path] = []
    arrays: list[np.ndarray] = []
    for path, named in files:
        try:
            arrays.append(decode(path, size))
            paths.append(path)
        except UserError as exc:
            if named:
                raise
            print(f"alexnet predict: warning: skipped {exc}", file=sys.stderr)
        if len(paths) == batch_size:
            yield paths, np.stack(arrays)
            paths, arrays = [], []
    if paths:
        yield paths, np.stack(arrays)


@torch.no_grad()
def predict_files(model: torch.nn.Module, cfg: Config, info: ModelInfo, files: Sequence[tuple[Path, bool]],
                  top: int, ten_crop: bool, device: torch.device, batch_size: int = 32) -> list[Prediction]:
    """The top-`top` classes and probabilities of each readable image, in the order given."""
    from alexnet.evaluate import predict_probs

    if top < 1:
        raise UserError("--top must be at least 1")
    top = min(top, len(info.classes))  # a net of fewer classes than asked for lists them all
    model.eval()
    stats = info.stats(cfg, device)
    out: list[Prediction] = []
    for paths, images in decoded_batches(files, cfg.data.image_size, batch_size):
        batch = torch.from_numpy(images).to(device)
        probs = predict_probs([model], batch, cfg.data, [stats], ten_crop)
        values, indices = probs.topk(top, dim=1)  # sorted, most probable first
        for path, p, i in zip(paths, values.cpu().tolist(), indices.cpu().tolist()):
            out.append(Prediction(path, i, p, true_class_of(path, info)))
    if not out:
        raise UserError("none of the given files is a usable image")
    return out


def panel_choice(count: int, wanted: int) -> list[int]:
    """Up to `wanted` positions spread evenly over `count` predictions (a folder of classes shows several)."""
    if count <= wanted:
        return list(range(count))
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)}) if wanted > 1 else [0]


def to_json(predictions: Sequence[Prediction], info: ModelInfo) -> list[dict]:
    rows = []
    for p in predictions:
        rows.append({
            "image": str(p.path),
            "true_class": None if p.true_class is None else info.classes[p.true_class],
            "true_name": None if p.true_class is None else info.class_names[p.true_class],
            "top": [{"index": c, "class": info.classes[c], "name": info.class_names[c], "probability": prob}
                    for c, prob in zip(p.classes, p.probabilities)],
        })
    return rows


def format_text(predictions: Sequence[Prediction], info: ModelInfo) -> str:
    """One line per image (a folder of hundreds stays readable); the true class starred; a tally at the end."""
    lines = []
    for p in predictions:
        truth = f"  [true: {info.class_names[p.true_class]}]" if p.true_class is not None else ""
        ranked = " | ".join(f"{info.class_names[c]}{'*' if c == p.true_class else ''} {100 * prob:.2f}%"
                            for c, prob in zip(p.classes, p.probabilities))
        lines.append(f"{p.path}{truth}  {ranked}")
    known = [p for p in predictions if p.true_class is not None]
    if known:
        k = len(known[0].classes)
        top1 = sum(p.classes[0] == p.true_class for p in known)
        topk = sum(p.true_class in p.classes for p in known)
        lines.append(f"{len(known)} images of known class: top-1 correct {top1} ({100 * top1 / len(known):.1f}%), "
                     f"top-{k} correct {topk} ({100 * topk / len(known):.1f}%)")
    return "\n".join(lines)


def draw_panel(predictions: Sequence[Prediction], info: ModelInfo, size: int, out: str | Path,
               count: int = 10, views: str = "centre crop") -> Path:
    from alexnet.plots import PredictionTile, plot_predictions

    tiles = []
    for i in panel_choice(len(predictions), count):
        p = predictions[i]
        true_rank = p.classes.index(p.true_class) if p.true_class in p.classes else None
        caption = info.class_names[p.true_class] if p.true_class is not None else p.path.name
        tiles.append(PredictionTile(decode(p.path, size), caption, [info.class_names[c] for c in p.classes],
                                    p.probabilities, true_rank))
    k = len(predictions[0].classes)
    title = f"Top-{k} predictions, {views} (red: the true class, when the folder names it)"
    return plot_predictions(tiles, out, title=title)
