"""Semantic segmentation metrics from a confusion matrix accumulated over batches, on any device.

Contract: ``ConfusionMatrix(num_classes)`` accumulates ``update(prediction, target)`` where ``target`` is an
integer ``[B, H, W]`` (or ``[H, W]``) map of class indices ``0..C-1`` with ``ignore_index`` (255) for pixels
to skip, and ``prediction`` either the same kind of label map or ``[B, C, H, W]`` scores (argmax over C).
``matrix[i, j]`` counts pixels of true class ``i`` predicted as ``j``; it lives on the device of the data.
``compute()`` returns :class:`SegmentationMetrics`: per-class IoU = TP / (TP + FP + FN), Dice =
2 TP / (2 TP + FP + FN), pixel accuracy = trace / total, mean class accuracy. A class that appears neither
in the targets nor in the predictions has ``nan`` IoU and Dice and is left out of the means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from structured.io import json_float


@dataclass(frozen=True)
class SegmentationMetrics:
    """Per-class IoU and Dice (``nan`` for absent classes), their means, pixel and mean class accuracy."""

    iou: Tensor  # [C] float64
    dice: Tensor  # [C] float64
    mean_iou: float
    mean_dice: float
    pixel_accuracy: float
    mean_class_accuracy: float

    def as_dict(self, class_names: list[str] | None = None) -> dict[str, Any]:
        """JSON-ready dict (``nan`` becomes ``None``), classes keyed by name when given."""
        names = class_names or [str(i) for i in range(len(self.iou))]
        return {
            "mIoU": json_float(self.mean_iou),
            "mean_dice": json_float(self.mean_dice),
            "pixel_accuracy": json_float(self.pixel_accuracy),
            "mean_class_accuracy": json_float(self.mean_class_accuracy),
            "per_class": {
                name: {"IoU": json_float(float(iou)), "Dice": json_float(float(dice))}
                for name, iou, dice in zip(names, self.iou.tolist(), self.dice.tolist(), strict=True)
            },
        }


class ConfusionMatrix:
    """Pixel confusion matrix ``[C, C]`` (rows: truth, columns: prediction) accumulated over batches."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add a batch: ``prediction`` label map ``[B, H, W]`` or scores ``[B, C, H, W]``; ``target`` ``[B, H, W]``."""
        labels = self._predicted_labels(prediction, target)
        if labels.shape != target.shape:
            raise ValueError(
                f"prediction labels {list(labels.shape)} and target {list(target.shape)} differ in shape"
            )
        valid = target != self.ignore_index
        truth, predicted = target[valid].long(), labels[valid].long()
        self._check_range(truth, "target")
        self._check_range(predicted, "prediction")
        counts = torch.bincount(truth * self.num_classes + predicted, minlength=self.num_classes**2)
        self.matrix = self.matrix.to(counts.device) + counts.reshape(self.num_classes, self.num_classes)

    def compute(self) -> SegmentationMetrics:
        """Metrics of everything accumulated (float64, on the CPU)."""
        matrix = self.matrix.double().cpu()
        true_pos = matrix.diag()
        false_pos = matrix.sum(dim=0) - true_pos
        false_neg = matrix.sum(dim=1) - true_pos
        union = true_pos + false_pos + false_neg
        present = union > 0
        iou = torch.where(present, true_pos / union.clamp(min=1), torch.full_like(true_pos, float("nan")))
        dice_denominator = 2 * true_pos + false_pos + false_neg
        dice = torch.where(
            present, 2 * true_pos / dice_denominator.clamp(min=1), torch.full_like(true_pos, float("nan"))
        )
        class_pixels = matrix.sum(dim=1)
        class_accuracy = true_pos[class_pixels > 0] / class_pixels[class_pixels > 0]
        total = matrix.sum()
        return SegmentationMetrics(
            iou=iou,
            dice=dice,
            mean_iou=float(iou.nanmean()),
            mean_dice=float(dice.nanmean()),
            pixel_accuracy=float(true_pos.sum() / total) if total > 0 else float("nan"),
            mean_class_accuracy=float(class_accuracy.mean()) if len(class_accuracy) else float("nan"),
        )

    def _predicted_labels(self, prediction: Tensor, target: Tensor) -> Tensor:
        if prediction.is_floating_point():
            if prediction.ndim != target.ndim + 1 or prediction.shape[-3] != self.num_classes:
                raise ValueError(
                    f"score prediction must be [B, {self.num_classes}, H, W] for target {list(target.shape)}, "
                    f"got {list(prediction.shape)}"
                )
            return prediction.argmax(dim=-3)
        return prediction

    def _check_range(self, labels: Tensor, name: str) -> None:
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"{name} holds class {int(labels.min() if labels.min() < 0 else labels.max())}, outside "
                f"0..{self.num_classes - 1} (and not ignore_index {self.ignore_index})"
            )
