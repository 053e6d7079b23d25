"""One config tree, the single source of every default.

Defaults are the paper's numbers (SPEC.md); presets are data (dicts of overrides), not code paths.
A run's config is resolved from: defaults <- preset <- YAML file <- key=value overrides, and saved
with the run (config.yaml) so that it can be rebuilt exactly.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from alexnet.errors import UserError


@dataclass
class ModelConfig:
    """The network: SPEC section 1. Lists run over the conv layers (conv1..conv5 for the paper)."""

    widths: list[int] = field(default_factory=lambda: [96, 256, 384, 384, 256])  # maps, both towers together
    kernels: list[int] = field(default_factory=lambda: [11, 5, 3, 3, 3])  # square kernel side per conv layer
    strides: list[int] = field(default_factory=lambda: [4, 1, 1, 1, 1])  # per conv layer
    # conv1 pads 2, as torchvision: (224 + 4 - 11) // 4 + 1 = 55 maps, the paper's 55x55 (cuda-convnet instead
    # let its last window read zeros past the edge; Caffe fed 227 crops). Same map sizes either way.
    pads: list[int] = field(default_factory=lambda: [2, 2, 1, 1, 1])
    split: list[bool] = field(default_factory=lambda: [False, True, False, True, True])  # sees own tower only
    lrn_after: list[bool] = field(default_factory=lambda: [True, True, False, False, False])  # LRN after the ReLU
    pool_after: list[bool] = field(default_factory=lambda: [True, True, False, False, True])  # max-pool last
    bias_one: list[bool] = field(default_factory=lambda: [False, True, False, True, True])  # paper init
    # locally connected (cuda-convnet's `local`: no weight sharing) instead of convolutional; [] for none
    local: list[bool] = field(default_factory=list)
    init_stds: list[float] = field(default_factory=list)  # paper init: std per conv layer ([]: init_std for all)
    pool_ceil: bool = False  # pooled side rounded up, as cuda-convnet (24 -> 12 at 3/2); False: PyTorch's floor
    fc: list[int] = field(default_factory=lambda: [4096, 4096])  # hidden FC layers (fc6, fc7)
    fc_bias_one: bool = True  # paper: fc6 and fc7 biases start at 1
    num_classes: int = 1000  # outputs of the last FC layer (taken from the data when training)
    towers: int = 2  # 2: split layers are grouped convs (one device) or real towers (--towers DEV0,DEV1)
    tower_convs: str = "auto"  # towers on one device: grouped (one conv) | split (a conv per tower) | auto (model.py)
    halve_single_tower: bool = True  # towers=1 -> half width except the last conv (the paper's comparison)
    activation: str = "relu"  # relu | tanh (Figure 1)
    lrn: bool = True  # master switch for every LRN layer
    lrn_size: int = 5  # n: maps in each normalization window
    lrn_alpha: float = 1e-4  # alpha (divided by n per term unless lrn_literal)
    lrn_beta: float = 0.75  # the exponent beta
    lrn_k: float = 2.0  # the additive constant k (cuda-convnet's CIFAR nets: 1)
    lrn_literal: bool = False  # False: alpha/n per term (authors' code, Caffe, torch); True: paper's text
    pooling: str = "overlap"  # overlap: window 3 stride 2 | plain: window 2 stride 2 (the ablation)
    dropout: float = 0.5  # probability of zeroing a hidden FC unit in training (0: no dropout)
    dropout_position: str = "after"  # after fc6/fc7 (paper) | before fc6/fc7 (torchvision's layout)
    adaptive_pool: int = 0  # >0: AdaptiveAvgPool2d(n) before the FC layers (torchvision's layout)
    init: str = "paper"  # paper: N(0, init_std^2), biases 0/1 | torchvision: PyTorch's default | kaiming
    init_std: float = 0.01  # paper init: std of the normal the weights are drawn from
    fc_init_std: float = 0.0  # 0: same as init_std


@dataclass
class DataConfig:
    """Data and augmentation: SPEC section 3."""

    image_size: int = 256  # S: stored images are S x S, shorter side scaled to S then centre-cropped
    crop: int = 224  # the network's input
    random_crop: bool = True  # training crops at random positions (else the centre crop)
    flip: bool = True  # random horizontal reflection
    pca_std: float = 0.1  # std of the PCA colour noise coefficients a_i; 0 disables it
    pca_scale: str = "sqrt"  # sqrt: s_i = sqrt(l_i) in pixel units (authors' code) | eigenvalue: l_i (text)
    normalize: str = "mean-image"  # mean-image: x - per-pixel mean (paper) | imagenet: torchvision's
    val_fraction: float = 0.0  # for a single-folder source: share of each class held out for validation


@dataclass
class OptimConfig:
    """The paper's SGD rule and its schedule: SPEC section 2."""

    batch_size: int = 128  # global batch, split over ranks
    lr: float = 0.01  # learning rate of the weights, per batch of batch_size (the gradient is the batch mean)
    momentum: float = 0.9  # m in v <- m v - ...: the share of the last step kept
    weight_decay: float = 0.0005  # the paper's rule: v -= weight_decay * lr * w each step
    bias_decay: bool = False  # authors' code: no weight decay on biases
    bias_lr_mult: float = 1.0  # authors' code used 2; the paper says equal rates
    rule: str = "paper"  # paper: v = m v - wd lr w - lr g; w += v | torch: torch.optim.SGD's rule
    schedule: str = "plateau"  # plateau: /10 when val error stops improving | milestones | constant
    patience: int = 3  # epochs without improvement before a drop
    drops: int = 3  # the paper divided the rate by 10 three times, then stopped
    factor: float = 0.1  # what the rate is multiplied by at each drop
    min_improvement: float = 0.0  # in percentage points of top-1 error
    milestones: list[int] = field(default_factory=list)  # epochs at which lr *= factor (schedule=milestones)
    warmup_epochs: float = 0.0  # linear warm-up (not in the paper; for large batches)
    # none: lr as given | linear: lr x batch_size / 128, the paper's batch (large-batch mode, Goyal et al. 2017;
    # pair it with warmup_epochs, e.g. 5)
    lr_scaling: str = "none"
    # weight decay per weighted layer (conv/local layers, then FC layers, in order), as cuda-convnet's `wc`;
    # [] for weight_decay on every layer
    layer_weight_decay: list[float] = field(default_factory=list)


