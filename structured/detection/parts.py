"""Pieces every detector shares: its backbone and neck built from recipe sections, targets without crowd
boxes, the input sizes, and the preparation for inference (batch norms folded, channels-last).

``BackboneSection`` / ``NeckSection`` are the annotations a detector builder gives its ``backbone`` and
``neck`` parameters (registered parts, validated against their builders by ``structured.config``);
``build_backbone_and_neck`` builds them. ``prepare_for_inference`` is what each detector's
``optimize_for_inference()`` does: eval mode, every frozen or eval-mode batch norm that follows a
convolution folded into it (``fold_frozen_batch_norms``), and optionally the channels-last memory layout.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Annotated, Any

import torch
from torch import Tensor, nn

from structured.backbones import Backbone, FrozenBatchNorm2d
from structured.config import RegisteredPart
from structured.registry import BACKBONES, NECKS
from structured.types import Target, select_instances

BackboneSection = Annotated[Mapping[str, Any], RegisteredPart(BACKBONES, filled_by_model=("classifier", "num_classes"))]
"""A registered backbone's section, ``{name: resnet50, out_levels: [c2, c3, c4, c5], frozen_stages: 2, ...}``."""
NeckSection = Annotated[Mapping[str, Any] | None, RegisteredPart(NECKS, filled_by_model=("in_channels", "in_strides"))]
"""A registered neck's section, ``{name: fpn, out_channels: 256, ...}`` (its inputs come from the backbone), or
``None`` for none."""


def check_part_section(section: Mapping[str, Any], part: str) -> None:
    """Raise ``ValueError`` unless ``section`` is a mapping with a registered part's ``name``."""
    if not isinstance(section, Mapping) or not isinstance(section.get("name"), str):
        raise ValueError(f"{part} must be a mapping with a registered 'name' and its options, got {section!r}")


def build_backbone_and_neck(
    backbone: Mapping[str, Any], neck: Mapping[str, Any] | None
) -> tuple[Backbone, nn.Module | None, dict[str, int], dict[str, int]]:
    """The backbone and optional neck of two sections, and the channels and strides of the features they give."""
    backbone_options = {key: value for key, value in backbone.items() if key != "name"}
    trunk = BACKBONES.build(backbone["name"], **backbone_options, classifier=False)
    if neck is None:
        return trunk, None, trunk.out_channels, trunk.strides
    neck_options = {key: value for key, value in neck.items() if key != "name"}
    built = NECKS.build(neck["name"], in_channels=trunk.out_channels, in_strides=trunk.strides, **neck_options)
    return trunk, built, built.out_channels, built.strides


def original_sizes_of(images: list[Tensor]) -> list[tuple[int, int]]:
    """``(height, width)`` of each input image."""
    return [(int(image.shape[-2]), int(image.shape[-1])) for image in images]


def without_crowd(target: Target) -> Target:
    """``target`` without its crowd instances (``iscrowd`` = 1), which take no part in training."""
    if "iscrowd" not in target:
        return target
    return select_instances(target, target["iscrowd"] == 0)


def _is_foldable_norm(module: nn.Module) -> bool:
    """A frozen batch norm, or a batch norm in eval mode with running statistics (an affine map either way)."""
    if isinstance(module, FrozenBatchNorm2d):
        return True
    return (isinstance(module, nn.BatchNorm2d) and not module.training and module.track_running_stats
            and module.affine)


def _fold_into_conv(conv: nn.Conv2d, norm: nn.Module) -> None:
    scale = norm.weight.detach() * (norm.running_var + norm.eps).rsqrt()
    shift = norm.bias.detach() - norm.running_mean * scale
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(shift)
    with torch.no_grad():
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(bias * scale + shift, requires_grad=conv.weight.requires_grad)


def _conv_norm_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Names of (conv, foldable norm) children where the norm directly follows the conv in ``module``."""
    children = dict(module.named_children())
    names = list(children)
    if isinstance(module, nn.Sequential):
        candidates = list(itertools.pairwise(names))
    else:
        candidates = [
            (name, "bn" + name[4:])
            for name in names
            if name.startswith("conv") and "bn" + name[4:] in children
        ]
    return [
        (conv, norm)
        for conv, norm in candidates
        if isinstance(children[conv], nn.Conv2d) and _is_foldable_norm(children[norm])
    ]


def fold_frozen_batch_norms(model: nn.Module) -> int:
    """Fold every frozen (or eval-mode) batch norm that directly follows a convolution into it; returns the count.

    A convolution followed by a frozen batch norm, or by a batch norm in eval mode (its running statistics
    in use), is an affine map of the convolution's output, so the norm's
    scale and shift go into the convolution's weight and bias and the norm becomes ``nn.Identity``. The
    outputs are unchanged up to float rounding, with one pass over each activation less. Pairs are children
    of an ``nn.Sequential`` in a row, or ``convK``/``bnK`` attributes of one module (torchvision's ResNet
    blocks). The model's state dict changes (norm entries go, conv biases come): fold for inference only,
    after loading weights.
    """
    folded = 0
    for module in list(model.modules()):
        for conv_name, norm_name in _conv_norm_pairs(module):
            _fold_into_conv(getattr(module, conv_name), getattr(module, norm_name))
            setattr(module, norm_name, nn.Identity())
            folded += 1
    return folded


def prepare_for_inference(model: nn.Module, channels_last: bool) -> bool:
    """Put ``model`` in eval mode, fold its batch norms, and move it to channels-last when asked.

    Outputs equal the unprepared model's up to float rounding (see ``fold_frozen_batch_norms``); the state
    dict changes and trainable batch norms are gone, so prepare after loading weights, for inference only.
    Returns ``channels_last``, which the detector keeps to lay out its input batch the same way.
    """
    model.eval()
    fold_frozen_batch_norms(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return channels_last
