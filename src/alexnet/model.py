"""The network of SPEC section 1, built from a ModelConfig.

One class covers every preset: conv layers (conv -> activation -> LRN -> max-pool, as the paper orders
them) in `features`, then the fully connected layers in `classifier`. Module names and indices follow
torchvision's alexnet (features.N, classifier.N), so the `one-tower` preset loads torchvision's weights
unchanged.

Two towers on one device are grouped convolutions: the layers marked `split` (conv2, conv4, conv5) see
only their own tower's maps (groups=2), conv1, conv3 and the FC layers see both. Channel order is tower 1
first, and each tower's LRN normalizes over its own maps only (groups=2 in the LRN). How a grouped
layer is computed is `tower_convs` (TowerConv2d): one grouped convolution, one convolution per tower, or
`auto` (the default): grouped, except conv1 on the CPU, per tower. The same weights and result in every
mode; the speed differs only where docs/PERFORMANCE.md says.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alexnet.config import ModelConfig
from alexnet.geometry import feature_map_size, layer_sizes, pool_geometry, pooled_size
from alexnet.lrn.layer import LocalResponseNorm


def conv_widths(cfg: ModelConfig) -> list[int]:
    """The conv widths actually built: one tower of half width except the last conv layer (paper, 3.2)."""
    if cfg.towers == 1 and cfg.halve_single_tower:
        return [w // 2 for w in cfg.widths[:-1]] + [cfg.widths[-1]]
    return list(cfg.widths)


class LocallyConnected2d(nn.Module):
    """A convolution without weight sharing: every output position has its own filter bank and biases.

    cuda-convnet's `local` layer (used by the paper's CIFAR-10 nets); PyTorch has none. For an input of
    side `input_size` the output has side (input_size + 2 padding - k) // stride + 1 = S, and
      weight: (S, S, out_channels, in_channels, k, k)   the filters at each output position (row, column)
      bias:   (out_channels, S, S)                      one bias per output unit
    out[n, o, y, x] = bias[o, y, x] + sum_{c,i,j} weight[y, x, o, c, i, j] * in_pad[n, c, y*stride + i, x*stride + j]

    Computed as one batched matrix product over positions: the input's patches (F.unfold) times each
    position's filters; autograd gives the backward pass.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
                 input_size: int) -> None:
        super().__init__()
        side = (input_size + 2 * padding - kernel_size) // stride + 1
        if side < 1:
            raise ValueError(f"input of {input_size} pixels is too small for a {kernel_size}x{kernel_size} kernel")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.input_size, self.output_size = input_size, side
        self.weight = nn.Parameter(torch.empty(side, side, out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels, side, side))
        nn.init.normal_(self.weight, 0.0, 0.01)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            raise ValueError(f"LocallyConnected2d built for {self.input_size}x{self.input_size} inputs, "
                             f"got {x.shape[-2]}x{x.shape[-1]}")
        side, positions = self.output_size, self.output_size * self.output_size
        patches = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # (N, C*k*k, L)
        # (L, N, C*k*k) @ (L, C*k*k, O): one small matrix product per output position
        filters = self.weight.reshape(positions, self.out_channels, -1).transpose(1, 2)
        out = torch.bmm(patches.permute(2, 0, 1), filters.to(patches.dtype))  # (L, N, O)
        out = out.permute(1, 2, 0).reshape(n, self.out_channels, side, side)
        return out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, input_size={self.input_size}")


