"""ResNet family (resnet18..152, ResNeXt, wide ResNet) on torchvision's definitions.

Levels: ``c1`` = stem (conv1-bn1-relu, stride 2), ``c2``..``c5`` = ``layer1``..``layer4`` (strides 4..32).
The trunk is torchvision's ``ResNet`` with its module names (``conv1, bn1, layer1..layer4, fc``), so a
torchvision classification state dict, or the ``body.`` part of a torchvision detection backbone, maps
onto ``trunk.`` unchanged.
"""

from __future__ import annotations

import torchvision
from torch import nn

from structured.backbones.base import Step, TrunkSpec, register_backbones

RESNETS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
)
RESNET_STEPS = (
    Step("conv1", 2),
    Step("bn1", 2),
    Step("relu", 2, "c1"),
    Step("maxpool", 4),
    Step("layer1", 4, "c2"),
    Step("layer2", 8, "c3"),
    Step("layer3", 16, "c4"),
    Step("layer4", 32, "c5"),
)


def make_resnet_trunk(arch: str, *, num_classes: int, pretrained: str | None) -> tuple[nn.Module, TrunkSpec]:
    """torchvision's ``arch`` (untrained) and its levels."""
    trunk = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    channels = {"c1": trunk.conv1.out_channels}
    for index in range(1, 5):
        layer = getattr(trunk, f"layer{index}")
        channels[f"c{index + 1}"] = [m for m in layer[-1].modules() if isinstance(m, nn.Conv2d)][
            -1
        ].out_channels
    return trunk, TrunkSpec(steps=RESNET_STEPS, channels=channels, head=("fc",))


register_backbones(RESNETS, make_resnet_trunk)
