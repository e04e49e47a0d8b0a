"""Pascal VOC detection mAP: per-class AP with the VOC2007 11-point or the VOC2010+ all-point definition.

Contract: ``evaluate_voc(predictions, targets, num_classes)`` takes one Prediction dict (``boxes`` xyxy,
``scores``, ``labels`` in 1..C) and one Target dict (``boxes``, ``labels``, optional ``difficult``) per
image and returns a :class:`VocEvalResult`.

Matching follows the official devkit (``VOCevaldet.m``): per class, all detections of all images sorted
by decreasing score (stable: ties keep image order, then the order inside the image); each detection is
compared with every ground truth of its image and class and takes the one of highest IoU (the first on
ties). If that IoU is ``>= iou_threshold``: a difficult ground truth makes the detection neither true nor
false positive; an undetected one makes it a true positive; an already detected one a false positive
(duplicate). Below the threshold it is a false positive. Difficult objects are not counted as positives.

AP definitions (``use_07_metric``):

- ``True`` (VOC2007): mean over recall thresholds ``t = 0, 0.1, ..., 1`` of the highest precision at
  recall ``>= t`` (0 if none). The thresholds are ``k / 10`` exactly (the devkit's ``0:0.1:1``; Python ports
  using ``np.arange(0, 1.1, 0.1)`` get e.g. 0.30000000000000004 and can miss a recall of exactly 0.3);
- ``False`` (VOC2010+): area under the precision envelope (precision made monotone), summed where
  recall changes.

IoU (``pixel_plus_one``): the devkit treats boxes as inclusive integer pixel ranges, width ``x2 - x1 + 1``.
Our boxes are continuous (width ``x2 - x1``), so the default is ``False``; pass ``True`` to reproduce the
devkit's numbers on boxes in VOC's original 1-based pixel coordinates. A class without any non-difficult
ground truth has AP ``nan`` (the devkit's recall is 0/0) and is left out of the mAP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from structured.boxes.iou import box_iou
from structured.io import json_float

ELEVEN_RECALL_POINTS = np.arange(11) / 10


@dataclass(frozen=True)
class VocEvalResult:
    """Per-class AP (label -> AP, ``nan`` without positives), their mean, and the PR curves used."""

    per_class_ap: dict[int, float]
    mean_ap: float
    curves: dict[int, tuple[np.ndarray, np.ndarray]]  # label -> (recall, precision) per ranked detection
    num_positives: dict[int, int]
    iou_threshold: float
    use_07_metric: bool
    pixel_plus_one: bool

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready dict: mAP, settings and AP per class (by name when ``class_names[label]`` is given)."""

        def name(label: int) -> str:
            return class_names[label] if class_names is not None else str(label)

        return {
            "mAP": json_float(self.mean_ap),
            "iou_threshold": self.iou_threshold,
            "metric": "VOC2007 11-point" if self.use_07_metric else "VOC2010+ all-point",
            "pixel_plus_one": self.pixel_plus_one,
            "per_class_ap": {name(label): json_float(ap) for label, ap in self.per_class_ap.items()},
        }


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """Average precision of a ranked list from its cumulative ``recall`` and ``precision`` arrays."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.shape != precision.shape or recall.ndim != 1:
        raise ValueError(
            f"recall and precision must be 1-D of equal length, got {recall.shape}, {precision.shape}"
        )
    if use_07_metric:
        best = [precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in ELEVEN_RECALL_POINTS]
        return float(np.sum(best) / 11)
    padded_recall = np.concatenate([[0.0], recall, [1.0]])
    envelope = np.concatenate([[0.0], precision, [0.0]])
    envelope = np.maximum.accumulate(envelope[::-1])[::-1]
    steps = np.flatnonzero(padded_recall[1:] != padded_recall[:-1]) + 1
    return float(np.sum((padded_recall[steps] - padded_recall[steps - 1]) * envelope[steps]))


def evaluate_voc(
    predictions: Sequence[Mapping[str, Tensor]],
    targets: Sequence[Mapping[str, Tensor]],
    num_classes: int,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
    pixel_plus_one: bool = False,
) -> VocEvalResult:
    """VOC AP for labels ``1..num_classes`` and their mean (see the module docstring for the rules)."""
    if len(predictions) != len(targets):
        raise ValueError(f"got {len(predictions)} predictions but {len(targets)} targets; need one per image")
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    images = [
        _image_arrays(p, t, index, pixel_plus_one)
        for index, (p, t) in enumerate(zip(predictions, targets, strict=True))
    ]
    per_class_ap, curves, num_positives = {}, {}, {}
    for label in range(1, num_classes + 1):
        recall, precision, positives = _class_curve(images, label, iou_threshold)
        num_positives[label] = positives
        curves[label] = (recall, precision)
        per_class_ap[label] = voc_ap(recall, precision, use_07_metric) if positives else float("nan")
    valid = [ap for ap in per_class_ap.values() if not np.isnan(ap)]
    return VocEvalResult(
        per_class_ap=per_class_ap,
        mean_ap=float(np.mean(valid)) if valid else float("nan"),
        curves=curves,
        num_positives=num_positives,
        iou_threshold=iou_threshold,
        use_07_metric=use_07_metric,
        pixel_plus_one=pixel_plus_one,
    )


@dataclass(frozen=True)
class _Image:
    overlaps: np.ndarray  # [K, N] float64 IoU of every detection with every ground truth
    det_scores: np.ndarray
    det_labels: np.ndarray
    gt_labels: np.ndarray
    gt_difficult: np.ndarray


def _image_arrays(
    prediction: Mapping[str, Tensor], target: Mapping[str, Tensor], index: int, pixel_plus_one: bool
) -> _Image:
    for key in ("boxes", "scores", "labels"):
        if key not in prediction:
            raise ValueError(f"prediction {index} lacks {key!r}")
    for key in ("boxes", "labels"):
        if key not in target:
            raise ValueError(f"target {index} lacks {key!r}")
    gt_labels = torch.as_tensor(target["labels"]).cpu().numpy()
    difficult = target.get("difficult")
    gt_difficult = (
        np.zeros(len(gt_labels), bool)
        if difficult is None
        else torch.as_tensor(difficult).cpu().numpy().astype(bool)
    )
    if gt_difficult.shape != gt_labels.shape:
        raise ValueError(
            f"target {index}: 'difficult' has shape {gt_difficult.shape}, expected {gt_labels.shape}"
        )
    det_boxes = _iou_boxes(prediction["boxes"], pixel_plus_one)
    gt_boxes = _iou_boxes(target["boxes"], pixel_plus_one)
    return _Image(
        overlaps=box_iou(det_boxes, gt_boxes).numpy(),
        det_scores=torch.as_tensor(prediction["scores"]).cpu().double().numpy(),
        det_labels=torch.as_tensor(prediction["labels"]).cpu().numpy(),
        gt_labels=gt_labels,
        gt_difficult=gt_difficult,
    )


def _iou_boxes(boxes: Tensor, pixel_plus_one: bool) -> Tensor:
    """float64 ``[N, 4]`` boxes; inclusive pixel boxes get ``x2 + 1, y2 + 1`` so that continuous IoU applies."""
    boxes = torch.as_tensor(boxes).detach().cpu().to(torch.float64).reshape(-1, 4)
    return boxes + boxes.new_tensor([0, 0, 1, 1]) if pixel_plus_one else boxes


def _class_curve(
    images: Sequence[_Image], label: int, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Cumulative recall and precision over the ranked detections of one class, and its positive count."""
    image_index, scores, best_iou, best_gt, gt_masks = [], [], [], [], []
    positives = 0
    for i, image in enumerate(images):
        gt_mask = image.gt_labels == label
        gt_masks.append(gt_mask)
        positives += int(np.count_nonzero(gt_mask & ~image.gt_difficult))
        dets = np.flatnonzero(image.det_labels == label)
        overlaps = image.overlaps[dets][:, gt_mask]  # [K_c, N_c]
        image_index.append(np.full(len(dets), i))
        scores.append(image.det_scores[dets])
        best_iou.append(overlaps.max(axis=1) if overlaps.shape[1] else np.full(len(dets), -np.inf))
        best_gt.append(overlaps.argmax(axis=1) if overlaps.shape[1] else np.zeros(len(dets), int))
    order = np.argsort(-np.concatenate(scores), kind="stable")
    image_of = np.concatenate(image_index)[order]
    true_pos, false_pos = _assign(
        images,
        gt_masks,
        image_of,
        np.concatenate(best_iou)[order],
        np.concatenate(best_gt)[order],
        iou_threshold,
    )
    tp, fp = np.cumsum(true_pos), np.cumsum(false_pos)
    recall = tp / positives if positives else np.zeros(len(tp))
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision, positives


def _assign(
    images: Sequence[_Image],
    gt_masks: Sequence[np.ndarray],
    image_of: np.ndarray,
    best_iou: np.ndarray,
    best_gt: np.ndarray,
    iou_threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """True/false positive flags of the ranked detections (difficult matches are neither).

    ``gt_masks[i]`` selects the ground truth of the class in image ``i``.
    """
    difficult = [image.gt_difficult[gt_mask] for image, gt_mask in zip(images, gt_masks, strict=True)]
    detected = [np.zeros(len(flags), bool) for flags in difficult]
    true_pos = np.zeros(len(image_of))
    false_pos = np.zeros(len(image_of))
    for rank, (i, iou, gt) in enumerate(
        zip(image_of.tolist(), best_iou.tolist(), best_gt.tolist(), strict=True)
    ):
        if iou < iou_threshold:
            false_pos[rank] = 1
        elif not difficult[i][gt]:
            if detected[i][gt]:
                false_pos[rank] = 1
            else:
                true_pos[rank] = 1
                detected[i][gt] = True
    return true_pos, false_pos
