"""Exporting a trained network for other runtimes: safetensors, ONNX, TorchScript.

ONNX and TorchScript files hold the network together with its input normalisation, so that they take
what an image library gives:

    input  "crops":  uint8 (N, crop, crop, 3), RGB, channels last: the centre crop of an image whose
                     shorter side was scaled to S and then cut to the centre S x S (S = data.image_size,
                     crop = data.crop; 256 and 224 for the paper)
    output "logits": float32 (N, classes), before the softmax, classes in the checkpoint's order

Inside, the crop is converted to float, the training set's mean (the centre crop of the per-pixel mean
image, or torchvision's per-channel mean) is subtracted, the `imagenet` normalisation divides by its
standard deviation, and the channels are moved first. The batch size N is free.

Local response normalization: the fast autograd.Function of alexnet.lrn.layer cannot be traced, so the export
runs on a copy of the model whose LRN layers compute the same formula with plain torch ops (per tower);
during ONNX export each tower's LRN becomes ONNX's own LRN operator, which has torch's semantics
(alpha / size per term, window [c - (size - 1) // 2, c + size // 2] for odd sizes).

safetensors holds the weights under their state_dict names plus three tensors of the input statistics
("input.mean_image", "input.pca_eigenvalues", "input.pca_eigenvectors"); the metadata holds the resolved
config, the class ids and the class names as JSON strings.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alexnet.config import Config, config_from_dict
from alexnet.errors import UserError
from alexnet.files import atomic_path, loads_json
from alexnet.lrn.layer import LocalResponseNorm
from alexnet.model import AlexNet
from alexnet.tools.inference import ModelInfo

SAFETENSORS_FORMAT = "alexnet-safetensors/1"
# Largest accepted |exported - PyTorch| on the logits, in float32: 1e-4 for logits up to 1 in size, and
# 1e-4 of the largest logit beyond that. float32 keeps about 7 significant digits and two correct
# implementations sum in different orders: logits of a few hundred (a 224x224 net with large weights) differ
# by a few 1e-4 between torch and onnxruntime, the same 1e-6 relative difference as 1e-6 on logits of 1.
TOLERANCE = 1e-4
ONNX_OPSET = 17


class _OnnxLRN(torch.autograd.Function):
    """Only used while exporting to ONNX: its `symbolic` emits the ONNX LRN operator."""

    @staticmethod
    def forward(ctx, x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
        return F.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def symbolic(g, x, size: int, alpha: float, beta: float, k: float):
        return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)


class PlainLocalResponseNorm(nn.Module):
    """The same normalization as alexnet.lrn.layer.LocalResponseNorm with traceable torch ops, tower by tower."""

    def __init__(self, lrn: LocalResponseNorm) -> None:
        super().__init__()
        self.size, self.beta, self.k, self.groups = lrn.size, lrn.beta, lrn.k, lrn.groups
        # torch and ONNX divide alpha by size; the paper's literal formula does not, so scale it back.
        self.alpha = lrn.alpha * lrn.size if lrn.literal else lrn.alpha

    def forward(self, x: Tensor) -> Tensor:
        towers = x.chunk(self.groups, dim=1)  # static split: the channel count is fixed
        if torch.onnx.is_in_onnx_export() and self.size % 2 == 1:  # ONNX centres even windows differently
            outs = [_OnnxLRN.apply(t, self.size, self.alpha, self.beta, self.k) for t in towers]
        else:
            outs = [F.local_response_norm(t, self.size, self.alpha, self.beta, self.k) for t in towers]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def traceable_copy(model: AlexNet) -> AlexNet:
    """A deep copy in eval mode with every LRN layer replaced by PlainLocalResponseNorm."""
    clone = copy.deepcopy(model).cpu().eval()
    for parent in clone.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, LocalResponseNorm):
                parent._modules[name] = PlainLocalResponseNorm(child)
    return clone


class CropClassifier(nn.Module):
    """uint8 (N, crop, crop, 3) centre crops -> logits: the input normalisation, then the network."""

    def __init__(self, model: nn.Module, cfg: Config, info: ModelInfo) -> None:
        super().__init__()
        self.model = model
        stats = info.stats(cfg, torch.device("cpu"))
        size, crop = stats.mean.shape[0], cfg.data.crop
        top = (size - crop) // 2  # the centre view of alexnet.data.augment.view_offsets
        self.register_buffer("mean", stats.mean[top:top + crop, top:top + crop].clone())
        self.register_buffer("scale", stats.scale.clone())

    def forward(self, crops: Tensor) -> Tensor:
        x = (crops.to(torch.float32) - self.mean) * self.scale
        return self.model(x.permute(0, 3, 1, 2))


def _write_checked(out: Path, cfg: Config, reference: nn.Module, write: Callable[[str], None],
                   run_saved: Callable[[str, Tensor], np.ndarray], what: str, progress: bool = False) -> Agreement:
    """write(tmp); then the file, loaded back and run by run_saved(tmp, crops) on another batch size than the
    export's (the batch axis is free), must agree with the eager reference; then it is renamed over `out`.
    A failed export or check leaves no file and `out` unchanged. progress: a bar over the three stages (the
    export of the paper net takes tens of seconds)."""
    from tqdm import tqdm

    with atomic_path(out) as tmp, tqdm(total=3, desc=f"{out.name}", unit="stage", disable=not progress,
                                       dynamic_ncols=True, leave=False) as bar:
        bar.set_postfix_str("exporting")
        write(str(tmp))
        bar.update()
        bar.set_postfix_str(f"checking: {what}")
        crops = random_crops(cfg, 3, seed=1)
        got = run_saved(str(tmp), crops)
        bar.update()
        bar.set_postfix_str("running the eager model")
        with torch.no_grad():
            want = reference(crops).numpy()
        bar.update()
        agreement = compare(got, want)
        if not agreement.ok:
            raise UserError(f"{what} disagrees with the eager model: {agreement.describe()}; no file written")
    return agreement


@dataclass
class Agreement:
    """How closely an exported file's logits match the eager model's on the same random crops."""

    max_abs_difference: float
    largest_logit: float

    @property
    def limit(self) -> float:
        return TOLERANCE * max(1.0, self.largest_logit)

    @property
    def ok(self) -> bool:
        return self.max_abs_difference < self.limit

    def describe(self) -> str:
        return (f"max abs difference of the logits {self.max_abs_difference:.3g} (largest logit "
                f"{self.largest_logit:.3g}, limit {self.limit:.3g})")


def compare(got: np.ndarray, want: np.ndarray) -> Agreement:
    return Agreement(float(np.abs(got - want).max()), float(np.abs(want).max()))


def random_crops(cfg: Config, n: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, cfg.data.crop, cfg.data.crop, 3), dtype=torch.uint8, generator=g)


# ------------------------------------------------------------------------------------------------ safetensors
def export_safetensors(model: AlexNet, cfg: Config, info: ModelInfo, out: Path) -> None:
    from safetensors.torch import save_file

    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    tensors.update({"input.mean_image": info.mean.contiguous(),
                    "input.pca_eigenvalues": info.pca_eigenvalues.contiguous(),
                    "input.pca_eigenvectors": info.pca_eigenvectors.contiguous()})
    metadata = {"format": SAFETENSORS_FORMAT, "config": json.dumps(cfg.to_dict()),
                "classes": json.dumps(info.classes), "class_names": json.dumps(info.class_names)}
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_safetensors(path: str | Path) -> tuple[AlexNet, Config, ModelInfo]:
    """The model (eval mode), config and input statistics of a file written by export_safetensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path} is not a readable safetensors file ({exc})") from None
    if metadata.get("format") != SAFETENSORS_FORMAT:
        raise UserError(f"{path} was not exported by alexnet (no '{SAFETENSORS_FORMAT}' metadata)")
    try:
        data = loads_json(metadata["config"])
        if not isinstance(data, dict):
            raise TypeError("the config is not a mapping")
        cfg = config_from_dict(data)
        model = AlexNet(cfg.model, cfg.data.crop)
        model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("input.")})
        info = ModelInfo(loads_json(metadata["classes"]), loads_json(metadata["class_names"]),
                         tensors["input.mean_image"], tensors["input.pca_eigenvalues"],
                         tensors["input.pca_eigenvectors"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise UserError(f"{path} has alexnet's format mark but its metadata or weights are damaged ({exc}): "
                        "export it again") from None
    return model.eval(), cfg, info


# ------------------------------------------------------------------------------------------------ ONNX
def export_onnx(model: AlexNet, cfg: Config, info: ModelInfo, out: Path, exporter: str = "dynamo",
                progress: bool = False) -> Agreement:
    """Write the ONNX file after checking it with onnxruntime against the eager model (with alexnet.lrn.layer' LRN).

    exporter: "dynamo", PyTorch's current exporter (torch.export, then onnxscript), where LRN becomes standard
    ops (Pow, AveragePool over the maps, Div); or "torchscript", the deprecated tracing exporter, which honours
    the LRN's `symbolic` and writes ONNX's own LRN operator, for runtimes that fuse it."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime
    except ImportError:
        raise UserError("ONNX export needs onnx and onnxruntime: pip install 'alexnet[export]'") from None
    wrapper = CropClassifier(traceable_copy(model), cfg, info).eval()
    reference = CropClassifier(copy.deepcopy(model).cpu().eval(), cfg, info).eval()

    def write(tmp: str) -> None:
        if exporter == "dynamo":
            try:
                import onnxscript  # noqa: F401  (the dynamo exporter translates through it)
            except ImportError:
                raise UserError("the ONNX exporter needs onnxscript: pip install 'alexnet[export]', or pass "
                                "--onnx-exporter torchscript") from None
            with contextlib.redirect_stdout(io.StringIO()):  # its progress lines, not ours
                torch.onnx.export(wrapper, (random_crops(cfg, 2),), tmp, dynamo=True, input_names=["crops"],
                                  output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                  verbose=False)
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(wrapper, (random_crops(cfg, 2),), tmp, dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["crops"], output_names=["logits"],
                              dynamic_axes={"crops": {0: "batch"}, "logits": {0: "batch"}})

    def run_saved(tmp: str, crops: Tensor) -> np.ndarray:
        session = onnxruntime.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        return session.run(["logits"], {"crops": crops.numpy()})[0]

    return _write_checked(out, cfg, reference, write, run_saved, "onnxruntime running the ONNX file", progress)


# ------------------------------------------------------------------------------------------------ torch.export
def export_program(model: AlexNet, cfg: Config, info: ModelInfo, out: Path, progress: bool = False) -> Agreement:
    """torch.export's ExportedProgram (.pt2, the successor of TorchScript), batch size free; checked after
    loading it back (torch.export.load) against the eager model."""
    wrapper = CropClassifier(traceable_copy(model), cfg, info).eval()
    reference = CropClassifier(copy.deepcopy(model).cpu().eval(), cfg, info).eval()

    def write(tmp: str) -> None:
        with torch.no_grad():
            program = torch.export.export(wrapper, (random_crops(cfg, 2),),
                                          dynamic_shapes=({0: torch.export.Dim("batch")},))
        with open(tmp, "wb") as f:  # a file object: torch.export warns about any path not ending in .pt2
            torch.export.save(program, f)

    def run_saved(tmp: str, crops: Tensor) -> np.ndarray:
        with torch.no_grad():
            with open(tmp, "rb") as f:
                return torch.export.load(f).module()(crops).numpy()

    return _write_checked(out, cfg, reference, write, run_saved, "the exported program", progress)


# ------------------------------------------------------------------------------------------------ TorchScript
def export_torchscript(model: AlexNet, cfg: Config, info: ModelInfo, out: Path, progress: bool = False) -> Agreement:
    """Trace and save, after checking the saved file, loaded back, against the eager model."""
    wrapper = CropClassifier(traceable_copy(model), cfg, info).eval()
    reference = CropClassifier(copy.deepcopy(model).cpu().eval(), cfg, info).eval()

    def write(tmp: str) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream; the format stays
            traced = torch.jit.trace(wrapper, (random_crops(cfg, 2),))
            torch.jit.save(traced, tmp)

    def run_saved(tmp: str, crops: Tensor) -> np.ndarray:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(tmp)(crops).numpy()

    return _write_checked(out, cfg, reference, write, run_saved, "the TorchScript file", progress)


FORMATS = {"safetensors": ".safetensors", "onnx": ".onnx", "export": ".pt2", "torchscript": ".torchscript.pt"}

