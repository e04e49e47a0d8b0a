"""Semantic segmentation losses: cross-entropy plus soft Dice, pixels marked 255 left out.

Both functions take the network's logits ``[B, K, H, W]`` and the class maps ``[B, H, W]`` (int64, classes
``0..C`` with 0 the background, ``IGNORE_INDEX`` = 255 for pixels to skip) and return
``{"loss_ce": ..., "loss_dice": ...}``, scalars averaged over the pixels that are not ignored:

- ``multiclass_losses`` (``K = C + 1`` softmax channels): ``loss_ce`` is the cross-entropy of the class
  of each pixel; ``loss_dice`` is ``1 - (2 sum(p g) + 1) / (sum(p) + sum(g) + 1)`` per class over the
  batch's valid pixels (``p`` the softmax probability, ``g`` the one-hot truth), averaged over the
  ``C + 1`` classes;
- ``binary_losses`` (``K = 1`` sigmoid channel, maps of 0 and 1): ``loss_ce`` is the binary cross-entropy,
  ``loss_dice`` the same soft Dice of the foreground alone.

The ``+ 1`` keeps Dice defined for a class absent from a batch (it then only pulls that class's predicted
probability down). A batch whose pixels are all ignored gives losses of 0 that still back-propagate (zero
gradients), so a training step on it is harmless.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from structured.types import IGNORE_INDEX

DICE_SMOOTHING = 1.0


def soft_dice_loss(probabilities: Tensor, truth: Tensor, valid: Tensor) -> Tensor:
    """Mean over channels of ``1 - soft Dice`` of ``probabilities`` against ``truth`` (both ``[B, K, H, W]``)
    on the pixels where ``valid`` (``[B, 1, H, W]`` bool) holds."""
    probabilities = probabilities * valid
    truth = truth * valid
    dims = (0, 2, 3)
    overlap = (probabilities * truth).sum(dims)
    total = probabilities.sum(dims) + truth.sum(dims)
    return (1 - (2 * overlap + DICE_SMOOTHING) / (total + DICE_SMOOTHING)).mean()


def _valid_pixels(target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """``[B, 1, H, W]`` bool of the pixels that count, and their number (at least 1, to divide by)."""
    valid = (target != ignore_index)[:, None]
    return valid, valid.sum().clamp(min=1)


def multiclass_losses(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> dict[str, Tensor]:
    """``loss_ce`` and ``loss_dice`` of softmax ``logits [B, C+1, H, W]`` against ``target [B, H, W]``."""
    logits = logits.float()
    valid, count = _valid_pixels(target, ignore_index)
    loss_ce = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum") / count
    classes = torch.where(valid[:, 0], target, 0)
    truth = F.one_hot(classes, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)  # [B, C+1, H, W]
    loss_dice = soft_dice_loss(logits.softmax(dim=1), truth, valid)
    return {"loss_ce": loss_ce, "loss_dice": loss_dice}


def binary_losses(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> dict[str, Tensor]:
    """``loss_ce`` (binary cross-entropy) and ``loss_dice`` of sigmoid ``logits [B, 1, H, W]`` against a
    ``target [B, H, W]`` of 0 (background) and 1 (foreground)."""
    logits = logits.float()
    valid, count = _valid_pixels(target, ignore_index)
    truth = (target == 1)[:, None].to(logits.dtype)  # [B, 1, H, W]
    per_pixel = F.binary_cross_entropy_with_logits(logits, truth, reduction="none")
    loss_ce = (per_pixel * valid).sum() / count
    loss_dice = soft_dice_loss(logits.sigmoid(), truth, valid)
    return {"loss_ce": loss_ce, "loss_dice": loss_dice}


def segmentation_losses(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> dict[str, Tensor]:
    """``binary_losses`` for one output channel, else ``multiclass_losses``."""
    if logits.shape[1] == 1:
        return binary_losses(logits, target, ignore_index)
    return multiclass_losses(logits, target, ignore_index)
