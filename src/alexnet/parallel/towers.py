"""The paper's model parallelism: tower 1 on one device, tower 2 on another (paper section 3.2).

`TwoTowerAlexNet` holds the weights of a grouped two-tower AlexNet (model.towers=2) cut in halves along
each layer's outputs, tower 1's half on the first device and tower 2's on the second:

- conv layers: each tower computes its own half of the maps. A grouped layer (conv2, conv4, conv5) reads
  only its own tower's maps. A dense layer reads everything: conv1 the whole image, conv3 both towers'
  maps, the other tower's half arriving by an explicit copy between the devices ("the GPUs communicate
  only in certain layers").
- activation, LRN and pooling act on each tower's own maps (LRN over its own channels, as groups=2 does
  on one device).
- hidden FC layers (fc6, fc7): each device computes half of the units from the whole input, gathered
  from both devices. The output layer (fc8) runs on the first device, where the loss is taken.

The state_dict has the grouped model's keys and shapes (features.3.weight is both towers' halves, tower 1
first), so a checkpoint of either loads into the other; optimizer states convert the same way
(`grouped_optimizer_state`, `load_grouped_optimizer_state`). For the same weights the outputs and gradients
are the grouped model's up to floating-point summation order. Dropout draws its masks per device, so with
dropout on the two layouts see different (equally distributed) masks.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from alexnet.errors import UserError
from alexnet.lrn.layer import LocalResponseNorm
from alexnet.model import AlexNet

TOWERS = 2


def parse_tower_devices(spec: str) -> list[torch.device]:
    """'cuda:0,cuda:1' -> two devices; UserError for anything else."""
    names = [s.strip() for s in spec.split(",")]
    if len(names) != TOWERS or not all(names):
        raise UserError(f"--towers {spec}: give two devices separated by a comma, e.g. cuda:0,cuda:1 (or cpu,cpu)")
    devices = []
    for name in names:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UserError(f"--towers {spec}: '{name}' is not a device; write cuda:N or cpu") from None
        if device.type == "cuda":
            visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if device.index is None or device.index >= visible:
                raise UserError(f"--towers {spec}: {name} is not among the {visible} visible GPU(s); name them "
                                "as cuda:0,cuda:1 (or cpu,cpu to try the towers on the CPU)")
        elif device.type != "cpu":
            raise UserError(f"--towers {spec}: only cuda:N and cpu devices are supported")
        devices.append(device)
    return devices


def _part(t: Tensor, device: torch.device) -> Tensor:
    return t if t.device == device else t.to(device)


def _gather(parts: Sequence[Tensor], device: torch.device) -> Tensor:
    """The whole activation on `device`: the parts concatenated along channels/units, tower 1 first."""
    if len(parts) == 1:
        return _part(parts[0], device)
    return torch.cat([_part(p, device) for p in parts], dim=1)


def _halve_conv(conv: nn.Conv2d, tower: int) -> nn.Conv2d:
    """Tower `tower`'s half of a conv layer: its half of the output maps, over the input it reads."""
    out_half = conv.out_channels // TOWERS
    in_channels = conv.in_channels // TOWERS if conv.groups == TOWERS else conv.in_channels
    half = nn.Conv2d(in_channels, out_half, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     bias=conv.bias is not None, dtype=conv.weight.dtype)
    with torch.no_grad():
        half.weight.copy_(conv.weight[tower * out_half:(tower + 1) * out_half])
        if conv.bias is not None:
            half.bias.copy_(conv.bias[tower * out_half:(tower + 1) * out_half])
    return half


def _halve_linear(linear: nn.Linear, tower: int) -> nn.Linear:
    out_half = linear.out_features // TOWERS
    half = nn.Linear(linear.in_features, out_half, bias=linear.bias is not None, dtype=linear.weight.dtype)
    with torch.no_grad():
        half.weight.copy_(linear.weight[tower * out_half:(tower + 1) * out_half])
        if linear.bias is not None:
            half.bias.copy_(linear.bias[tower * out_half:(tower + 1) * out_half])
    return half


def _per_tower_copy(module: nn.Module) -> nn.Module:
    """A parameter-free layer for one tower's maps; an LRN over both towers becomes one over its own."""
    if isinstance(module, LocalResponseNorm):
        if module.groups != TOWERS:
            raise ValueError(f"an LRN over {module.groups} group(s) cannot be split into two towers")
        return LocalResponseNorm(module.size, module.alpha, module.beta, module.k, module.literal, groups=1)
    if next(module.parameters(), None) is not None:
        raise ValueError(f"cannot split {type(module).__name__}, a layer with parameters, into towers")
    return copy.deepcopy(module)