@dataclass
class TrainConfig:
    """How a run is executed: devices, precision, logging, checkpoints."""

    epochs: int = 90  # passes over the training split at most
    seed: int = 0  # every random draw (init, order, augmentation, dropout) follows from it
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    channels_last: str = "auto"  # auto (on: it wins on CPU and GPU) | on | off
    compile: bool = False  # torch.compile the model
    threads: int = 0  # CPU threads for torch (0: torch's default, one per core; -1: the cores idle at start)
    keep_freed_memory: bool = True  # reuse freed host memory instead of unmapping it (glibc; alexnet.hostmemory)
    eval_ten_crop: bool = False  # validation during training: centre crop (fast) or ten crops
    log_every: int = 50  # steps between logged training metrics (host sync happens only then)
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: only at epoch ends)
    keep_last: int = 2  # checkpoints kept besides best.pt
    on_nonfinite: str = "stop"  # stop | skip: what a NaN/inf loss does
    max_nonfinite: int = 10  # consecutive skipped steps before stopping anyway
    prefetch: int = 2  # batches prepared ahead by the loader thread
    store_on_device: bool = False  # hold the uint8 store in device memory (when it fits)
    max_steps: int = 0  # stop after this many steps in total (0: no limit); for smoke runs
    limit_train: int = 0  # use only the first N training images (0: all)
    limit_val: int = 0  # validate on the first N images only (0: all)


