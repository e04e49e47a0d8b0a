"""Evaluating a semantic segmenter on a dataset: the pixel confusion matrix, its metrics, speed, report files.

A segmenter is any model of the segmenter contract (docs/architecture.md): ``model(images)`` returns per
image a dict with ``mask`` int64 ``[H, W]`` at the input size. ``confusion_on_dataset`` accumulates the
``[C + 1, C + 1]`` confusion matrix (rows: true class, columns: predicted; background = class 0; target
pixels 255 ignored) of a share of a dataset, so ranks can split the images and add their matrices.
``semantic_stats`` names its metrics:

- ``mIoU``: the mean over classes (background included) of IoU = TP / (TP + FP + FN); ``Dice``: the mean
  of 2 TP / (2 TP + FP + FN); classes absent from both truth and prediction are left out of both means;
- ``fg_IoU`` / ``fg_Dice``: foreground (every class but 0) against background, the figure the DSB2018
  nuclei results quote (for one class: that class's IoU / Dice);
- ``pixel_accuracy`` and ``mean_class_accuracy``; ``IoU_<class>`` per class present.

``evaluate_segmenter_on_dataset`` is the whole of ``tools/eval.py`` for a segmenter: the per-class table,
the means, the speed line (``measure_pipeline``: decode, ``raw_outputs``, ``postprocess``), and
``metrics.json`` and ``confusion_matrix.png`` in the output folder. The trainer's validation uses the same
functions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from structured.data.loading import collate_detection, worker_errors_unwrapped
from structured.evaluation.metrics_file import EvaluatedModel, save_metrics
from structured.evaluation.plots import plot_confusion_matrix
from structured.evaluation.segmentation import ConfusionMatrix
from structured.evaluation.speed import SpeedResult, measure_pipeline
from structured.io import json_float

SEMANTIC_METRIC_NAMES = ("mIoU", "fg_IoU", "Dice", "fg_Dice", "pixel_accuracy", "mean_class_accuracy")
"""The names :func:`semantic_stats` always gives (``train.best_metric`` picks one)."""


def confusion_on_dataset(model: nn.Module, dataset: Dataset, indices: Sequence[int], device: torch.device,
                         batch_size: int = 2, workers: int = 0) -> Tensor:
    """The int64 ``[C + 1, C + 1]`` pixel confusion matrix (CPU) of ``model`` on the items ``indices``.

    Each image is predicted at its own size (no batch padding); runs in eval mode.
    """
    loader = DataLoader(dataset, batch_size=batch_size, sampler=list(indices), num_workers=workers,
                        collate_fn=collate_detection)
    confusion = ConfusionMatrix(len(dataset.class_names))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for images, targets in worker_errors_unwrapped(loader):
            predictions = model([image.to(device) for image in images])
            for prediction, target in zip(predictions, targets, strict=True):
                confusion.update(prediction["mask"].cpu(), target["semantic"])
    model.train(was_training)
    return confusion.matrix.cpu()


def _foreground_scores(matrix: Tensor) -> tuple[float, float]:
    """IoU and Dice of every class but 0 taken together against class 0."""
    true_pos = float(matrix[1:, 1:].sum())
    false_pos = float(matrix[0, 1:].sum())
    false_neg = float(matrix[1:, 0].sum())
    union = true_pos + false_pos + false_neg
    if union == 0:
        return math.nan, math.nan
    return true_pos / union, 2 * true_pos / (union + true_pos)


def semantic_stats(matrix: Tensor, class_names: Sequence[str]) -> dict[str, float]:
    """The named metrics of a confusion matrix (module docstring): ``mIoU``, ``fg_IoU``, ``Dice``, ...,
    ``IoU_<class>`` for each class present in the truth or the prediction."""
    confusion = ConfusionMatrix(len(class_names))
    confusion.matrix = matrix.to(torch.int64).cpu()
    metrics = confusion.compute()
    fg_iou, fg_dice = _foreground_scores(confusion.matrix)
    stats = {"mIoU": metrics.mean_iou, "fg_IoU": fg_iou, "Dice": metrics.mean_dice, "fg_Dice": fg_dice,
             "pixel_accuracy": metrics.pixel_accuracy, "mean_class_accuracy": metrics.mean_class_accuracy}
    for name, iou in zip(class_names, metrics.iou.tolist(), strict=True):
        if not math.isnan(iou):
            stats[f"IoU_{name}"] = iou
    return stats


@dataclass
class SegmenterEvaluation:
    """The confusion matrix of a dataset, its named metrics, the speed measurement and the files written."""

    matrix: Tensor
    class_names: list[str]
    stats: dict[str, float]
    speed: SpeedResult | None
    files: list[Path]

    def report(self) -> str:
        """A per-class IoU / Dice / pixel table, the means and the speed lines, as text."""
        confusion = ConfusionMatrix(len(self.class_names))
        confusion.matrix = self.matrix
        metrics = confusion.compute()
        pixels = self.matrix.sum(dim=1).tolist()
        width = max(len(name) for name in [*self.class_names, "class"])
        lines = [f"{'class':<{width}}  {'IoU':>6}  {'Dice':>6}  {'pixels':>10}"]
        for name, iou, dice, count in zip(self.class_names, metrics.iou.tolist(), metrics.dice.tolist(), pixels,
                                          strict=True):
            cells = [f"{value:6.3f}" if not math.isnan(value) else f"{'-':>6}" for value in (iou, dice)]
            lines.append(f"{name:<{width}}  {cells[0]}  {cells[1]}  {count:>10}")
        lines.append("  ".join(f"{name} {self.stats[name]:.4f}" for name in SEMANTIC_METRIC_NAMES))
        if self.speed is not None:
            lines += [self.speed.headline, self.speed.description]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """JSON-ready metrics (``nan`` as null), per-class IoU and Dice, the confusion matrix and the speed."""
        confusion = ConfusionMatrix(len(self.class_names))
        confusion.matrix = self.matrix
        return {"metrics": {name: json_float(value) for name, value in self.stats.items()},
                "per_class": confusion.compute().as_dict(self.class_names)["per_class"],
                "class_names": self.class_names, "confusion_matrix": self.matrix.tolist(),
                "speed": None if self.speed is None else self.speed.as_dict()}


def evaluate_segmenter_on_dataset(
    model: nn.Module, dataset: Dataset, out_dir: str | os.PathLike[str], device: torch.device,
    batch_size: int = 2, workers: int = 0, speed_iterations: int = 20, evaluated: EvaluatedModel | None = None,
) -> SegmenterEvaluation:
    """Metrics of ``model`` on every image of ``dataset``, speed on its first image, ``metrics.json`` (recording
    ``evaluated``, what was scored) and ``confusion_matrix.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    matrix = confusion_on_dataset(model, dataset, range(len(dataset)), device, batch_size, workers)
    class_names = list(dataset.class_names)
    speed = measure_pipeline(model, dataset.image_path(0), device, speed_iterations) \
        if speed_iterations > 0 and len(dataset) else None
    evaluation = SegmenterEvaluation(matrix, class_names, semantic_stats(matrix, class_names), speed, [])
    evaluation.files = [
        save_metrics({**evaluation.as_dict(), "images": len(dataset)}, evaluated, out_dir),
        plot_confusion_matrix(matrix.numpy(), class_names, out_dir / "confusion_matrix.png"),
    ]
    return evaluation
