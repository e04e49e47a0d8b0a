"""Evaluating a detector on a dataset: predictions, ground truth, COCO metrics, speed, report files.

``predict_dataset`` runs a model over (a share of) a dataset and returns the ground truth of each image
and the detections as COCO results; ``coco_ground_truth`` turns the former into a COCO ground-truth
dict (image ids are dataset index + 1, category id = label, masks as RLE when the targets have them).
The trainer's periodic evaluation and ``tools/eval.py`` both stand on these two.

``evaluate_detector_on_dataset`` is the whole of ``tools/eval.py``: box mAP (and mask mAP when the
model predicts masks and the dataset has them), a per-class table, the speed line, and
``metrics.json``, ``predictions.json`` and ``pr_curves.png`` in the output folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from structured.data.loading import collate_detection
from structured.evaluation.coco import (
    CocoEvalResult,
    encode_masks,
    evaluate_coco,
    predictions_to_coco_results,
)
from structured.evaluation.plots import coco_pr_curves, plot_pr_curves
from structured.evaluation.speed import SpeedResult, measure_speed
from structured.io import save_json

GroundTruthSample = tuple[int, int, int, dict]
"""``(image_id, height, width, target)`` of one evaluated image."""


def predict_dataset(
    model: nn.Module, dataset: Dataset, indices: Sequence[int], device: torch.device,
    batch_size: int = 2, workers: int = 0,
) -> tuple[list[GroundTruthSample], list[dict[str, Any]]]:
    """Ground truth and COCO results (category id = label) for the dataset items ``indices``, in eval mode."""
    loader = DataLoader(dataset, batch_size=batch_size, sampler=list(indices), num_workers=workers,
                        collate_fn=collate_detection)
    was_training = model.training
    model.eval()
    samples: list[GroundTruthSample] = []
    results: list[dict[str, Any]] = []
    positions = iter(indices)
    with torch.no_grad():
        for images, targets in loader:
            predictions = model([image.to(device) for image in images])
            for image, target, prediction in zip(images, targets, predictions, strict=True):
                image_id = next(positions) + 1
                kept = {key: target[key] for key in ("boxes", "labels", "iscrowd", "masks") if key in target}
                samples.append((image_id, int(image.shape[-2]), int(image.shape[-1]), kept))
                results += predictions_to_coco_results([prediction], [image_id])
    model.train(was_training)
    return samples, results


def coco_ground_truth(samples: Sequence[GroundTruthSample], class_names: Sequence[str]) -> dict[str, Any]:
    """A COCO ground-truth dict from ``(image_id, height, width, target)`` samples (category id = label)."""
    images, annotations = [], []
    for image_id, height, width, target in samples:
        images.append({"id": image_id, "height": height, "width": width})
        boxes = target["boxes"].to(torch.float64).tolist()
        crowd = target.get("iscrowd", torch.zeros(len(boxes), dtype=torch.int64)).tolist()
        rles = encode_masks(target["masks"]) if "masks" in target else [None] * len(boxes)
        for (x1, y1, x2, y2), label, is_crowd, rle in zip(boxes, target["labels"].tolist(), crowd, rles, strict=True):
            annotation = {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                          "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                          "iscrowd": int(is_crowd)}
            if rle is not None:
                annotation["segmentation"] = rle
            annotations.append(annotation)
    return {"images": images, "annotations": annotations, "categories": coco_categories(class_names)}


def coco_categories(class_names: Sequence[str]) -> list[dict]:
    """The COCO ``categories`` list of ``class_names`` (id = label), leaving out the background label 0."""
    return [{"id": label, "name": name} for label, name in enumerate(class_names) if label > 0]


@dataclass
class DetectorEvaluation:
    """COCO results per IoU type (``bbox``, ``segm``), the speed measurement and the files written."""

    results: dict[str, CocoEvalResult]
    speed: SpeedResult | None
    files: list[Path]

    def report(self, class_names: Sequence[str]) -> str:
        """pycocotools-style summaries, a per-class AP table and the speed line, as text."""
        lines = []
        for iou_type, result in self.results.items():
            lines += [f"== {iou_type} ==", result.summary(), per_class_table(result, class_names)]
        if self.speed is not None:
            lines.append(self.speed.description)
        return "\n".join(lines)


def per_class_table(result: CocoEvalResult, class_names: Sequence[str]) -> str:
    """A text table of AP@[.5:.95] and AP50 per class (``-`` for classes without ground truth)."""
    ap, ap50 = result.class_ap(), result.class_ap(0.5)
    width = max(len(name) for name in [*class_names[1:], "class"])
    rows = [f"{'class':<{width}}  {'AP':>6}  {'AP50':>6}"]
    for label, name in enumerate(class_names):
        if label == 0:
            continue
        cells = [f"{value:6.3f}" if value >= 0 else f"{'-':>6}" for value in (ap.get(label, -1), ap50.get(label, -1))]
        rows.append(f"{name:<{width}}  {cells[0]}  {cells[1]}")
    return "\n".join(rows)


def evaluate_detector_on_dataset(
    model: nn.Module, dataset: Dataset, out_dir: str | os.PathLike[str], device: torch.device,
    batch_size: int = 2, workers: int = 0, speed_iterations: int = 20,
) -> DetectorEvaluation:
    """COCO metrics of ``model`` on every image of ``dataset``, speed on its first image, report files."""
    out_dir = Path(out_dir)
    samples, results = predict_dataset(model, dataset, range(len(dataset)), device, batch_size, workers)
    ground_truth = coco_ground_truth(samples, dataset.class_names)
    iou_types = ["bbox"]
    if results and "segmentation" in results[0] and all("masks" in sample[3] for sample in samples):
        iou_types.append("segm")
    evaluations = {iou_type: evaluate_coco(ground_truth, results, iou_type) for iou_type in iou_types}
    speed = _measure(model, dataset, device, speed_iterations) if speed_iterations > 0 and len(dataset) else None
    files = [
        save_json({"metrics": {t: r.as_dict() for t, r in evaluations.items()},
                   "speed": None if speed is None else speed.as_dict(), "images": len(dataset)},
                  out_dir / "metrics.json", indent=2),
        save_json(results, out_dir / "predictions.json"),
    ]
    curves = coco_pr_curves(evaluations["bbox"])
    if curves:
        ap50 = evaluations["bbox"].class_ap(0.5)
        by_name = {dataset.class_names[label]: value for label, value in ap50.items()}
        files.append(plot_pr_curves(curves, out_dir / "pr_curves.png", "Precision-recall at IoU 0.5", by_name))
    return DetectorEvaluation(evaluations, speed, files)


def _measure(model: nn.Module, dataset: Dataset, device: torch.device, iterations: int) -> SpeedResult:
    image, _ = dataset[0]
    return measure_speed(model, [image.to(device)], warmup=min(3, iterations), iterations=iterations, device=device)
