"""EfficientNet B0..B7 on torchvision's definitions.

Levels: the last stage of ``features`` at each stride; ``c5`` is the final 1x1 convolution (1280 channels
for B0). Module names are torchvision's (``features``, ``avgpool``, ``classifier``).
"""

from __future__ import annotations

from structured.backbones.base import make_features_trunk, register_backbones

EFFICIENTNETS = tuple(f"efficientnet_b{k}" for k in range(8))


register_backbones(EFFICIENTNETS, make_features_trunk)
