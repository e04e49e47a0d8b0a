"""AlexNet on torchvision's definition (one-tower variant).

Its first convolution has stride 4, so there is no ``c1``: levels are ``c2`` (conv1), ``c3`` (conv2),
``c4`` (conv5) and ``c5`` (the last pooling), each the last feature map at its stride. Convolutions are
unpadded in places, so maps are a little smaller than ``H / stride``.
"""

from __future__ import annotations

from structured.backbones.base import make_features_trunk, register_backbones

register_backbones(("alexnet",), make_features_trunk)
