"""Key mapping from torchvision's detection backbones (``BackboneWithFPN``) onto our backbone + FPN.

Contract: torchvision's detection models hold ``backbone.body`` (the trunk's children, via
``IntermediateLayerGetter``) and ``backbone.fpn`` (``FeaturePyramidNetwork``). With ``key`` one of
``model.backbone.state_dict()``'s keys (no ``backbone.`` prefix), ``torchvision_backbone_key`` says
whether it belongs to our ``Backbone`` or our ``FPN`` and its name there:

    body.<name>                         -> backbone  trunk.<name>            (trunk="resnet")
    body.<i>.<rest>                     -> backbone  trunk.features.<i>.<rest> (trunk="mobilenet")
    fpn.inner_blocks.<j>.<k>.<param>    -> neck      lateral.<level_j>.<k>.<param>
    fpn.layer_blocks.<j>.<k>.<param>    -> neck      output.<level_j>.<k>.<param>
    fpn.extra_blocks.p6|p7.<w|b>        -> neck      extra.<p-name>.<w|b>   (LastLevelP6P7)

``k`` is 0 for the convolution and 1 for the batch norm that follows it in the ``_v2`` models' FPN
(``norm_layer="bn"`` in ours). ``level_j`` is the j-th of the FPN's input levels: ``c2..c5`` for ``fasterrcnn_resnet50_fpn``,
``c5_entry, c5`` for ``fasterrcnn_mobilenet_v3_large_fpn``. The matching modules are
``BACKBONES.build("resnet50", out_levels=("c2", "c3", "c4", "c5"), norm_layer="frozen_bn",
frozen_stages=2)`` (torchvision's COCO ResNet-50 weights also need ``norm_eps=0.0``: torchvision sets
eps=0 on their frozen batch norms) and ``BACKBONES.build("mobilenet_v3_large", out_levels=("c5_entry",
"c5"), norm_layer="frozen_bn", norm_eps=1e-5, frozen_stages=3)`` (torchvision's detection MobileNetV3
uses frozen batch norm with its default eps 1e-5, not the classifier's 1e-3), each followed by
``NECKS.build("fpn", in_channels=backbone.out_channels, in_strides=backbone.strides)``
(``extra_levels="maxpool"``). ``num_batches_tracked`` keys map too; frozen batch norm drops them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from torch import Tensor

TRUNK_PREFIXES = {"resnet": "trunk.", "mobilenet": "trunk.features."}
FPN_BLOCK_RE = re.compile(
    r"fpn\.(inner_blocks|layer_blocks)\.(\d+)\.([01])\.(weight|bias|running_mean|running_var|num_batches_tracked)$"
)
FPN_EXTRA_RE = re.compile(r"fpn\.extra_blocks\.(p6|p7)\.(weight|bias)$")
DEFAULT_LAST_STRIDE = 32
OUR_FPN_BLOCKS = {"inner_blocks": "lateral", "layer_blocks": "output"}


def torchvision_backbone_key(
    key: str, trunk: str, in_levels: Sequence[str], in_strides: Mapping[str, int] | None = None
) -> tuple[str, str]:
    """``("backbone" | "neck", our key)`` for a key of torchvision's ``BackboneWithFPN`` state dict.

    ``trunk``: ``"resnet"`` or ``"mobilenet"``; ``in_levels``: our FPN's input levels in order;
    ``in_strides``: their strides (only needed for P6/P7 keys, default stride 32 for the last level).
    """
    if trunk not in TRUNK_PREFIXES:
        raise ValueError(f"trunk must be one of {sorted(TRUNK_PREFIXES)}, got {trunk!r}")
    if key.startswith("body."):
        return "backbone", TRUNK_PREFIXES[trunk] + key[len("body.") :]
    block = FPN_BLOCK_RE.match(key)
    if block:
        kind, index, layer, param = block.groups()
        if int(index) >= len(in_levels):
            raise KeyError(
                f"{key!r}: FPN block {index} but only {len(in_levels)} input levels {list(in_levels)}"
            )
        return "neck", f"{OUR_FPN_BLOCKS[kind]}.{in_levels[int(index)]}.{layer}.{param}"
    extra = FPN_EXTRA_RE.match(key)
    if extra:
        return "neck", f"extra.{_extra_level_name(extra.group(1), in_levels, in_strides)}.{extra.group(2)}"
    raise KeyError(f"{key!r} is not a key of torchvision's BackboneWithFPN (body.* or fpn.*)")


def split_torchvision_backbone_state(
    state_dict: Mapping[str, Tensor],
    trunk: str,
    in_levels: Sequence[str],
    in_strides: Mapping[str, int] | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(our backbone state dict, our FPN state dict) from a torchvision ``BackboneWithFPN`` state dict."""
    parts: dict[str, dict[str, Tensor]] = {"backbone": {}, "neck": {}}
    for key, value in state_dict.items():
        part, our_key = torchvision_backbone_key(key, trunk, in_levels, in_strides)
        parts[part][our_key] = value
    return parts["backbone"], parts["neck"]


def _extra_level_name(
    torchvision_name: str, in_levels: Sequence[str], in_strides: Mapping[str, int] | None
) -> str:
    last_stride = in_strides[in_levels[-1]] if in_strides else DEFAULT_LAST_STRIDE
    return f"p{round(math.log2(last_stride)) + (1 if torchvision_name == 'p6' else 2)}"
