"""VGG family (vgg11/13/16/19 and their ``_bn`` variants) on torchvision's definitions, and SSD's form of them.

Levels: the last feature map at each stride of ``features``: ``c1`` = conv2_2, ``c2`` = conv3_x, ``c3`` =
conv4_3 (SSD's source), ``c4`` = conv5_3 (Faster R-CNN's source), ``c5`` = pool5 (stride 32). Module names
are torchvision's (``features``, ``avgpool``, ``classifier``).

``vgg16_ssd`` (SSD300's and SSD512's) is VGG16 in the SSD paper's form: pool3 in ceil mode
(a 300 input gives 38x38 at conv4_3), pool5 a 3x3 stride-1 pooling, and ``fc`` appended: fc6 as a 3x3
convolution with dilation 6 (1024 channels) and fc7 as a 1x1 convolution (1024), each with ReLU,
Xavier-initialised (a classification checkpoint, ``pretrained``, loads everything else). Its levels are
``c1``, ``c2``, ``c3`` = conv4_3 (stride 8, 512 channels) and ``c4`` = fc7 (stride 16, 1024 channels), the
maps SSD predicts from.
"""

from __future__ import annotations

from dataclasses import replace

import torchvision
from torch import nn

from structured.backbones.base import (
    Step,
    TrunkSpec,
    features_trunk_spec,
    make_features_trunk,
    register_backbones,
)

VGGS = ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn")
SSD_SUFFIX = "_ssd"
FC_CHANNELS = 1024
FC6_DILATION = 6
FC7_STRIDE = 16


def ssd_fc_layers(in_channels: int) -> nn.Sequential:
    """SSD's fc6 (3x3, dilation 6) and fc7 (1x1), 1024 channels each, with ReLU, Xavier-initialised."""
    layers = nn.Sequential(
        nn.Conv2d(in_channels, FC_CHANNELS, 3, padding=FC6_DILATION, dilation=FC6_DILATION),
        nn.ReLU(inplace=True),
        nn.Conv2d(FC_CHANNELS, FC_CHANNELS, 1),
        nn.ReLU(inplace=True),
    )
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return layers


def make_vgg_ssd_trunk(arch: str, *, num_classes: int, pretrained: str | None) -> tuple[nn.Module, TrunkSpec]:
    """torchvision's VGG (untrained) in SSD's form (see the module docstring) and its levels and taps."""
    trunk = getattr(torchvision.models, arch.removesuffix(SSD_SUFFIX))(weights=None, num_classes=num_classes)
    pools = [index for index, layer in enumerate(trunk.features) if isinstance(layer, nn.MaxPool2d)]
    trunk.features[pools[2]].ceil_mode = True
    trunk.features[pools[4]] = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
    spec = features_trunk_spec(trunk, head=("avgpool", "classifier"))
    trunk.fc = ssd_fc_layers(spec.channels["c4"])
    steps = [replace(step, level=None) if step.level == "c4" else step for step in spec.steps]
    channels = {**spec.channels, "c4": FC_CHANNELS}
    return trunk, TrunkSpec(steps=(*steps, Step("fc", FC7_STRIDE, "c4")), channels=channels, head=spec.head,
                            added_modules=("fc",))


register_backbones(VGGS, make_features_trunk)
register_backbones(("vgg16" + SSD_SUFFIX,), make_vgg_ssd_trunk)