class TwoTowerAlexNet(nn.Module):
    """A two-tower AlexNet with tower 1 on devices[0] and tower 2 on devices[1]. Input on any device;
    logits on devices[0]."""

    def __init__(self, grouped: AlexNet, devices: Sequence[torch.device | str]) -> None:
        super().__init__()
        if grouped.cfg.towers != TOWERS:
            raise UserError(f"--towers needs a two-tower model (model.towers=2); this config has "
                            f"{grouped.cfg.towers} tower: drop --towers or use a two-tower preset")
        if len(devices) != TOWERS:
            raise ValueError(f"two devices are needed, got {len(devices)}")
        self.cfg = grouped.cfg
        self.input_size = grouped.input_size
        self.devices = [torch.device(d) for d in devices]

        # features[i] / classifier[i] mirror the grouped model's index i; each holds one module per tower
        # (the output layer: one, on the first device). The *_kinds lists say how each reads its input.
        self.features = nn.ModuleList()
        self.feature_kinds: list[str] = []
        for module in grouped.features:
            if isinstance(module, nn.Conv2d):
                if module.groups not in (1, TOWERS):
                    raise ValueError(f"a conv layer with groups={module.groups} cannot be split into two towers")
                self.features.append(nn.ModuleList([_halve_conv(module, t) for t in range(TOWERS)]))
                self.feature_kinds.append("dense" if module.groups == 1 else "own")
            else:
                self.features.append(nn.ModuleList([_per_tower_copy(module) for _ in range(TOWERS)]))
                self.feature_kinds.append("elementwise")
        self.avgpool = copy.deepcopy(grouped.avgpool)  # identity, or a per-channel adaptive pool

        self.classifier = nn.ModuleList()
        self.classifier_kinds: list[str] = []
        modules = list(grouped.classifier)
        last_linear = max(i for i, m in enumerate(modules) if isinstance(m, nn.Linear))
        for i, module in enumerate(modules):
            if isinstance(module, nn.Linear) and i == last_linear:
                head = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                 dtype=module.weight.dtype)
                head.load_state_dict(module.state_dict())
                self.classifier.append(nn.ModuleList([head]))
                self.classifier_kinds.append("head")
            elif isinstance(module, nn.Linear):
                self.classifier.append(nn.ModuleList([_halve_linear(module, t) for t in range(TOWERS)]))
                self.classifier_kinds.append("dense")
            else:
                self.classifier.append(nn.ModuleList([_per_tower_copy(module) for _ in range(TOWERS)]))
                self.classifier_kinds.append("elementwise")

        for layers in (*self.features, *self.classifier):
            for tower, module in enumerate(layers):
                module.to(self.devices[tower])
        self.register_state_dict_post_hook(_to_grouped_keys)
        self.register_load_state_dict_pre_hook(_from_grouped_keys)

    @classmethod
    def from_grouped(cls, model: AlexNet, devices: Sequence[torch.device | str]) -> TwoTowerAlexNet:
        """The same weights as `model`, tower 1 on devices[0], tower 2 on devices[1]."""
        return cls(model, devices)

    def to_grouped(self, device: torch.device | str | None = None) -> AlexNet:
        """The same weights as one grouped AlexNet on `device` (default: the first tower's)."""
        model = AlexNet(self.cfg, self.input_size)
        model.load_state_dict(self.state_dict())
        return model.to(device or self.devices[0])

    # ------------------------------------------------------------------------------------------- forward
    def _conv_features(self, x: Tensor) -> list[Tensor]:
        parts = [x]  # the whole image, then one part per tower
        for layers, kind in zip(self.features, self.feature_kinds):
            if kind == "dense":  # sees everything: the other tower's maps cross over here
                parts = [layer(_gather(parts, dev)) for layer, dev in zip(layers, self.devices)]
            else:
                parts = [layer(p) for layer, p in zip(layers, parts)]
        return [torch.flatten(self.avgpool(p), 1) for p in parts]

    def _hidden(self, x: Tensor, stop_after_last_activation: bool) -> list[Tensor]:
        parts = self._conv_features(x)
        last_activation = max((i for i, k in enumerate(self.classifier_kinds[:-1])
                               if k == "elementwise" and not isinstance(self.classifier[i][0], nn.Dropout)),
                              default=-1)
        for i, (layers, kind) in enumerate(zip(self.classifier, self.classifier_kinds)):
            if kind == "head":
                break
            if kind == "dense":  # each device: half of the units, from the whole input
                parts = [layer(_gather(parts, dev)) for layer, dev in zip(layers, self.devices)]
            else:
                parts = [layer(p) for layer, p in zip(layers, parts)]
            if stop_after_last_activation and i == last_activation:
                break
        return parts

    def forward(self, x: Tensor) -> Tensor:
        parts = self._hidden(x, stop_after_last_activation=False)
        head = self.classifier[self.classifier_kinds.index("head")][0]
        return head(_gather(parts, self.devices[0]))

    def embed(self, x: Tensor) -> Tensor:
        """The last hidden layer (fc7) after its activation, before dropout, on the first device."""
        return _gather(self._hidden(x, stop_after_last_activation=True), self.devices[0])


