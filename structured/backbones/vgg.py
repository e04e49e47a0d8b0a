"""VGG family (vgg11/13/16/19 and their ``_bn`` variants) on torchvision's definitions.

Levels: the last feature map at each stride of ``features``: ``c1`` = conv2_2, ``c2`` = conv3_x, ``c3`` =
conv4_3 (SSD's source), ``c4`` = conv5_3 (Faster R-CNN's source), ``c5`` = pool5 (stride 32). Module names
are torchvision's (``features``, ``avgpool``, ``classifier``).
"""

from __future__ import annotations

from structured.backbones.base import make_features_trunk, register_backbones

VGGS = ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn")


register_backbones(VGGS, make_features_trunk)
