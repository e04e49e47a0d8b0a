"""MobileNet family: v1 (written here), v2, v3-large and v3-small (torchvision's definitions).

Levels: the last block of ``features`` at each stride; ``c5`` is the final 1x1 convolution (1024 / 1280 /
960 / 576 channels). MobileNetV3 also offers the tap ``c5_entry``: the output of the first stride-32 block
(``features.13`` for large, ``features.9`` for small), which torchvision's MobileNetV3 FPN detectors feed
to their FPN beside ``c5`` (both at stride 32). Module names are torchvision's (``features``,
``classifier``).

``mobilenet_v3_large_reduced`` / ``mobilenet_v3_small_reduced`` are torchvision's ``reduced_tail=True``
trunks (the last stage's channels halved: ``c5`` has 480 / 288), SSDlite's backbone. Their first stride-32
block runs as its sub-layers, so they also offer the tap ``c4_expansion``: that block's 1x1 expansion
(stride 16, 672 / 288 channels), the map torchvision's SSDlite takes before the stride-2 depthwise
convolution; ``c5_entry`` is the block's output as before.

MobileNet v1 (Howard et al. 2017, width 1.0): a 3x3 stride-2 convolution followed by 13
depthwise-separable blocks (3x3 depthwise + 1x1 pointwise, each with batch norm and ReLU), global average
pooling and a linear classifier: 4,231,976 parameters for 1000 classes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from functools import partial

import torchvision
from torch import Tensor, nn

from structured.backbones.base import (
    Step,
    TrunkSpec,
    features_trunk_spec,
    make_features_trunk,
    register_backbones,
)

ENTRY_TAP = "c5_entry"
ENTRY_STRIDE = 32
EXPANSION_TAP = "c4_expansion"
REDUCED_SUFFIX = "_reduced"
# (output channels, stride) of the 13 depthwise-separable blocks of MobileNet v1.
MOBILENET_V1_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
MOBILENET_V1_STEM_CHANNELS = 32


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """Convolution (no bias, 'same' padding) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def depthwise_separable(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """MobileNet v1 block: 3x3 depthwise convolution (carrying the stride), then 1x1 pointwise."""
    return nn.Sequential(
        OrderedDict(
            depthwise=conv_bn_relu(in_channels, in_channels, 3, stride, groups=in_channels),
            pointwise=conv_bn_relu(in_channels, out_channels, 1),
        )
    )


class MobileNetV1(nn.Module):
    """MobileNet v1, width multiplier 1.0: ``features`` -> global average pooling -> ``classifier``."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers = [conv_bn_relu(3, MOBILENET_V1_STEM_CHANNELS, 3, stride=2)]
        in_channels = MOBILENET_V1_STEM_CHANNELS
        for out_channels, stride in MOBILENET_V1_BLOCKS:
            layers.append(depthwise_separable(in_channels, out_channels, stride))
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits [B, num_classes] of images ``x`` [B,3,H,W]."""
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def make_mobilenet_v1_trunk(
    arch: str, *, num_classes: int, pretrained: str | None
) -> tuple[nn.Module, TrunkSpec]:
    """Our MobileNet v1 (untrained) and its levels."""
    trunk = MobileNetV1(num_classes=num_classes)
    return trunk, features_trunk_spec(trunk, head=("avgpool", "classifier"))


def make_mobilenet_v3_trunk(
    arch: str, *, num_classes: int, pretrained: str | None
) -> tuple[nn.Module, TrunkSpec]:
    """torchvision's ``arch`` (untrained) and its levels, plus the ``c5_entry`` tap."""
    trunk, spec = make_features_trunk(arch, num_classes=num_classes, pretrained=pretrained)
    entry = next(i for i, step in enumerate(spec.steps) if step.stride == ENTRY_STRIDE)
    steps = list(spec.steps)
    steps[entry] = replace(steps[entry], level=ENTRY_TAP)
    channels = dict(spec.channels, **{ENTRY_TAP: trunk.features[entry].out_channels})
    return trunk, TrunkSpec(steps=tuple(steps), channels=channels, head=spec.head)


def make_mobilenet_v3_reduced_trunk(
    arch: str, *, num_classes: int, pretrained: str | None
) -> tuple[nn.Module, TrunkSpec]:
    """torchvision's ``arch`` with ``reduced_tail=True`` (untrained), its levels and the two taps."""
    trunk = getattr(torchvision.models, arch.removesuffix(REDUCED_SUFFIX))(
        weights=None, num_classes=num_classes, reduced_tail=True)
    spec = features_trunk_spec(trunk, head=("avgpool", "classifier"))
    entry = next(i for i, step in enumerate(spec.steps) if step.stride == ENTRY_STRIDE)
    block = trunk.features[entry].block
    sub_steps = [Step(f"features.{entry}.block.{index}", ENTRY_STRIDE) for index in range(len(block))]
    sub_steps[0] = Step(sub_steps[0].module, ENTRY_STRIDE // 2, EXPANSION_TAP)
    sub_steps[-1] = replace(sub_steps[-1], level=ENTRY_TAP)
    steps = (*spec.steps[:entry], *sub_steps, *spec.steps[entry + 1:])
    channels = dict(spec.channels, **{ENTRY_TAP: trunk.features[entry].out_channels,
                                      EXPANSION_TAP: block[0].out_channels})
    return trunk, TrunkSpec(steps=steps, channels=channels, head=spec.head)


register_backbones(("mobilenet_v1",), make_mobilenet_v1_trunk)
register_backbones(("mobilenet_v2",), partial(make_features_trunk, head=("classifier",)))
register_backbones(("mobilenet_v3_large", "mobilenet_v3_small"), make_mobilenet_v3_trunk)
register_backbones(("mobilenet_v3_large_reduced", "mobilenet_v3_small_reduced"), make_mobilenet_v3_reduced_trunk)