# ------------------------------------------------------------------------------ state_dict in grouped layout
def _split_key(key: str, prefix: str) -> tuple[str, int] | None:
    """'features.3.1.weight' -> ('features.3.weight', 1); None for keys not of a tower layer."""
    parts = key[len(prefix):].split(".")
    if len(parts) < 4 or parts[0] not in ("features", "classifier") or not parts[2].isdigit():
        return None
    return prefix + ".".join([parts[0], parts[1], *parts[3:]]), int(parts[2])


def _to_grouped_keys(module: TwoTowerAlexNet, state_dict: dict[str, Any], prefix: str, _meta: Any) -> None:
    items = list(state_dict.items())
    state_dict.clear()
    pieces: dict[str, list[Tensor]] = {}
    for key, value in items:
        split = _split_key(key, prefix) if key.startswith(prefix) else None
        if split is None:
            state_dict[key] = value
            continue
        grouped_key, _tower = split
        if grouped_key not in pieces:
            pieces[grouped_key] = []
            state_dict[grouped_key] = None  # keeps the grouped model's key order
        pieces[grouped_key].append(value)
    first = module.devices[0]
    for grouped_key, values in pieces.items():
        state_dict[grouped_key] = values[0] if len(values) == 1 else torch.cat([_part(v, first) for v in values])


def _tower_count(module: TwoTowerAlexNet, section: str, index: int) -> int:
    return len(getattr(module, section)[index])


def _from_grouped_keys(module: TwoTowerAlexNet, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        parts = key[len(prefix):].split(".")
        if len(parts) != 3 or parts[0] not in ("features", "classifier") or not parts[1].isdigit():
            continue
        section, index, name = parts[0], int(parts[1]), parts[2]
        if index >= len(getattr(module, section)):
            continue  # left for load_state_dict to report as unexpected
        value = state_dict.pop(key)
        towers = _tower_count(module, section, index)
        chunks = value.chunk(towers, dim=0) if towers > 1 else (value,)
        for tower, chunk in enumerate(chunks):
            state_dict[f"{prefix}{section}.{index}.{tower}.{name}"] = chunk


# ------------------------------------------------------------------------------ optimizer state, grouped layout
def _positions(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """Parameter names of each optimizer group, in the order torch numbers them in a state_dict."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def _grouped_order(names: list[str]) -> list[str]:
    """The grouped parameters a group's tower parameters belong to, in order of first appearance.

    Tower parameters are ordered layer by layer, tower by tower, so this is the grouped model's order."""
    order: dict[str, None] = {}
    for n in names:
        split = _split_key(n, "")
        order[split[0] if split else n] = None
    return list(order)


def grouped_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """optimizer.state_dict() in the grouped model's layout (unchanged for any other model).

    Per-parameter tensors (momentum, the paper's velocity) are concatenated like the weights they belong to.
    """
    state = optimizer.state_dict()
    if not isinstance(model, TwoTowerAlexNet):
        return state
    first = model.devices[0]
    groups, new_state, flat = [], {}, 0
    position = 0
    for group, names in zip(state["param_groups"], _positions(model, optimizer)):
        per_name: dict[str, list[dict[str, Any]]] = {}
        for name in names:
            split = _split_key(name, "")
            key = split[0] if split else name
            per_name.setdefault(key, [])
            if position in state["state"]:
                per_name[key].append(state["state"][position])
            position += 1
        indices = []
        for key in _grouped_order(names):
            pieces = per_name[key]
            if pieces:
                new_state[flat] = {k: (torch.cat([_part(p[k], first) for p in pieces])
                                       if isinstance(v, Tensor) and v.dim() > 0 and len(pieces) > 1 else v)
                                   for k, v in pieces[0].items()}
            indices.append(flat)
            flat += 1
        groups.append(dict(group, params=indices))
    return {"state": new_state, "param_groups": groups}


def load_grouped_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an optimizer state saved in the grouped layout (by either model) into `optimizer`."""
    if not isinstance(model, TwoTowerAlexNet):
        optimizer.load_state_dict(state)
        return
    groups, new_state, position = [], {}, 0
    saved_groups = state["param_groups"]
    tower_groups = _positions(model, optimizer)
    if len(saved_groups) != len(tower_groups):
        raise ValueError("the optimizer state has a different number of parameter groups")
    for saved, names in zip(saved_groups, tower_groups):
        grouped_index = dict(zip(_grouped_order(names), saved["params"]))
        indices = []
        for name in names:
            split = _split_key(name, "")
            key, tower = split if split else (name, 0)
            section, index = key.split(".")[:2]
            towers = _tower_count(model, section, int(index))
            saved_state = state["state"].get(grouped_index[key])
            if saved_state is not None:
                new_state[position] = {k: (v.chunk(towers, dim=0)[tower]
                                           if isinstance(v, Tensor) and v.dim() > 0 and towers > 1 else v)
                                       for k, v in saved_state.items()}
            indices.append(position)
            position += 1
        groups.append(dict(saved, params=indices))
    optimizer.load_state_dict({"state": new_state, "param_groups": groups})