@dataclass
class Config:
    preset: str = "paper"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Presets: overrides of the defaults above (which are the paper's).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {},
    # Krizhevsky 2014, "One weird trick"; torchvision's alexnet. Same state_dict keys and shapes as
    # torchvision.models.alexnet so its weights load unchanged; its input normalisation too.
    "one-tower": {
        "model": {
            "widths": [64, 192, 384, 256, 256],
            "split": [False, False, False, False, False],
            "towers": 1,
            "halve_single_tower": False,
            "lrn": False,
            "dropout_position": "before",
            "adaptive_pool": 6,
        },
        "data": {"normalize": "imagenet"},
    },
    # An AlexNet for 32x32 images keeping the paper's ingredients: two towers, LRN, overlapping pooling,
    # dropout, ReLU, crops/flips and PCA noise. Sized for 30 minutes on a 2-core CPU (docs/RESULTS.md): 15
    # epochs of 45,000 images, bf16, about 100 s each. Inputs stay the paper's mean-subtracted pixel values,
    # the scale at which the LRN constants act; unit-scaled inputs (`imagenet`) learned far slower with this
    # init (85% vs 66% val error after 2 epochs of 15,000 images). The rest was chosen by sweeps of 30 runs
    # (GPU, same code, seeds 0 and 1, ten-crop val error): 28x28 crops (24x24, cuda-convnet's, cost 0.73x
    # per epoch but lost 2-3 points at equal time), lr 0.02 (0.03: +2 points, 0.05: +10), weight decay
    # 0.001 (0.0005: +0.5 to 1 point), the rate divided by 10 after epochs 10 and 13.
    "cifar": {
        "model": {
            "widths": [64, 128, 192, 192, 128],
            "kernels": [5, 5, 3, 3, 3],
            "strides": [1, 1, 1, 1, 1],
            "pads": [2, 2, 1, 1, 1],
            "fc": [512, 512],
            "num_classes": 10,
            "init": "torchvision",
        },
        "data": {"image_size": 32, "crop": 28},
        "optim": {"lr": 0.02, "weight_decay": 0.001, "schedule": "milestones", "milestones": [10, 13],
                  "batch_size": 128},
        # bf16 autocast: 1.4x the images/s of fp32 on this CPU. Threads: the cores idle at start. On 2 cores
        # two threads made the bf16 step 1.26x faster on an idle machine but 1.2-1.4x slower (up to 4x under
        # heavy load) when another process held a core (186 / 234 ms idle, 337-397 / 238-316 ms shared)
        "train": {"epochs": 15, "precision": "bf16", "threads": -1},
    },
    # Figure 1: the four-layer CIFAR-10 net (three 5x5 conv layers of 32, 32, 64 maps, each followed by 3/2
    # max-pooling, then a 10-way FC layer), no regularisation, in the paper's setting: pixel values minus the
    # mean image (not scaled), weights N(0, 0.01^2), biases 0, momentum 0.9, no weight decay, a constant rate.
    # `alexnet reproduce figure1` picks each activation's rate (the one reaching 25% training error fastest)
    # and offers the earlier unit-scaled setting as `--setting modern`.
    "figure1": {
        "model": {
            "widths": [32, 32, 64],
            "kernels": [5, 5, 5],
            "strides": [1, 1, 1],
            "pads": [2, 2, 2],
            "split": [False, False, False],
            "lrn_after": [False, False, False],
            "pool_after": [True, True, True],
            "bias_one": [False, False, False],
            "fc": [],
            "fc_bias_one": False,
            "num_classes": 10,
            "towers": 1,
            "halve_single_tower": False,
            "lrn": False,
            "dropout": 0.0,
            "init": "paper",
        },
        "data": {"image_size": 32, "crop": 32, "random_crop": False, "flip": False, "pca_std": 0.0,
                 "normalize": "mean-image"},
        "optim": {"weight_decay": 0.0, "lr": 0.001, "schedule": "constant"},
        "train": {"epochs": 30},
    },
    # The paper's CIFAR-10 net (section 3.3: 11% test error with LRN, 13% without), as cuda-convnet ships it:
    # layers-conv-local-11pct.cfg and layer-params-conv-local-11pct.cfg. 24x24 crops of the 32x32 images and
    # their mirrors; conv 64@5x5 -> ReLU -> LRN -> max 3/2 -> conv 64@5x5 -> ReLU -> LRN -> max 3/2 -> locally
    # connected 32@3x3 -> ReLU -> locally connected 32@3x3 -> ReLU -> fc10. LRN in cuda-convnet's terms: size 5,
    # scale 0.001 divided by the size per term, 1 + ... (k = 1), power 0.75. Pooled sides rounded up (24 -> 12
    # -> 6). Weights N(0, std^2) with each layer's initW, biases 0. The update is cuda-convnet's (the paper's
    # rule on the batch-mean gradient): epsW 0.001, epsB 0.002, momentum 0.9, wc 0.004 on local3, local4 and
    # fc10 and none on conv1, conv2 or any bias. Test: the ten views (4 corners, centre, mirrored), probabilities
    # averaged. `model.lrn=false` is the 13% net. The methodology's ~470 epochs are `alexnet reproduce
    # lrn-cifar --schedule paper`; the preset's own schedule is the short one: 30 epochs at the params file's
    # rates, then 5 at 1/10 and 5 at 1/100, as its steps 5-6 (docs/RESULTS.md).
    "cifar-convnet": {
        "model": {
            "widths": [64, 64, 32, 32],
            "kernels": [5, 5, 3, 3],
            "strides": [1, 1, 1, 1],
            "pads": [2, 2, 1, 1],
            "split": [False, False, False, False],
            "lrn_after": [True, True, False, False],
            "pool_after": [True, True, False, False],
            "bias_one": [False, False, False, False],
            "local": [False, False, True, True],
            "init_stds": [0.0001, 0.01, 0.04, 0.04],
            "fc_init_std": 0.01,
            "pool_ceil": True,
            "fc": [],
            "fc_bias_one": False,
            "num_classes": 10,
            "towers": 1,
            "halve_single_tower": False,
            "lrn_alpha": 0.001,
            "lrn_k": 1.0,
            "dropout": 0.0,
            "init": "paper",
        },
        "data": {"image_size": 32, "crop": 24, "pca_std": 0.0, "normalize": "mean-image"},
        "optim": {"lr": 0.001, "bias_lr_mult": 2.0, "weight_decay": 0.004,
                  "layer_weight_decay": [0.0, 0.0, 0.004, 0.004, 0.004],
                  "schedule": "milestones", "milestones": [30, 35], "batch_size": 128},
        "train": {"epochs": 40, "eval_ten_crop": True, "threads": -1},
    },
    # The small net `alexnet demo` trains on generated images: the paper's ingredients (towers, LRN, 3/2
    # pooling, dropout, crops, flips, PCA noise, the paper's SGD) at toy size. Unlike the paper it scales
    # inputs to unit variance and uses He initialisation: with the paper's N(0, 0.01^2) a net this small
    # does not start learning within the demo's few minutes (measured: 90% error after 6 epochs, against
    # 36% with these two changes).
    "demo": {
        "model": {
            "widths": [32, 64, 96, 96, 64],
            "kernels": [5, 3, 3, 3, 3],
            "strides": [2, 1, 1, 1, 1],
            "pads": [2, 1, 1, 1, 1],
            "fc": [256, 256],
            "num_classes": 10,
            "init": "kaiming",
        },
        "data": {"image_size": 40, "crop": 32, "normalize": "imagenet"},
        "optim": {"lr": 0.02, "batch_size": 64, "schedule": "milestones", "milestones": [10]},
        "train": {"epochs": 12, "log_every": 10},
    },
}

_SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "train": TrainConfig}

CHOICES: dict[str, tuple[str, ...]] = {
    "model.activation": ("relu", "tanh"),
    "model.pooling": ("overlap", "plain"),
    "model.dropout_position": ("after", "before"),
    "model.init": ("paper", "torchvision", "kaiming"),
    "model.tower_convs": ("auto", "grouped", "split"),
    "data.pca_scale": ("sqrt", "eigenvalue"),
    "data.normalize": ("mean-image", "imagenet"),
    "optim.rule": ("paper", "torch"),
    "optim.schedule": ("plateau", "milestones", "constant"),
    "optim.lr_scaling": ("none", "linear"),
    "train.precision": ("auto", "fp32", "bf16"),
    "train.channels_last": ("auto", "on", "off"),
    "train.on_nonfinite": ("stop", "skip"),
}


def key_docs() -> list[dict[str, Any]]:
    """Every key with its type, default, allowed values and meaning. The meaning is the comment written beside
    the field (or on the lines just above it) in this file: the dataclasses stay the one source."""
    import inspect
    import io
    import tokenize

    rows = []
    for section, cls in _SECTIONS.items():
        comments: dict[str, str] = {}
        above: list[str] = []
        tokens = tokenize.generate_tokens(io.StringIO(inspect.getsource(cls)).readline)
        line_name: str | None = None
        for tok in tokens:
            if tok.type == tokenize.NL or tok.type == tokenize.NEWLINE:
                line_name = None
                continue
            if tok.type == tokenize.COMMENT:
                text = tok.string.lstrip("#").strip()
                if line_name is not None:
                    comments[line_name] = text
                else:
                    above.append(text)
            elif tok.type == tokenize.NAME and line_name is None and tok.start[1] == 4:
                line_name = tok.string
                if above and line_name not in comments:
                    comments[line_name] = " ".join(above)
                above = []
        defaults = cls()
        for f in fields(cls):
            key = f"{section}.{f.name}"
            annotation = _hints(cls)[f.name]
            generic = typing.get_origin(annotation) is not None
            kind = str(annotation) if generic else getattr(annotation, "__name__", str(annotation))
            rows.append({"key": key, "type": kind,
                         "default": getattr(defaults, f.name), "choices": list(CHOICES.get(key, ())),
                         "meaning": comments.get(f.name, "")})
    return rows


