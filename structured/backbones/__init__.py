"""Backbones (trunks -> named multi-scale features) and necks; importing this registers them all.

Every family module registers its names in ``structured.registry.BACKBONES`` and the FPN in ``NECKS``
when imported; this package imports them all, so ``import structured.backbones`` is enough. ``timm.py``
adds the ``timm:<model>`` names (timm itself is imported only when such a name is looked up).
"""

from structured.backbones import (
    alexnet,
    efficientnet,
    fpn,
    fractalnet,
    inception,
    mobilenet,
    resnet,
    timm,
    vgg,
)
from structured.backbones.base import Backbone, build_backbone
from structured.backbones.fpn import FPN
from structured.backbones.torchvision_keys import split_torchvision_backbone_state, torchvision_backbone_key
from structured.backbones.transfer import (
    FrozenBatchNorm2d,
    convert_norm_layers,
    freeze,
    parameter_groups,
    unfreeze,
)

__all__ = [
    "FPN",
    "Backbone",
    "FrozenBatchNorm2d",
    "alexnet",
    "build_backbone",
    "convert_norm_layers",
    "efficientnet",
    "fpn",
    "fractalnet",
    "freeze",
    "inception",
    "mobilenet",
    "parameter_groups",
    "resnet",
    "split_torchvision_backbone_state",
    "timm",
    "torchvision_backbone_key",
    "unfreeze",
    "vgg",
]
