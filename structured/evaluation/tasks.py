"""The task layer: what each task (``detection``, ``instance``, ``semantic``) measures and how.

A recipe's model has a task (``structured.config.model_task``, recorded in checkpoints); everything that
scores a model asks :func:`evaluation_task` for that task's :class:`EvaluationTask` instead of testing the
model's type:

- ``metric_names``: the names ``train.best_metric`` may take, and ``default_best_metric``
  (detection / instance: the COCO stat names, ``AP50`` by default, ``segm_`` prefixed for masks; semantic:
  ``mIoU`` (default), ``fg_IoU``, ``Dice``, ``fg_Dice``, ``pixel_accuracy``, ``mean_class_accuracy``);
- ``predict_share(model, dataset, indices, device, batch_size, workers)``: what one process computes on
  its share of a validation set (detections and loaded ground truth; a confusion matrix), and
  ``score(dataset, shares)``: the named metrics from every share (run on one process);
- ``evaluate_on_dataset(model, dataset, out_dir, device, batch_size, workers, speed_iterations, evaluated)``:
  the whole of ``tools/eval.py`` (an object with ``report()`` and ``files``; ``metrics.json`` records
  ``evaluated``, an ``EvaluatedModel``);
- ``curves``: the validation metrics the run folder plots (``map.png`` / ``miou.png``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from structured.evaluation.detector import (
    METRIC_NAMES,
    coco_ground_truth,
    evaluate_detector_on_dataset,
    evaluate_results,
    named_stats,
    predict_dataset,
)
from structured.evaluation.plots import MAP_CURVES, MIOU_CURVES, ValidationCurves
from structured.evaluation.segmenter import (
    SEMANTIC_METRIC_NAMES,
    confusion_on_dataset,
    evaluate_segmenter_on_dataset,
    semantic_stats,
)


@dataclass(frozen=True)
class EvaluationTask:
    """How models of one task are scored (module docstring)."""

    name: str
    metric_names: tuple[str, ...]
    default_best_metric: str
    predict_share: Callable[..., Any]
    score: Callable[[Any, Sequence[Any]], dict[str, float]]
    evaluate_on_dataset: Callable[..., Any]
    curves: ValidationCurves


def _score_detections(dataset: Any, shares: Sequence[tuple[list, list]]) -> dict[str, float]:
    samples = [sample for part, _ in shares for sample in part]
    results = [result for _, part in shares for result in part]
    return named_stats(evaluate_results(coco_ground_truth(dataset, samples), results))


def _score_class_maps(dataset: Any, shares: Sequence[torch.Tensor]) -> dict[str, float]:
    return semantic_stats(torch.stack(list(shares)).sum(dim=0), dataset.class_names)


_DETECTION = dict(metric_names=METRIC_NAMES, default_best_metric="AP50", predict_share=predict_dataset,
                  score=_score_detections, evaluate_on_dataset=evaluate_detector_on_dataset, curves=MAP_CURVES)
TASKS: dict[str, EvaluationTask] = {
    "detection": EvaluationTask("detection", **_DETECTION),
    "instance": EvaluationTask("instance", **_DETECTION),
    "semantic": EvaluationTask("semantic", SEMANTIC_METRIC_NAMES, "mIoU", confusion_on_dataset, _score_class_maps,
                               evaluate_segmenter_on_dataset, MIOU_CURVES),
}


def evaluation_task(task: str) -> EvaluationTask:
    """The :class:`EvaluationTask` of ``task``; ``ValueError`` listing the tasks for another name."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    return TASKS[task]