def all_keys() -> list[str]:
    return [f"{name}.{f.name}" for name, cls in _SECTIONS.items() for f in fields(cls)]


def _resolve_key(key: str) -> str:
    """'lr' -> 'optim.lr' when the bare name is unique; dotted keys are checked as they are."""
    if not isinstance(key, str):
        raise UserError(f"config key {key!r} is not a name: keys are words such as lr or optim.lr")
    keys = all_keys()
    if key in keys:
        return key
    matches = [k for k in keys if k.split(".", 1)[1] == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UserError(f"config key '{key}' is ambiguous: write one of {', '.join(matches)}")
    close = difflib.get_close_matches(key, keys + [k.split(".", 1)[1] for k in keys], n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else " (see `alexnet config --keys`)"
    raise UserError(f"unknown config key '{key}'{hint}")


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check one value against its field's type; int is accepted where float is expected."""
    origin = typing.get_origin(annotation)
    if origin is list:
        (inner,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}' takes a list, got {value!r}")
        return [_coerce(key, v, inner) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise UserError(f"config key '{key}' takes a finite number, got {value!r}")
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            allowed = CHOICES.get(key)
            if allowed and value not in allowed:
                raise UserError(f"config key '{key}' must be one of {', '.join(allowed)}, got '{value}'")
            return value
    name = getattr(annotation, "__name__", str(annotation))
    raise UserError(f"config key '{key}' takes a {name}, got {value!r}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def set_value(cfg: Config, key: str, value: Any) -> None:
    full = _resolve_key(key)
    section, name = full.split(".", 1)
    sub = getattr(cfg, section)
    setattr(sub, name, _coerce(full, value, _hints(type(sub))[name]))


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> None:
    """Nested {"model": {"lrn": False}} or flat {"model.lrn": False} / {"lrn": False}."""
    for key, value in overrides.items():
        if key in _SECTIONS and isinstance(value, dict):
            for sub_key, sub_value in value.items():
                set_value(cfg, f"{key}.{sub_key}", sub_value)
        elif key == "preset":
            continue
        else:
            set_value(cfg, key, value)


_EXPONENT_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """['lr=0.02', 'model.lrn=false'] -> {'lr': 0.02, 'model.lrn': False} (values read as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"expected key=value, got '{item}' (for example: lr=0.02 model.lrn=false)")
        key, raw = item.split("=", 1)
        try:
            value = _safe_yaml(raw) if raw.strip() else ""
        except (yaml.YAMLError, _YamlTooDeep):
            value = raw
        if isinstance(value, str) and _EXPONENT_FLOAT.match(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 as a string; on a command line it means a number
        out[key.strip()] = value
    return out


class _YamlTooDeep(Exception):
    pass


class _PlainLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: a config needs neither, and nested aliases ("billion laughs") expand
    a few hundred bytes into more values than memory holds."""

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not accepted in a config",
                                              event.start_mark)
        if len(self.yaml_nesting) > MAX_YAML_DEPTH:
            raise _YamlTooDeep()
        self.yaml_nesting.append(index)
        try:
            return super().compose_node(parent, index)
        finally:
            self.yaml_nesting.pop()


MAX_YAML_DEPTH = 32  # the config tree is two levels deep; lists of lists are the most a value needs
MAX_CONFIG_BYTES = 1 << 20


def _safe_yaml(text: str) -> Any:
    loader = _PlainLoader(text)
    loader.yaml_nesting = []
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} does not exist")
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise UserError(f"config file {p} is larger than {MAX_CONFIG_BYTES} bytes: is it a config file?")
        with open(p, "rb") as f:
            text = f.read(MAX_CONFIG_BYTES + 1).decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"config file {p} is not UTF-8 text: save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    try:
        data = _safe_yaml(text)
    except _YamlTooDeep:
        raise UserError(f"config file {p} nests deeper than {MAX_YAML_DEPTH} levels: a config is a mapping of "
                        "keys to values") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        what = f" ({problem})" if problem and "alias" in problem else ""
        raise UserError(f"config file {p} is not valid YAML{where}{what}: fix it or pass key=value overrides") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must hold a mapping of keys to values")
    return data


def pool_geometry(cfg: ModelConfig) -> tuple[int, int]:
    """(window, stride): overlapping 3/2 as the paper, or the 2/2 of its ablation."""
    return (3, 2) if cfg.pooling == "overlap" else (2, 2)


def pooled_size(side: int, window: int, stride: int, ceil: bool) -> int:
    """Output side of a max-pool: floor as PyTorch and Caffe, or ceil as cuda-convnet (outputsX=0), whose last
    window may hang over the edge (it is then taken over the pixels inside)."""
    if ceil:
        return -(-(side - window) // stride) + 1
    return (side - window) // stride + 1


def layer_sizes(cfg: ModelConfig, input_size: int) -> list[int]:
    """Side of each conv layer's output (before its pooling) for a square input, from the layer formulas;
    ValueError when the input is too small for the layers."""
    sides = []
    side = input_size
    window, stride = pool_geometry(cfg)
    for k, s, p, pooled in zip(cfg.kernels, cfg.strides, cfg.pads, cfg.pool_after):
        side = (side + 2 * p - k) // s + 1
        if side < 1:
            raise ValueError(f"input of {input_size} pixels is too small for this network")
        sides.append(side)
        if pooled:
            side = pooled_size(side, window, stride, cfg.pool_ceil)
        if side < 1:
            raise ValueError(f"input of {input_size} pixels is too small for this network")
    return sides


def feature_map_size(cfg: ModelConfig, input_size: int) -> int:
    """Side of the last conv block's output for a square input, from the layer formulas."""
    side = layer_sizes(cfg, input_size)[-1]
    if cfg.pool_after[-1]:
        window, stride = pool_geometry(cfg)
        side = pooled_size(side, window, stride, cfg.pool_ceil)
    return side


def parameter_estimate(cfg: ModelConfig, input_size: int) -> int:
    """About how many parameters the net has (exactly, without towers or local layers): to refuse a config
    that would exhaust memory before building it."""
    widths = [w // 2 for w in cfg.widths[:-1]] + [cfg.widths[-1]] if cfg.towers == 1 and cfg.halve_single_tower \
        else list(cfg.widths)
    total, in_ch = 0, 3
    sides = layer_sizes(cfg, input_size)
    for i, (w, k) in enumerate(zip(widths, cfg.kernels)):
        per_position = sides[i] ** 2 if cfg.local and cfg.local[i] else 1
        total += per_position * (w * in_ch * k * k + w)
        in_ch = w
    side = cfg.adaptive_pool or feature_map_size(cfg, input_size)
    flat = in_ch * side * side
    for width in [*cfg.fc, cfg.num_classes]:
        total += flat * width + width
        flat = width
    return total


MAX_PARAMETERS = 2_000_000_000  # 8 GB of float32 weights before gradients and velocities: surely a typo


def validate(cfg: Config) -> None:
    """Ranges and consistency that types alone do not catch."""
    m, d, o, t = cfg.model, cfg.data, cfg.optim, cfg.train
    n = len(m.widths)
    for name in ("kernels", "strides", "pads", "split", "lrn_after", "pool_after", "bias_one"):
        if len(getattr(m, name)) != n:
            raise UserError(f"model.{name} has {len(getattr(m, name))} entries but model.widths has {n}")
    for name in ("local", "init_stds"):
        if getattr(m, name) and len(getattr(m, name)) != n:
            raise UserError(f"model.{name} has {len(getattr(m, name))} entries but model.widths has {n} "
                            "(or give [] for the default)")
    if o.layer_weight_decay and len(o.layer_weight_decay) != n + len(m.fc) + 1:
        raise UserError(f"optim.layer_weight_decay needs one value per weighted layer: {n + len(m.fc) + 1} "
                        f"({n} conv, {len(m.fc) + 1} FC), got {len(o.layer_weight_decay)}")
    if any(m.local) and m.towers != 1:
        raise UserError("locally connected layers (model.local) are built for one tower: set model.towers=1")
    checks = [
        (n >= 1, "model.widths needs at least one conv layer"),
        (all(w > 0 for w in m.widths), "model.widths must be positive"),
        (all(k >= 1 for k in m.kernels) and all(s >= 1 for s in m.strides) and all(p >= 0 for p in m.pads),
         "model.kernels and model.strides must be at least 1, model.pads at least 0"),
        (0 <= t.seed < 2 ** 63, "train.seed must be a whole number from 0 to 2^63 - 1"),
        (m.adaptive_pool >= 0, "model.adaptive_pool must be >= 0"),
        (all(0 < s < math.inf for s in m.init_stds), "model.init_stds must be positive"),
        (all(0 <= w < math.inf for w in o.layer_weight_decay), "optim.layer_weight_decay values must be >= 0"),
        (all(w > 0 for w in m.fc), "model.fc sizes must be positive"),
        (m.num_classes >= 2, "model.num_classes must be at least 2"),
        (m.towers in (1, 2), "model.towers must be 1 or 2"),
        (0.0 <= m.dropout < 1.0, "model.dropout must be in [0, 1)"),
        (m.lrn_size >= 1, "model.lrn_size must be at least 1"),
        (m.init_std > 0, "model.init_std must be positive"),
        (d.image_size > 0 and d.crop > 0, "data.image_size and data.crop must be positive"),
        (d.crop <= d.image_size, "data.crop must not exceed data.image_size"),
        (d.pca_std >= 0, "data.pca_std must be >= 0"),
        (0.0 <= d.val_fraction < 1.0, "data.val_fraction must be in [0, 1)"),
        (o.batch_size > 0, "optim.batch_size must be positive"),
        (0 < o.lr < math.inf, "optim.lr must be positive"),  # and finite: inf would only turn into NaN
        (0.0 <= o.momentum < 1.0, "optim.momentum must be in [0, 1)"),
        (o.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (o.patience >= 1 and o.drops >= 0, "optim.patience must be >= 1 and optim.drops >= 0"),
        (0.0 < o.factor < 1.0, "optim.factor must be in (0, 1)"),
        (t.epochs > 0, "train.epochs must be positive"),
        (t.log_every > 0, "train.log_every must be positive"),
        (t.keep_last >= 1, "train.keep_last must be at least 1"),
        (t.checkpoint_every >= 0 and t.max_steps >= 0, "train.checkpoint_every and max_steps must be >= 0"),
        (t.prefetch >= 1, "train.prefetch must be at least 1"),
        (t.threads >= -1, "train.threads must be 0 (torch's default), a positive count, or -1 (the idle cores)"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    if d.image_size > 4096:
        raise UserError("data.image_size must be at most 4096 pixels")
    try:
        estimate = parameter_estimate(m, d.crop)
    except ValueError:
        raise UserError(f"a {d.crop}x{d.crop} crop is too small for these layers (model.kernels, strides, pads and "
                        "pooling shrink it below one pixel): raise data.crop or change the layers") from None
    if estimate > MAX_PARAMETERS:
        raise UserError(f"this net would have about {estimate:,} parameters ({estimate * 4 / 2**30:.0f} GiB of "
                        f"weights alone), more than {MAX_PARAMETERS:,}: check model.widths and model.fc")
    if m.towers == 2:
        for i, (w, s) in enumerate(zip(m.widths, m.split)):
            if w % 2:
                raise UserError(f"conv{i + 1} has {w} maps, which two towers cannot share: use an even width")
            if s and i > 0 and m.widths[i - 1] % 2:
                raise UserError(f"conv{i + 1} splits by tower but its input width is odd")


def build_config(
    preset: str = "paper",
    yaml_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """defaults <- preset <- YAML file <- overrides, validated."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}': choose one of {', '.join(PRESETS)}")
    cfg = Config(preset=preset)
    apply_overrides(cfg, PRESETS[preset])
    if yaml_path is not None:
        apply_overrides(cfg, load_yaml(yaml_path))
    apply_overrides(cfg, overrides or {})
    validate(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config saved by to_dict() (config.yaml, checkpoints)."""
    cfg = Config(preset=data.get("preset", "paper"))
    apply_overrides(cfg, {k: v for k, v in data.items() if k in _SECTIONS})
    validate(cfg)
    return cfg


def save_yaml(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def replace(cfg: Config, **sections: Any) -> Config:
    """A copy with whole sections swapped (tests, reproduce runs)."""
    return dataclasses.replace(cfg, **sections)
