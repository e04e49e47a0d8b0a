"""Evaluating a detector on a dataset: predictions, the official ground truth, COCO metrics, speed, files.

``predict_dataset`` runs a model over (a share of) a dataset and returns COCO results that carry the
dataset's own image ids and category ids (``dataset.coco_image_id``, ``dataset.category_ids``), so the
``predictions.json`` written from them scores the same in pycocotools as here. ``coco_ground_truth``
gives the ground truth they are scored against:

- COCO data: the original annotation file, as the official evaluation uses it (its image ids, ``area``
  fields, crowd regions, and boxes the loader dropped or clipped), restricted to the dataset's images
  (all of them unless some were held out as a validation fraction, skipped as unreadable or empty);
- other formats (VOC, YOLO, mask folders): the document a COCO conversion would write, from the loaded
  targets: image ids by ``structured.data.base.coco_image_id`` (``index + 1`` for file-stem ids),
  category id = label, ``area`` = the mask's pixel count when masks are loaded, else the box area, and
  VOC ``difficult`` objects marked ``iscrowd`` = 1, so that, as in the VOC rules, a detection of one
  counts neither as true nor as false positive (COCO scores a crowd region's overlap as intersection over
  the detection's area).

The trainer's periodic evaluation and ``tools/eval.py`` both stand on these. ``evaluate_detector_on_dataset``
is the whole of ``tools/eval.py``: box mAP (and mask mAP when the model predicts masks and the ground
truth has segmentations), a per-class table, the speed line, and ``metrics.json``, ``predictions.json``
(``ground_truth.json`` too for non-COCO data) and ``pr_curves.png`` in the output folder.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from structured.data.base import DetectionDataset
from structured.data.coco import CocoDetection, segmentation_to_mask
from structured.data.loading import collate_detection, worker_errors_unwrapped
from structured.evaluation.coco import (
    STAT_NAMES,
    CocoEvalResult,
    encode_masks,
    evaluate_coco,
    predictions_to_coco_results,
)
from structured.evaluation.metrics_file import EvaluatedModel, save_metrics
from structured.evaluation.plots import coco_pr_curves, plot_pr_curves
from structured.evaluation.speed import SpeedResult, measure_pipeline
from structured.io import load_json, save_json

GroundTruthSample = tuple[int, int, int, dict]
"""``(image_id, height, width, target)`` of one evaluated image."""


def needs_loaded_targets(dataset: DetectionDataset) -> bool:
    """Whether the ground truth of ``dataset`` is built from its loaded targets (not read from a file)."""
    return not isinstance(dataset, CocoDetection)


def predict_dataset(
    model: nn.Module, dataset: DetectionDataset, indices: Sequence[int], device: torch.device,
    batch_size: int = 2, workers: int = 0,
) -> tuple[list[GroundTruthSample], list[dict[str, Any]]]:
    """The loaded ground truth (when :func:`needs_loaded_targets`) and COCO results of the items ``indices``.

    Runs in eval mode. Results carry ``dataset.coco_image_id(index)`` and the dataset's category ids.
    """
    loader = DataLoader(dataset, batch_size=batch_size, sampler=list(indices), num_workers=workers,
                        collate_fn=collate_detection)
    label_to_category_id = dict(enumerate(dataset.category_ids, start=1))
    keep_targets = needs_loaded_targets(dataset)
    was_training = model.training
    model.eval()
    samples: list[GroundTruthSample] = []
    results: list[dict[str, Any]] = []
    positions = iter(indices)
    with torch.no_grad():
        for images, targets in worker_errors_unwrapped(loader):
            predictions = model([image.to(device) for image in images])
            image_ids = [dataset.coco_image_id(next(positions)) for _ in images]
            results += predictions_to_coco_results(predictions, image_ids, label_to_category_id)
            if keep_targets:
                samples += [(image_id, int(image.shape[-2]), int(image.shape[-1]), _ground_truth_keys(target))
                            for image_id, image, target in zip(image_ids, images, targets, strict=True)]
    model.train(was_training)
    return samples, results


def _ground_truth_keys(target: dict) -> dict:
    return {key: target[key] for key in ("boxes", "labels", "iscrowd", "difficult", "masks") if key in target}


def coco_ground_truth(dataset: DetectionDataset, samples: Sequence[GroundTruthSample] = ()) -> dict[str, Any]:
    """The COCO ground truth that detections on ``dataset`` are scored against (module docstring).

    ``samples`` are the loaded targets from :func:`predict_dataset`; COCO data does not use them.
    """
    if isinstance(dataset, CocoDetection):
        return original_ground_truth(dataset)
    return converted_ground_truth(samples, dataset.class_names)


def original_ground_truth(dataset: CocoDetection) -> dict[str, Any]:
    """The dataset's annotation file restricted to its images and classes; a missing ``area`` is filled in.

    Categories the dataset did not make classes (an annotation-less placeholder) have no ground truth and
    no detections, so leaving them out changes no metric.

    A missing ``area`` (pycocotools needs one) becomes the segmentation's pixel count when the annotation
    has one, else the box area, as a COCO conversion would write it.
    """
    content = load_json(dataset.annotation_file, "annotation")
    evaluated = {record.image_id for record in dataset.records}
    images = [image for image in content["images"] if image["id"] in evaluated]
    sizes = {image["id"]: (image.get("height"), image.get("width")) for image in images}
    annotations = [_with_area(annotation, sizes[annotation["image_id"]])
                   for annotation in content.get("annotations", []) if annotation["image_id"] in evaluated]
    known = set(dataset.category_ids)  # leaves out placeholder categories the loader did not make classes
    categories = [category for category in content["categories"] if category["id"] in known]
    return {"images": images, "annotations": annotations, "categories": categories}


def _with_area(annotation: dict, size: tuple[int | None, int | None]) -> dict:
    if "area" in annotation:
        return annotation
    x, y, width, height = (float(value) for value in annotation["bbox"])
    area = width * height
    if annotation.get("segmentation") and None not in size:
        box = [x, y, x + width, y + height]
        area = float(segmentation_to_mask(annotation["segmentation"], box, *size).sum())
    return {**annotation, "area": area}


def converted_ground_truth(samples: Sequence[GroundTruthSample], class_names: Sequence[str]) -> dict[str, Any]:
    """A COCO ground-truth dict from loaded ``(image_id, height, width, target)`` samples (category id = label).

    ``area`` is the mask's pixel count when the target has masks, else the box area; ``difficult`` objects
    are crowd regions (ignored); masks become RLE segmentations.
    """
    images, annotations = [], []
    for image_id, height, width, target in sorted(samples, key=lambda sample: sample[0]):
        images.append({"id": image_id, "height": height, "width": width})
        annotations += _converted_annotations(image_id, target, first_id=len(annotations) + 1)
    return {"images": images, "annotations": annotations, "categories": coco_categories(class_names)}


def _converted_annotations(image_id: int, target: dict, first_id: int) -> list[dict[str, Any]]:
    boxes = target["boxes"].to(torch.float64)
    count = len(boxes)
    crowd = target.get("iscrowd", torch.zeros(count, dtype=torch.int64)).bool()
    if "difficult" in target:
        crowd |= target["difficult"].bool()
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    rles: list[dict[str, Any] | None] = [None] * count
    if "masks" in target:
        areas = target["masks"].flatten(1).sum(1).to(torch.float64)
        rles = encode_masks(target["masks"])
    annotations = []
    rows = zip(boxes.tolist(), target["labels"].tolist(), crowd.tolist(), areas.tolist(), rles, strict=True)
    for offset, ((x1, y1, x2, y2), label, is_crowd, area, rle) in enumerate(rows):
        annotation = {"id": first_id + offset, "image_id": image_id, "category_id": int(label),
                      "bbox": [x1, y1, x2 - x1, y2 - y1], "area": area, "iscrowd": int(is_crowd)}
        if rle is not None:
            annotation["segmentation"] = rle
        annotations.append(annotation)
    return annotations


def coco_categories(class_names: Sequence[str], category_ids: Sequence[int] | None = None) -> list[dict]:
    """The COCO ``categories`` list of ``class_names[1:]``, with ``category_ids`` (default: id = label)."""
    ids = list(category_ids) if category_ids is not None else list(range(1, len(class_names)))
    return [{"id": int(category_id), "name": name} for category_id, name in zip(ids, class_names[1:], strict=True)]


def _has_objects(ground_truth: dict[str, Any]) -> bool:
    """Whether a COCO ground truth has an annotation that is not a crowd region (something AP can be scored on)."""
    return any(not annotation.get("iscrowd", 0) for annotation in ground_truth["annotations"])


def evaluate_results(ground_truth: dict[str, Any], results: Sequence[dict[str, Any]]) -> dict[str, CocoEvalResult]:
    """COCO evaluation of ``results``: ``bbox``, and ``segm`` when the results carry masks and the ground truth
    has segmentations."""
    iou_types = ["bbox"]
    has_segmentations = all("segmentation" in annotation for annotation in ground_truth["annotations"])
    if results and "segmentation" in results[0] and has_segmentations:
        iou_types.append("segm")
    return {iou_type: evaluate_coco(ground_truth, results, iou_type) for iou_type in iou_types}


def named_stats(evaluations: dict[str, CocoEvalResult]) -> dict[str, float]:
    """The 12 COCO stats of each IoU type by name: box stats as ``AP``, ``AP50``, ..., mask stats as ``segm_AP``, ..."""
    stats = {}
    for iou_type, evaluation in evaluations.items():
        prefix = "" if iou_type == "bbox" else f"{iou_type}_"
        stats.update({prefix + name: float(value) for name, value in zip(STAT_NAMES, evaluation.stats, strict=True)})
    return stats


METRIC_NAMES = (*STAT_NAMES, *(f"segm_{name}" for name in STAT_NAMES))
"""Every name :func:`named_stats` can give (``train.best_metric`` picks one)."""


@dataclass
class DetectorEvaluation:
    """COCO results per IoU type (``bbox``, ``segm``), the speed measurement and the files written."""

    results: dict[str, CocoEvalResult]
    speed: SpeedResult | None
    files: list[Path]

    def report(self) -> str:
        """pycocotools-style summaries, a per-class AP table and the speed lines, as text."""
        lines = []
        for iou_type, result in self.results.items():
            lines += [f"== {iou_type} ==", result.summary(), per_class_table(result)]
        if self.speed is not None:
            lines += [self.speed.headline, self.speed.description]
        return "\n".join(lines)


def per_class_table(result: CocoEvalResult) -> str:
    """A text table of AP@[.5:.95] and AP50 per class (``-`` for classes without ground truth)."""
    ap, ap50 = result.class_ap(), result.class_ap(0.5)
    names = dict(zip(result.category_ids, result.category_names, strict=True))
    width = max(len(name) for name in [*names.values(), "class"])
    rows = [f"{'class':<{width}}  {'AP':>6}  {'AP50':>6}"]
    for category_id, name in names.items():
        cells = [f"{value:6.3f}" if value >= 0 else f"{'-':>6}" for value in (ap[category_id], ap50[category_id])]
        rows.append(f"{name:<{width}}  {cells[0]}  {cells[1]}")
    return "\n".join(rows)


def evaluate_detector_on_dataset(
    model: nn.Module, dataset: DetectionDataset, out_dir: str | os.PathLike[str], device: torch.device,
    batch_size: int = 2, workers: int = 0, speed_iterations: int = 20, evaluated: EvaluatedModel | None = None,
) -> DetectorEvaluation:
    """COCO metrics of ``model`` on every image of ``dataset``, speed on its first image, report files
    (``metrics.json`` records ``evaluated``, what was scored).

    Ground truth without objects (an unlabelled split such as COCO test-dev, scored for its ``predictions.json``)
    is a ``UserWarning``: every AP and AR is then -1, pycocotools' "undefined".
    """
    out_dir = Path(out_dir)
    samples, results = predict_dataset(model, dataset, range(len(dataset)), device, batch_size, workers)
    ground_truth = coco_ground_truth(dataset, samples)
    if not _has_objects(ground_truth):
        scored = "the dataset" if evaluated is None else evaluated.dataset
        warnings.warn(f"{scored} has no ground-truth objects on its {len(dataset)} images: AP and AR are undefined "
                      "(reported as -1); predictions.json still holds the detections", UserWarning, stacklevel=2)
    evaluations = evaluate_results(ground_truth, results)
    speed = measure_pipeline(model, dataset.image_path(0), device, speed_iterations) \
        if speed_iterations > 0 and len(dataset) else None
    files = [
        save_metrics({"metrics": {t: r.as_dict() for t, r in evaluations.items()},
                      "speed": None if speed is None else speed.as_dict(), "images": len(dataset)},
                     evaluated, out_dir),
        save_json(results, out_dir / "predictions.json"),
    ]
    if needs_loaded_targets(dataset):
        files.append(save_json(ground_truth, out_dir / "ground_truth.json"))
    curves = coco_pr_curves(evaluations["bbox"])
    if curves:
        ap50 = evaluations["bbox"].class_ap(0.5)
        names = dict(zip(evaluations["bbox"].category_ids, evaluations["bbox"].category_names, strict=True))
        by_name = {names[category_id]: value for category_id, value in ap50.items()}
        files.append(plot_pr_curves(curves, out_dir / "pr_curves.png", "Precision-recall at IoU 0.5", by_name))
    return DetectorEvaluation(evaluations, speed, files)