class TowerConv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same state_dict) whose towers can be computed as separate convolutions.

    The layer's outputs belong to `towers` towers (tower 1's first); a split layer (groups == towers) also
    takes each tower's inputs from that tower's slice only. tower_convs:
      grouped: one convolution (grouped for a split layer);
      split:   one convolution per tower (its slice of the inputs, or all of them where groups == 1), the
               outputs concatenated: the two GPUs' work of the paper, on one device;
      auto:    grouped, except a 3-channel stem (conv1) on the CPU, which goes per tower. oneDNN computes the
               weight gradient of conv1 at 96 outputs by im2col and GEMM but at 48 by its faster direct JIT
               kernel (docs/PERFORMANCE.md, "Design measurements"). Other layers gain nothing from
               splitting on the CPU, and GPUs do one call best.
    Every mode gives the same result (up to float summation order).
    """

    def __init__(self, *args, tower_convs: str = "grouped", towers: int = 1,  # noqa: ANN002
                 **kwargs) -> None:  # noqa: ANN003
        super().__init__(*args, **kwargs)
        self.tower_convs = tower_convs
        self.towers = towers

    def pieces(self, x: Tensor) -> int:
        """How many convolutions compute this layer for input x (1: the plain nn.Conv2d call)."""
        # each piece is then an ungrouped convolution: groups is 1 or one per tower
        if (self.towers == 1 or self.padding_mode != "zeros" or self.groups not in (1, self.towers)
                or self.out_channels % self.towers):
            return 1
        if self.tower_convs == "split":
            return self.towers
        stem_on_cpu = x.device.type == "cpu" and self.groups == 1 and self.in_channels <= 4
        return self.towers if self.tower_convs == "auto" and stem_on_cpu else 1

    def forward(self, x: Tensor) -> Tensor:
        pieces = self.pieces(x)
        if pieces == 1:
            return super().forward(x)
        weights = self.weight.chunk(pieces, dim=0)
        biases = self.bias.chunk(pieces) if self.bias is not None else [None] * pieces
        inputs = x.chunk(pieces, dim=1) if self.groups == pieces else [x] * pieces
        return torch.cat([F.conv2d(xi, w, b, self.stride, self.padding, self.dilation)
                          for xi, w, b in zip(inputs, weights, biases)], dim=1)


class AlexNet(nn.Module):
    """The configurable AlexNet. `forward` gives logits; `embed` gives the last hidden FC layer (fc7)."""

    def __init__(self, cfg: ModelConfig, input_size: int = 224) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_size = input_size
        widths = conv_widths(cfg)
        window, stride = pool_geometry(cfg)
        towers = cfg.towers

        layers: list[nn.Module] = []
        in_ch = 3
        sides = layer_sizes(cfg, input_size)
        for i, out_ch in enumerate(widths):
            groups = towers if cfg.split[i] else 1
            if cfg.local and cfg.local[i]:
                before = sides[i - 1] if i else input_size
                if i and cfg.pool_after[i - 1]:
                    before = pooled_size(before, window, stride, cfg.pool_ceil)
                layers.append(LocallyConnected2d(in_ch, out_ch, cfg.kernels[i], cfg.strides[i], cfg.pads[i], before))
            else:
                layers.append(TowerConv2d(in_ch, out_ch, cfg.kernels[i], cfg.strides[i], cfg.pads[i], groups=groups,
                                          tower_convs=cfg.tower_convs, towers=towers))
            layers.append(_activation(cfg.activation))
            if cfg.lrn and cfg.lrn_after[i]:
                layers.append(
                    LocalResponseNorm(
                        cfg.lrn_size, cfg.lrn_alpha, cfg.lrn_beta, cfg.lrn_k, cfg.lrn_literal, groups=towers
                    )
                )
            if cfg.pool_after[i]:
                layers.append(nn.MaxPool2d(window, stride, ceil_mode=cfg.pool_ceil))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)

        if cfg.adaptive_pool:
            self.avgpool = nn.AdaptiveAvgPool2d(cfg.adaptive_pool)
            side = cfg.adaptive_pool
        else:
            self.avgpool = nn.Identity()
            side = feature_map_size(cfg, input_size)
        flat = in_ch * side * side

        head: list[nn.Module] = []
        for width in cfg.fc:
            if cfg.dropout_position == "before" and cfg.dropout > 0:
                head.append(nn.Dropout(cfg.dropout))
            head.append(nn.Linear(flat, width))
            head.append(_activation(cfg.activation))
            if cfg.dropout_position == "after" and cfg.dropout > 0:
                head.append(nn.Dropout(cfg.dropout))
            flat = width
        head.append(nn.Linear(flat, cfg.num_classes))
        self.classifier = nn.Sequential(*head)
        if cfg.init == "paper":
            self.reset_parameters_paper()
        elif cfg.init == "kaiming":
            self.reset_parameters_kaiming()

    @torch.no_grad()
    def reset_parameters_paper(self) -> None:
        """Paper 5: weights ~ N(0, 0.01^2); biases 1 in conv2, conv4, conv5, fc6, fc7, else 0.
        (model.init_stds gives each conv layer its own std, as cuda-convnet's initW.)"""
        cfg = self.cfg
        convs = [m for m in self.features if isinstance(m, (nn.Conv2d, LocallyConnected2d))]
        stds = cfg.init_stds or [cfg.init_std] * len(convs)
        for conv, one, std in zip(convs, cfg.bias_one, stds):
            nn.init.normal_(conv.weight, 0.0, std)
            nn.init.constant_(conv.bias, 1.0 if one else 0.0)
        linears = [m for m in self.classifier if isinstance(m, nn.Linear)]
        for j, linear in enumerate(linears):
            nn.init.normal_(linear.weight, 0.0, cfg.fc_init_std or cfg.init_std)
            hidden = j < len(linears) - 1
            nn.init.constant_(linear.bias, 1.0 if (hidden and cfg.fc_bias_one) else 0.0)

    @torch.no_grad()
    def reset_parameters_kaiming(self) -> None:
        """He et al. 2015: weights N(0, gain^2 / fan_in), biases 0, so that small nets on unit-scale inputs
        keep their activations' scale through every layer (PyTorch's default init shrinks it ~6x per ReLU
        layer, which stalls the first epochs of a deep net). Not the paper's: an option for small presets."""
        layers = [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear, LocallyConnected2d))]
        for m in layers:
            if isinstance(m, LocallyConnected2d):  # fan-in is one position's filter: in_channels x k x k
                fan_in = m.in_channels * m.kernel_size ** 2
                gain = nn.init.calculate_gain("relu" if self.cfg.activation == "relu" else "tanh")
                nn.init.normal_(m.weight, 0.0, gain / fan_in ** 0.5)
                nn.init.zeros_(m.bias)
                continue
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu" if self.cfg.activation == "relu" else "tanh")
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))

    def embed(self, x: Tensor) -> Tensor:
        """The last hidden layer's activations (fc7 for the paper: 4096-d), as used for retrieval (Fig. 4).

        Taken after the activation and before dropout; call in eval mode for deterministic vectors.
        """
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        hidden = list(self.classifier)[:-1]
        if not any(isinstance(m, nn.Linear) for m in hidden):
            return x  # no hidden FC layer (figure1): the flattened conv features
        last_act = max(i for i, m in enumerate(hidden) if not isinstance(m, (nn.Linear, nn.Dropout)))
        for m in hidden[: last_act + 1]:
            x = m(x)
        return x


def _activation(name: str) -> nn.Module:
    return nn.ReLU(inplace=True) if name == "relu" else nn.Tanh()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
