"""Folding batch norms into the convolutions they follow, for inference.

A convolution followed by a frozen batch norm, or by a batch norm in eval mode (running statistics in use),
is one affine map: ``fold_frozen_batch_norms`` moves the norm's scale and shift into the convolution's
weight and bias and replaces the norm by ``nn.Identity`` (by its dropout and activation when the norm
applies them, as timm's ``BatchNormAct2d``). Every model's ``optimize_for_inference`` (the
detectors', the UNet's) uses it; outputs are unchanged up to float rounding.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from structured.backbones.transfer import FrozenBatchNorm2d, applies_activation


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


def _norm_remainder(norm: nn.Module) -> nn.Module:
    """What is left of ``norm`` once folded: nothing, or the dropout and activation it applies after normalising."""
    return nn.Sequential(norm.drop, norm.act) if applies_activation(norm) else nn.Identity()


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
    scale and shift go into the convolution's weight and bias and the norm becomes ``nn.Identity`` (or its
    dropout and activation, for a norm that applies them). The
    outputs are unchanged up to float rounding, with one pass over each activation less. Pairs are children
    of an ``nn.Sequential`` in a row, or ``convK``/``bnK`` attributes of one module (torchvision's ResNet
    blocks). The model's state dict changes (norm entries go, conv biases come): fold for inference only,
    after loading weights.
    """
    folded = 0
    for module in list(model.modules()):
        for conv_name, norm_name in _conv_norm_pairs(module):
            _fold_into_conv(getattr(module, conv_name), getattr(module, norm_name))
            setattr(module, norm_name, _norm_remainder(getattr(module, norm_name)))
            folded += 1
    return folded
