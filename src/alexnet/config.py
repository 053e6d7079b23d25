"""One config tree, the single source of every default.

Defaults are the paper's numbers (SPEC.md); presets are data (dicts of overrides), not code paths.
A run's config is resolved from: defaults <- preset <- YAML file <- key=value overrides, and saved
with the run (config.yaml) so that it can be rebuilt exactly.
"""

from __future__ import annotations

import difflib
import math
import re
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from alexnet.errors import UserError
from alexnet.geometry import parameter_estimate
from alexnet.presets import PRESETS


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
    tower_convs: Literal["auto", "grouped", "split"] = "auto"  # towers on one device: one grouped conv or one per tower
    halve_single_tower: bool = True  # towers=1 -> half width except the last conv (the paper's comparison)
    activation: Literal["relu", "tanh"] = "relu"  # relu | tanh (Figure 1)
    lrn: bool = True  # master switch for every LRN layer
    lrn_size: int = 5  # n: maps in each normalization window
    lrn_alpha: float = 1e-4  # alpha (divided by n per term unless lrn_literal)
    lrn_beta: float = 0.75  # the exponent beta
    lrn_k: float = 2.0  # the additive constant k (cuda-convnet's CIFAR nets: 1)
    lrn_literal: bool = False  # False: alpha/n per term (authors' code, Caffe, torch); True: paper's text
    pooling: Literal["overlap", "plain"] = "overlap"  # overlap: window 3 stride 2; plain: 2/2 (ablation)
    dropout: float = 0.5  # probability of zeroing a hidden FC unit in training (0: no dropout)
    dropout_position: Literal["after", "before"] = "after"  # dropout after fc6/fc7 (paper) or before (torchvision)
    adaptive_pool: int = 0  # >0: AdaptiveAvgPool2d(n) before the FC layers (torchvision's layout)
    init: Literal["paper", "torchvision", "kaiming"] = "paper"  # paper: N(0, init_std^2), biases 0/1
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
    pca_scale: Literal["sqrt", "eigenvalue"] = "sqrt"  # sqrt: s_i = sqrt(l_i) (code); eigenvalue: l_i
    normalize: Literal["mean-image", "imagenet"] = "mean-image"  # mean-image: x - mean image (paper)
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
    rule: Literal["paper", "torch"] = "paper"  # paper: v = m v - wd lr w - lr g; w += v | torch: torch.optim.SGD's rule
    # plateau: /10 when val error stalls | milestones | constant | linear: from lr (after any warm-up) down to 0
    # at the last step of train.epochs, step by step (not in the paper; short budgets)
    schedule: Literal["plateau", "milestones", "constant", "linear"] = "plateau"
    patience: int = 3  # epochs without improvement before a drop
    drops: int = 3  # the paper divided the rate by 10 three times, then stopped
    factor: float = 0.1  # what the rate is multiplied by at each drop
    min_improvement: float = 0.0  # in percentage points of top-1 error
    milestones: list[int] = field(default_factory=list)  # epochs at which lr *= factor (schedule=milestones)
    warmup_epochs: float = 0.0  # linear warm-up (not in the paper; for large batches and short schedules)
    # none: lr as given | linear: lr x batch_size / 128, the paper's batch (large-batch mode, Goyal et al. 2017;
    # pair it with warmup_epochs, e.g. 5)
    lr_scaling: Literal["none", "linear"] = "none"
    # share of the target's probability spread evenly over all classes (0: the paper's plain cross-entropy;
    # Szegedy et al. 2016; not in the paper)
    label_smoothing: float = 0.0
    # weight decay per weighted layer (conv/local layers, then FC layers, in order), as cuda-convnet's `wc`;
    # [] for weight_decay on every layer
    layer_weight_decay: list[float] = field(default_factory=list)


@dataclass
class TrainConfig:
    """How a run is executed: devices, precision, logging, checkpoints."""

    epochs: int = 90  # passes over the training split at most
    # wall-clock budget of training with its validation, in seconds (0: none; `--budget 30m`): train.epochs is
    # then chosen to fit it from timed steps, checked after every epoch, and written into the run's config
    budget_s: float = 0.0
    seed: int = 0  # every random draw (init, order, augmentation, dropout) follows from it
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto: bf16 on CUDA and on CPUs with bf16 arithmetic (AVX-512 BF16, AMX, ARM BF16), fp32 on others | fp32 | bf16
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # auto: on for CUDA and the CPU (faster on every CPU kind measured, docs/PERFORMANCE.md) | on | off
    channels_last: Literal["auto", "on", "off"] = "auto"
    compile: bool = False  # torch.compile the model
    threads: int = 0  # CPU threads for torch (0: torch's default, one per core; -1: the cores idle at start)
    keep_freed_memory: bool = True  # reuse freed host memory instead of unmapping it (glibc; alexnet.runtime)
    eval_ten_crop: bool = False  # validation during training: centre crop (fast) or ten crops
    log_every: int = 50  # steps between logged training metrics (host sync happens only then)
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: only at epoch ends)
    keep_last: int = 2  # checkpoints kept besides best.pt
    on_nonfinite: Literal["stop", "skip"] = "stop"  # stop | skip: what a NaN/inf loss does
    max_nonfinite: int = 10  # consecutive skipped steps before stopping anyway
    prefetch: int = 2  # batches prepared ahead by the loader thread
    store_on_device: bool = False  # hold the uint8 store in device memory (when it fits)
    gpu_decode: bool = False  # a JPEG store's batches decoded on the GPU (nvJPEG), not on CPU threads
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


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "train": TrainConfig}

def _choices(cls: type, name: str) -> tuple[str, ...]:
    """The allowed values of a field annotated Literal[...] (beside the field itself), else ()."""
    hint = typing.get_type_hints(cls)[name]
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()


CHOICES: dict[str, tuple[str, ...]] = {
    f"{section}.{f.name}": _choices(cls, f.name)
    for section, cls in _SECTIONS.items() for f in fields(cls) if _choices(cls, f.name)
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
            origin = typing.get_origin(annotation)
            kind = ("str" if origin is typing.Literal else str(annotation) if origin is not None
                    else getattr(annotation, "__name__", str(annotation)))
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
    elif origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if value in allowed:
            return value
        raise UserError(f"config key '{key}' must be one of {', '.join(allowed)}, got {value!r}")
    elif annotation is str:
        if isinstance(value, str):
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


MAX_PARAMETERS = 2_000_000_000  # 8 GB of float32 weights before gradients and velocities: surely a typo


def check_config(cfg: Config) -> None:
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
        (0.0 <= o.label_smoothing < 1.0, "optim.label_smoothing must be in [0, 1)"),
        (t.epochs > 0, "train.epochs must be positive"),
        (t.budget_s >= 0, "train.budget_s must be >= 0 (0: no budget)"),
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
    check_config(cfg)
    return cfg


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config saved by to_dict() (config.yaml, checkpoints)."""
    cfg = Config(preset=data.get("preset", "paper"))
    apply_overrides(cfg, {k: v for k, v in data.items() if k in _SECTIONS})
    check_config(cfg)
    return cfg
