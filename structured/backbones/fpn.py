"""Feature Pyramid Network neck (Lin et al. 2017), registered in ``NECKS`` as ``"fpn"``.

Contract: built from a backbone's ``out_channels`` and ``strides`` dicts (levels may have different
channel counts), ``forward(features) -> OrderedDict[str, Tensor]`` with ``out_channels`` channels at every
level, named like its inputs with ``c`` turned into ``p`` (``c2..c5 -> p2..p5``; ``c5_entry -> p5_entry``),
then the extra levels named by stride (``p6``, ``p7``). ``out_channels`` and ``strides`` dicts describe
the outputs, so a neck looks like a backbone to the heads.

Top-down pathway: each input gets a lateral 1x1 convolution; from the coarsest level down, the running
map is upsampled (nearest, to the lateral's exact size) and added to the lateral; every sum goes through
an output 3x3 convolution. Extra levels: ``"maxpool"`` adds P6 = max-pool (kernel 1, stride 2) of the
last output (Faster R-CNN); ``"conv"`` adds P6 = 3x3 stride-2 convolution of the last output
(``extra_from="p"``) or of the last input (``"c"``), and P7 = 3x3 stride-2 convolution of ReLU(P6)
(RetinaNet). With the same weights this equals torchvision's ``FeaturePyramidNetwork`` with
``LastLevelMaxPool`` / ``LastLevelP6P7``; ``torchvision_keys.py`` maps its keys onto ours.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from structured.backbones.transfer import group_norm
from structured.registry import NECKS

EXTRA_LEVELS = (None, "maxpool", "conv")
EXTRA_FROM = ("p", "c")
FPN_NORMS = (None, "gn", "bn")


def fpn_conv(in_channels: int, out_channels: int, kernel_size: int, norm_layer: str | None) -> nn.Sequential:
    """Convolution ('same' padding; bias only without norm) optionally followed by GroupNorm or BatchNorm.

    BatchNorm (``"bn"``) is the layout of torchvision's ``*_resnet50_fpn_v2`` models.
    """
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm_layer is None
    )
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    layers: list[nn.Module] = [conv]
    if norm_layer == "gn":
        layers.append(group_norm(out_channels))
    elif norm_layer == "bn":
        layers.append(nn.BatchNorm2d(out_channels))
    return nn.Sequential(*layers)


def output_name(level: str) -> str:
    """The FPN output name of input level ``level`` (``c4 -> p4``)."""
    return "p" + level[1:]


@NECKS.register("fpn")
class FPN(nn.Module):
    """Feature Pyramid Network over a backbone's levels (see the module docstring)."""

    def __init__(
        self,
        *,
        in_channels: Mapping[str, int],
        in_strides: Mapping[str, int],
        out_channels: int = 256,
        extra_levels: str | None = "maxpool",
        extra_from: str = "p",
        norm_layer: str | None = None,
    ) -> None:
        """``in_channels``/``in_strides``: the backbone's ``out_channels``/``strides`` dicts (same keys)."""
        super().__init__()
        _check_arguments(in_channels, in_strides, extra_levels, extra_from, norm_layer)
        self.in_levels = tuple(in_channels)
        self.lateral = nn.ModuleDict(
            {lv: fpn_conv(c, out_channels, 1, norm_layer) for lv, c in in_channels.items()}
        )
        self.output = nn.ModuleDict(
            {lv: fpn_conv(out_channels, out_channels, 3, norm_layer) for lv in in_channels}
        )
        self.extra_levels = extra_levels
        self.extra_from = extra_from
        self.extra = nn.ModuleDict()
        last_level, last_stride = self.in_levels[-1], in_strides[self.in_levels[-1]]
        extra_names = [f"p{round(math.log2(last_stride)) + k}" for k in (1, 2)]
        if extra_levels == "conv":
            p6_in = in_channels[last_level] if extra_from == "c" else out_channels
            self.extra[extra_names[0]] = _stride2_conv(p6_in, out_channels)
            self.extra[extra_names[1]] = _stride2_conv(out_channels, out_channels)
        n_extra = {None: 0, "maxpool": 1, "conv": 2}[extra_levels]
        self.strides = {output_name(lv): s for lv, s in in_strides.items()}
        self.strides.update(
            {name: last_stride * 2 ** (k + 1) for k, name in enumerate(extra_names[:n_extra])}
        )
        self.out_channels = dict.fromkeys(self.strides, out_channels)

    def forward(self, features: Mapping[str, Tensor]) -> OrderedDict[str, Tensor]:
        """Pyramid of ``features`` (a backbone's output holding at least this FPN's input levels)."""
        missing = [level for level in self.in_levels if level not in features]
        if missing:
            raise KeyError(f"FPN input lacks levels {missing}; it was built for {list(self.in_levels)}")
        last = self.lateral[self.in_levels[-1]](features[self.in_levels[-1]])
        outputs = [self.output[self.in_levels[-1]](last)]
        for level in reversed(self.in_levels[:-1]):
            lateral = self.lateral[level](features[level])
            last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            outputs.insert(0, self.output[level](last))
        outputs.extend(self._extra_outputs(outputs[-1], features[self.in_levels[-1]]))
        return OrderedDict(zip(self.strides, outputs, strict=True))

    def _extra_outputs(self, last_output: Tensor, last_input: Tensor) -> list[Tensor]:
        if self.extra_levels == "maxpool":
            return [F.max_pool2d(last_output, kernel_size=1, stride=2)]
        if self.extra_levels == "conv":
            p6_conv, p7_conv = self.extra.values()
            p6 = p6_conv(last_input if self.extra_from == "c" else last_output)
            return [p6, p7_conv(F.relu(p6))]
        return []


def _stride2_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)
    return conv


def _check_arguments(
    in_channels: Mapping[str, int],
    in_strides: Mapping[str, int],
    extra_levels: str | None,
    extra_from: str,
    norm_layer: str | None,
) -> None:
    if not in_channels or list(in_channels) != list(in_strides):
        raise ValueError(
            f"FPN in_channels and in_strides must name the same levels in the same order, "
            f"got {list(in_channels)} and {list(in_strides)}"
        )
    if any(not level.startswith("c") for level in in_channels):
        raise ValueError(f"FPN input levels must be named c<k>..., got {list(in_channels)}")
    strides = list(in_strides.values())
    if any(b < a for a, b in itertools.pairwise(strides)):
        raise ValueError(f"FPN input levels must come in non-decreasing stride order, got {dict(in_strides)}")
    if extra_levels not in EXTRA_LEVELS:
        raise ValueError(f"extra_levels must be one of {EXTRA_LEVELS}, got {extra_levels!r}")
    if extra_from not in EXTRA_FROM:
        raise ValueError(f"extra_from must be one of {EXTRA_FROM}, got {extra_from!r}")
    if norm_layer not in FPN_NORMS:
        raise ValueError(f"FPN norm_layer must be one of {FPN_NORMS}, got {norm_layer!r}")
