"""COCO detection evaluation (``bbox`` and ``segm``) with pycocotools' semantics, vectorised with NumPy.

Contract: ``evaluate_coco(ground_truth, results, iou_type)`` takes a COCO ground-truth file or dict and a
COCO results list (or a results JSON file) and returns a :class:`CocoEvalResult` whose 12 ``stats``,
``precision`` [T,R,K,A,M] and ``recall`` [T,K,A,M] arrays equal those of ``pycocotools.cocoeval.COCOeval``
(default parameters) on the same input. The evaluation loop is our own; pycocotools is only used for RLE
mask operations (decoding polygons, mask IoU).

Semantics reproduced from pycocotools:

- per image and category, detections are sorted by decreasing score with a stable sort (ties keep the
  order of the results list) and cut to the 100 best; ground truth keeps the order of the annotation list;
- crowd ground truth (``iscrowd=1``) and ground truth whose ``area`` field lies outside the area range are
  *ignored*: a detection matched to them counts neither as true nor as false positive; a crowd region can
  absorb any number of detections and its IoU is intersection over detection area;
- greedy matching at each IoU threshold: a detection takes the unmatched regular ground truth of highest
  IoU (ties: the later annotation), and only when there is none, the ignored ground truth of highest IoU;
- an unmatched detection whose area lies outside the area range is ignored. The detection area is the box
  area ``w*h`` when the results carry boxes (as ``COCO.loadRes`` does, even for ``segm``), else the mask area;
- precision is made monotone, sampled at 101 recall points with ``searchsorted(side="left")``; settings
  without any non-ignored ground truth are ``-1`` and left out of the means.

Deliberate differences: inconsistent input (results on unknown images or categories, annotations of
unknown images or categories, image ids that are not integers, NaN scores) raises ``ValueError`` where pycocotools silently drops data or
crashes; an empty results list gives zeros (``-1`` where a setting has no ground truth) where
``COCO.loadRes`` fails; a ground-truth annotation with ``id`` 0 is matched like any other (pycocotools
takes id 0 for "unmatched" and counts its match as a false positive).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch
from torch import Tensor

from structured.boxes.formats import box_convert
from structured.boxes.iou import rle_iou
from structured.io import load_json, save_json

IOU_TYPES = ("bbox", "segm")
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETS = (1, 10, 100)
AREA_RANGES = ((0.0, 1e10), (0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e10))
AREA_LABELS = ("all", "small", "medium", "large")
_AREA_SLICE = 255
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

# (is AP, IoU threshold or None for the mean over thresholds, area label, maxDets) for each of the 12 stats.
_STAT_SETTINGS = (
    (True, None, "all", 100),
    (True, 0.5, "all", 100),
    (True, 0.75, "all", 100),
    (True, None, "small", 100),
    (True, None, "medium", 100),
    (True, None, "large", 100),
    (False, None, "all", 1),
    (False, None, "all", 10),
    (False, None, "all", 100),
    (False, None, "small", 100),
    (False, None, "medium", 100),
    (False, None, "large", 100),
)


@dataclass(frozen=True)
class CocoEvalResult:
    """COCO metrics: the 12 summary ``stats`` and the full precision/recall arrays of pycocotools.

    ``precision[t, r, k, a, m]`` is the interpolated precision at IoU threshold ``IOU_THRESHOLDS[t]``,
    recall ``RECALL_THRESHOLDS[r]``, category ``category_ids[k]``, area range ``AREA_LABELS[a]`` and
    ``MAX_DETS[m]`` detections per image; ``recall[t, k, a, m]`` the final recall. ``-1`` marks settings
    without ground truth.
    """

    iou_type: str
    stats: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    category_ids: tuple[int, ...]
    category_names: tuple[str, ...]

    def class_ap(self, iou_threshold: float | None = None) -> dict[int, float]:
        """AP per category id (area ``all``, 100 detections), at one IoU threshold or averaged over all.

        A category without ground truth gets ``-1``.
        """
        precision = self.precision[..., 0, MAX_DETS.index(100)]  # [T, R, K]
        if iou_threshold is not None:
            precision = precision[_threshold_index(iou_threshold)][None]
        return {
            category_id: _mean_of_valid(precision[:, :, k]) for k, category_id in enumerate(self.category_ids)
        }

    @property
    def per_class_ap(self) -> dict[int, float]:
        """AP@[.5:.95] per category id (``-1`` for categories without ground truth)."""
        return self.class_ap()

    def pr_curve(self, category_index: int, iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
        """``(recall, precision)`` sampled at the 101 recall thresholds for one category (area all, 100 dets)."""
        t = _threshold_index(iou_threshold)
        return RECALL_THRESHOLDS.copy(), self.precision[t, :, category_index, 0, MAX_DETS.index(100)].copy()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict: iou type, the 12 named stats and AP / AP50 per category name."""
        ap = self.class_ap()
        ap50 = self.class_ap(0.5)
        return {
            "iou_type": self.iou_type,
            "stats": {name: float(value) for name, value in zip(STAT_NAMES, self.stats, strict=True)},
            "per_class": {
                name: {"category_id": category_id, "AP": ap[category_id], "AP50": ap50[category_id]}
                for category_id, name in zip(self.category_ids, self.category_names, strict=True)
            },
        }

    def summary(self) -> str:
        """The 12 stats as the lines pycocotools prints."""
        lines = []
        for (is_ap, iou, area, max_dets), value in zip(_STAT_SETTINGS, self.stats, strict=True):
            title = "Average Precision  (AP)" if is_ap else "Average Recall     (AR)"
            iou_text = "0.50:0.95" if iou is None else f"{iou:0.2f}"
            lines.append(
                f" {title} @[ IoU={iou_text:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] = {value:0.3f}"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class _GroundTruth:
    """Ground truth as flat arrays sorted by (image, category, annotation order)."""

    image_ids: np.ndarray  # [I] sorted
    category_ids: np.ndarray  # [K] sorted
    category_names: tuple[str, ...]
    group: np.ndarray  # [G] image_index * K + category_index
    boxes: np.ndarray  # [G, 4] xywh float64
    areas: np.ndarray  # [G]
    crowd: np.ndarray  # [G] bool
    segmentations: list[Any] | None  # [G] RLEs for segm


@dataclass(frozen=True)
class _Detections:
    """The kept detections (100 best per image and category) sorted by (image, category, rank)."""

    group: np.ndarray  # [D]
    rank: np.ndarray  # [D] position in its image/category after sorting by score
    scores: np.ndarray  # [D]
    boxes: np.ndarray  # [D, 4] xywh float64
    areas: np.ndarray  # [D]
    segmentations: list[Any] | None


def evaluate_coco(
    ground_truth: str | Path | Mapping[str, Any],
    results: str | Path | Sequence[Mapping[str, Any]],
    iou_type: str = "bbox",
) -> CocoEvalResult:
    """Evaluate COCO results against COCO ground truth (file path or dict), pycocotools semantics.

    ``results`` is a COCO results list (``image_id``, ``category_id``, ``score`` and ``bbox`` in xywh or an
    RLE ``segmentation``) or the path of such a JSON file; see :func:`predictions_to_coco_results` to build
    it from Prediction dicts. ``iou_type`` is ``"bbox"`` or ``"segm"``.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    source = str(ground_truth) if isinstance(ground_truth, (str, Path)) else "COCO ground truth"
    gt = _parse_ground_truth(load_json(ground_truth, "ground truth"), iou_type, source)
    results_list = load_json(results, "results") if isinstance(results, (str, Path)) else results
    dets = _parse_results(results_list, gt, iou_type, source)
    num_categories = len(gt.category_ids)
    gt_ignore = _gt_ignore_flags(gt)
    matched_gt = _match_detections(gt, dets, gt_ignore, iou_type)
    true_pos, counted = _classify_detections(matched_gt, gt_ignore, dets.areas)
    det_category = dets.group % num_categories
    det_image = dets.group // num_categories
    positives = _count_positives(gt.group % num_categories, gt_ignore, num_categories)
    precision, recall = _accumulate(true_pos, counted, det_category, det_image, dets, positives)
    return CocoEvalResult(
        iou_type=iou_type,
        stats=_summary_stats(precision, recall),
        precision=precision,
        recall=recall,
        category_ids=tuple(int(c) for c in gt.category_ids),
        category_names=gt.category_names,
    )


def evaluate_predictions(
    ground_truth: str | Path | Mapping[str, Any],
    predictions: Sequence[Mapping[str, Tensor]],
    image_ids: Sequence[int],
    label_to_category_id: Mapping[int, int],
    iou_type: str = "bbox",
) -> CocoEvalResult:
    """Evaluate our Prediction dicts (labels 1..C) on COCO ground truth; see :func:`evaluate_coco`."""
    results = predictions_to_coco_results(predictions, image_ids, label_to_category_id)
    return evaluate_coco(ground_truth, results, iou_type)


# ----------------------------------------------------------------------------------------------- I/O


def predictions_to_coco_results(
    predictions: Sequence[Mapping[str, Tensor]],
    image_ids: Sequence[int],
    label_to_category_id: Mapping[int, int] | None = None,
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """COCO results list from Prediction dicts (``boxes`` xyxy, ``scores``, ``labels`` 1..C, opt. ``masks``).

    Boxes become xywh, labels become the original category ids through ``label_to_category_id`` (``None``:
    the label is the category id), and
    probability masks become RLEs of ``mask > mask_threshold`` (as torchvision's reference scripts).
    Results with masks carry both ``bbox`` and ``segmentation``, so one list serves both IoU types.
    """
    if len(predictions) != len(image_ids):
        raise ValueError(f"got {len(predictions)} predictions but {len(image_ids)} image_ids")
    results: list[dict[str, Any]] = []
    for prediction, image_id in zip(predictions, image_ids, strict=True):
        results.extend(_image_results(prediction, int(image_id), label_to_category_id, mask_threshold))
    return results


def write_coco_results(results: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write a COCO results list to ``path`` (atomic); pycocotools ``COCO.loadRes`` reads it."""
    return save_json(list(results), path)


def _image_results(
    prediction: Mapping[str, Tensor], image_id: int, label_to_category_id: Mapping[int, int] | None,
    threshold: float,
) -> list[dict[str, Any]]:
    for key in ("boxes", "scores", "labels"):
        if key not in prediction:
            raise ValueError(f"prediction for image {image_id} lacks {key!r}; expected boxes, scores, labels")
    boxes = box_convert(prediction["boxes"].detach().cpu().to(torch.float64), "xyxy", "xywh").tolist()
    scores = prediction["scores"].detach().cpu().tolist()
    category_ids = [
        _category_id(int(label), label_to_category_id, image_id) for label in prediction["labels"].tolist()
    ]
    results = [
        {"image_id": image_id, "category_id": category_id, "bbox": box, "score": score}
        for box, score, category_id in zip(boxes, scores, category_ids, strict=True)
    ]
    if "masks" in prediction:
        for result, rle in zip(results, encode_masks(prediction["masks"], threshold), strict=True):
            result["segmentation"] = rle
    return results


def _category_id(label: int, label_to_category_id: Mapping[int, int] | None, image_id: int) -> int:
    if label_to_category_id is None:
        return label
    if label not in label_to_category_id:
        raise ValueError(
            f"prediction for image {image_id} has label {label} missing from label_to_category_id "
            f"(known labels: {sorted(label_to_category_id)})"
        )
    return int(label_to_category_id[label])


def encode_masks(masks: Tensor, threshold: float = 0.5) -> list[dict[str, Any]]:
    """RLEs (JSON-ready, ``counts`` as str) of ``[K, H, W]`` (or ``[K, 1, H, W]``) probability masks."""
    binary = (masks.detach().cpu() > threshold).to(torch.uint8)
    if binary.ndim == 4:
        binary = binary[:, 0]
    if binary.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(binary.permute(1, 2, 0).numpy()))
    return [{"size": rle["size"], "counts": rle["counts"].decode("ascii")} for rle in rles]


# --------------------------------------------------------------------------------------- parsing


def _check_image_ids(images: Sequence[Mapping[str, Any]], source: str) -> None:
    """``ValueError`` naming ``source`` and the first image whose ``id`` is not an integer (a string id would
    otherwise be read as a number, or match no result)."""
    for index, image in enumerate(images):
        image_id = image.get("id")
        if isinstance(image_id, bool) or not isinstance(image_id, (int, np.integer)):
            raise ValueError(f"{source} images[{index}]: 'id' must be an integer (COCO ids are integers), "
                             f"got {image_id!r}")


def _parse_ground_truth(dataset: Mapping[str, Any], iou_type: str, source: str) -> _GroundTruth:
    for key in ("images", "annotations", "categories"):
        if key not in dataset:
            raise ValueError(f"{source} lacks the {key!r} list")
    _check_image_ids(dataset["images"], source)
    image_ids = np.unique(np.array([image["id"] for image in dataset["images"]], dtype=np.int64))
    categories = sorted(dataset["categories"], key=lambda category: category["id"])
    category_ids = np.array([category["id"] for category in categories], dtype=np.int64)
    if len(category_ids) == 0:
        raise ValueError(f"{source} has no categories")
    annotations = dataset["annotations"]
    group = _group_index(annotations, image_ids, category_ids, "ground-truth annotation", source)
    order = np.argsort(group, kind="stable")
    segmentations = None
    if iou_type == "segm":
        sizes = _image_sizes(dataset["images"])
        segmentations = [_annotation_rle(annotations[i], sizes) for i in order]
    return _GroundTruth(
        image_ids=image_ids,
        category_ids=category_ids,
        category_names=tuple(str(category.get("name", category["id"])) for category in categories),
        group=group[order],
        boxes=_box_column(annotations, "ground-truth annotation")[order]
        if iou_type == "bbox"
        else np.zeros((len(order), 4)),
        areas=_number_column(annotations, "area", "ground-truth annotation", np.float64)[order],
        crowd=np.array([bool(annotations[i].get("iscrowd", 0)) for i in order], dtype=bool),
        segmentations=segmentations,
    )


def _image_sizes(images: Sequence[Mapping[str, Any]]) -> dict[int, tuple[int, int]]:
    """``image id -> (height, width)``, needed to decode polygon and uncompressed RLE ground truth."""
    sizes = {}
    for image in images:
        if "height" not in image or "width" not in image:
            raise ValueError(f"segm evaluation needs 'height' and 'width' for image {image.get('id')}")
        sizes[int(image["id"])] = (int(image["height"]), int(image["width"]))
    return sizes


def _parse_results(results: Sequence[Mapping[str, Any]], gt: _GroundTruth, iou_type: str,
                   source: str) -> _Detections:
    if not isinstance(results, Sequence):
        raise ValueError(f"results must be a list of dicts, got {type(results).__name__}")
    group = _group_index(results, gt.image_ids, gt.category_ids, "result", source)
    scores = _number_column(results, "score", "result", np.float64)
    if np.isnan(scores).any():
        raise ValueError(f"result {int(np.flatnonzero(np.isnan(scores))[0])} has a NaN score")
    order = np.lexsort((-scores, group))  # stable: ties keep the results order
    rank = _rank_in_group(group[order])
    in_limit = rank < MAX_DETS[-1]
    keep = order[in_limit]
    has_boxes = iou_type == "bbox" or all(len(result.get("bbox", ())) == 4 for result in results)
    boxes = _box_column(results, "result")[keep] if has_boxes else np.zeros((len(keep), 4))
    segmentations = [_result_rle(results[i], i) for i in keep] if iou_type == "segm" else None
    return _Detections(
        group=group[keep],
        rank=rank[in_limit],
        scores=scores[keep],
        boxes=boxes,
        areas=boxes[:, 2] * boxes[:, 3] if has_boxes else rle_areas(segmentations),
        segmentations=segmentations,
    )


def _group_index(
    records: Sequence[Mapping[str, Any]], image_ids: np.ndarray, category_ids: np.ndarray, what: str, source: str
) -> np.ndarray:
    """``image_index * K + category_index`` of each record, checking both ids exist in the ground truth
    ``source``."""
    record_images = _number_column(records, "image_id", what, np.int64)
    record_categories = _number_column(records, "category_id", what, np.int64)
    image_index = _index_in(record_images, image_ids, f"{what} image_id", f"images of {source}")
    category_index = _index_in(record_categories, category_ids, f"{what} category_id", f"categories of {source}")
    return image_index * len(category_ids) + category_index


def _index_in(values: np.ndarray, known: np.ndarray, what: str, where: str) -> np.ndarray:
    index = np.searchsorted(known, values).clip(max=len(known) - 1)
    unknown = np.flatnonzero(known[index] != values) if len(known) else np.arange(len(values))
    if len(unknown):
        raise ValueError(
            f"{what} {int(values[unknown[0]])} (record {int(unknown[0])}) is not among the {where}"
        )
    return index


def _column(records: Sequence[Mapping[str, Any]], key: str, what: str) -> list[Any]:
    try:
        return list(map(operator.itemgetter(key), records))
    except KeyError as error:
        raise ValueError(f"every {what} needs {key!r}") from error


def _number_column(records: Sequence[Mapping[str, Any]], key: str, what: str, dtype: type) -> np.ndarray:
    """``[N]`` array of ``record[key]`` for every record."""
    values = _column(records, key, what)
    try:
        return np.fromiter(values, dtype=dtype, count=len(values))
    except (TypeError, ValueError) as error:
        raise ValueError(f"every {what} {key!r} must be a number: {error}") from error


def _box_column(records: Sequence[Mapping[str, Any]], what: str) -> np.ndarray:
    """``[N, 4]`` float64 array of the ``bbox`` (xywh) of every record."""
    boxes = _column(records, "bbox", what)
    try:
        lengths = set(map(len, boxes))
        flat = np.fromiter(itertools.chain.from_iterable(boxes), dtype=np.float64, count=4 * len(boxes))
    except (TypeError, ValueError) as error:
        raise ValueError(f"every {what} 'bbox' must be 4 numbers (x, y, w, h): {error}") from error
    if lengths - {4}:
        raise ValueError(
            f"every {what} 'bbox' must be 4 numbers (x, y, w, h); found lengths {sorted(lengths)}"
        )
    return flat.reshape(-1, 4)


def _rank_in_group(sorted_group: np.ndarray) -> np.ndarray:
    """Position of each element inside its run of equal values of a sorted array."""
    return np.arange(len(sorted_group)) - np.searchsorted(sorted_group, sorted_group, side="left")


def _annotation_rle(annotation: Mapping[str, Any], sizes: Mapping[int, tuple[int, int]]) -> Any:
    """Compressed RLE of a ground-truth polygon list, uncompressed RLE or RLE (as ``COCO.annToRLE``)."""
    if "segmentation" not in annotation:
        raise ValueError(f"segm evaluation needs 'segmentation' in annotation {annotation.get('id')}")
    height, width = sizes[int(annotation["image_id"])]
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def _result_rle(result: Mapping[str, Any], index: int) -> Any:
    segmentation = result.get("segmentation")
    if not isinstance(segmentation, Mapping) or "counts" not in segmentation or "size" not in segmentation:
        raise ValueError(f"segm evaluation needs an RLE 'segmentation' (size, counts) in result {index}")
    return segmentation


def rle_areas(rles: Sequence[Any] | None) -> np.ndarray:
    """Pixel areas (float64 ``[N]``) of COCO RLEs, any number of them.

    ``pycocotools.mask.area`` fails with ``OverflowError`` on lists of more than 255 RLEs (pycocotools
    2.0.11 under numpy 2 keeps the count in a uint8), so the list is measured in slices of 255.
    """
    if not rles:
        return np.zeros(0)
    slices = [mask_utils.area(list(rles[start:start + _AREA_SLICE])) for start in range(0, len(rles), _AREA_SLICE)]
    return np.concatenate(slices).astype(np.float64)


# --------------------------------------------------------------------------------------- matching


def _gt_ignore_flags(gt: _GroundTruth) -> np.ndarray:
    """``[A, G]``: crowd, or ``area`` outside each area range."""
    return gt.crowd[None, :] | _outside_area_ranges(gt.areas)


def _outside_area_ranges(areas: np.ndarray) -> np.ndarray:
    """``[A, N]``: whether each of the ``N`` areas lies outside each area range."""
    low = np.array([low for low, _ in AREA_RANGES])[:, None]
    high = np.array([high for _, high in AREA_RANGES])[:, None]
    return (areas[None, :] < low) | (areas[None, :] > high)


def _candidate_pairs(gt: _GroundTruth, dets: _Detections) -> tuple[np.ndarray, np.ndarray]:
    """All (detection, ground truth) index pairs of the same image and category, detection-major."""
    gt_start = np.searchsorted(gt.group, dets.group, side="left")
    gt_count = np.searchsorted(gt.group, dets.group, side="right") - gt_start
    pair_det = np.repeat(np.arange(len(dets.group)), gt_count)
    first_pair = np.cumsum(gt_count) - gt_count
    pair_gt = np.repeat(gt_start - first_pair, gt_count) + np.arange(len(pair_det))
    return pair_det, pair_gt


def _box_pair_iou(det_boxes: np.ndarray, gt_boxes: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of paired xywh boxes in pycocotools' floating-point order; crowd: intersection / detection area."""
    dx, dy, dw, dh = det_boxes.T
    gx, gy, gw, gh = gt_boxes.T
    inter_w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    inter_h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    overlapping = (inter_w > 0) & (inter_h > 0)
    intersection = inter_w * inter_h
    det_area = dw * dh
    union = np.where(crowd, det_area, det_area + gw * gh - intersection)
    return np.where(overlapping, intersection / np.where(overlapping, union, 1.0), 0.0)


def _mask_pair_iou(gt: _GroundTruth, dets: _Detections, pair_det: np.ndarray) -> np.ndarray:
    """Mask IoU of all pairs (pycocotools RLE IoU), computed one image/category block at a time."""
    blocks = []
    group_starts = np.flatnonzero(np.r_[True, np.diff(dets.group) != 0])
    for start, stop in zip(group_starts, np.r_[group_starts[1:], len(dets.group)], strict=True):
        gt_lo = np.searchsorted(gt.group, dets.group[start], side="left")
        gt_hi = np.searchsorted(gt.group, dets.group[start], side="right")
        if gt_hi == gt_lo:
            continue
        ious = rle_iou(dets.segmentations[start:stop], gt.segmentations[gt_lo:gt_hi], gt.crowd[gt_lo:gt_hi])
        blocks.append(ious.numpy().reshape(-1))
    return np.concatenate(blocks) if blocks else np.zeros(len(pair_det))


def _match_detections(
    gt: _GroundTruth, dets: _Detections, gt_ignore: np.ndarray, iou_type: str
) -> np.ndarray:
    """``[A, T, D]`` index of the ground truth each detection matches (``-1``: none), greedy by rank."""
    matched_gt = np.full((len(AREA_RANGES), len(IOU_THRESHOLDS), len(dets.group)), -1, dtype=np.int32)
    pair_det, pair_gt = _candidate_pairs(gt, dets)
    if iou_type == "bbox":
        iou = _box_pair_iou(dets.boxes[pair_det], gt.boxes[pair_gt], gt.crowd[pair_gt])
    else:
        iou = _mask_pair_iou(gt, dets, pair_det)
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)
    useful = iou >= thresholds.min()
    pair_det, pair_gt, iou = pair_det[useful], pair_gt[useful], iou[useful]
    by_rank = np.argsort(dets.rank[pair_det], kind="stable")
    pair_det, pair_gt, iou = pair_det[by_rank], pair_gt[by_rank], iou[by_rank]
    step_bounds = np.searchsorted(dets.rank[pair_det], np.arange(MAX_DETS[-1] + 1))
    gt_taken = np.zeros((len(AREA_RANGES), len(IOU_THRESHOLDS), len(gt.group)), dtype=bool)
    for start, stop in itertools.pairwise(step_bounds):
        if stop > start:
            step = slice(start, stop)
            _match_step(
                pair_det[step], pair_gt[step], iou[step], gt, gt_ignore, gt_taken, thresholds, matched_gt
            )
    return matched_gt


def _match_step(
    pair_det: np.ndarray,
    pair_gt: np.ndarray,
    iou: np.ndarray,
    gt: _GroundTruth,
    gt_ignore: np.ndarray,
    gt_taken: np.ndarray,
    thresholds: np.ndarray,
    matched_gt: np.ndarray,
) -> None:
    """Match the detections of one rank (at most one per image/category) at all areas and thresholds."""
    segment_starts = np.flatnonzero(np.r_[True, pair_det[1:] != pair_det[:-1]])
    segment_of_pair = np.cumsum(np.r_[False, pair_det[1:] != pair_det[:-1]])
    free = ~gt_taken[:, :, pair_gt] | gt.crowd[pair_gt]  # [A, T, P]
    eligible = free & (iou[None, None, :] >= thresholds[None, :, None])
    ignored = gt_ignore[:, pair_gt][:, None, :]  # [A, 1, P]
    regular = eligible & ~ignored
    has_regular = np.maximum.reduceat(regular, segment_starts, axis=2)[:, :, segment_of_pair]
    candidate = np.where(has_regular, regular, eligible & ignored)
    value = np.where(candidate, iou[None, None, :], -1.0)
    best_value = np.maximum.reduceat(value, segment_starts, axis=2)[:, :, segment_of_pair]
    best_pair = np.where(candidate & (value == best_value), np.arange(len(pair_det)), -1)
    chosen = np.maximum.reduceat(best_pair, segment_starts, axis=2)  # [A, T, S], last of the ties
    area_index, threshold_index, segment = np.nonzero(chosen >= 0)
    pair = chosen[area_index, threshold_index, segment]
    gt_taken[area_index, threshold_index, pair_gt[pair]] = True
    matched_gt[area_index, threshold_index, pair_det[pair]] = pair_gt[pair]


def _classify_detections(
    matched_gt: np.ndarray, gt_ignore: np.ndarray, det_areas: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``[A, T, D]`` true-positive flags and counted (not ignored) flags."""
    outside = _outside_area_ranges(det_areas)[:, None, :]
    ignored = np.broadcast_to(outside, matched_gt.shape).copy()
    area_index, threshold_index, det_index = np.nonzero(matched_gt >= 0)
    matched_ignored = gt_ignore[area_index, matched_gt[area_index, threshold_index, det_index]]
    ignored[area_index, threshold_index, det_index] = matched_ignored
    true_pos = np.zeros(matched_gt.shape, dtype=bool)
    true_pos[area_index, threshold_index, det_index] = ~matched_ignored
    return true_pos, ~ignored


def _count_positives(gt_category: np.ndarray, gt_ignore: np.ndarray, num_categories: int) -> np.ndarray:
    """``[K, A]`` number of non-ignored ground truths."""
    return np.stack(
        [np.bincount(gt_category[~ignore], minlength=num_categories) for ignore in gt_ignore], axis=1
    )


# ------------------------------------------------------------------------------------ accumulation


def _accumulate(
    true_pos: np.ndarray,
    counted: np.ndarray,
    det_category: np.ndarray,
    det_image: np.ndarray,
    dets: _Detections,
    positives: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' precision [T,R,K,A,M] and recall [T,K,A,M] from per-detection flags [A,T,D].

    Detections are put in pycocotools' accumulation order once: by category, decreasing score, then
    image and rank (its stable sort of the per-image lists concatenated in image order).
    """
    num_categories = positives.shape[0]
    shape = (len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), num_categories, len(AREA_RANGES), len(MAX_DETS))
    precision = -np.ones(shape)
    recall = -np.ones((shape[0], *shape[2:]))
    order = np.lexsort((dets.rank, det_image, -dets.scores, det_category))
    true_pos, counted = true_pos[:, :, order], counted[:, :, order]
    category, rank = det_category[order], dets.rank[order]
    recall_index = [_recall_sample_index(count) for count in positives]
    for m, max_dets in reversed(list(enumerate(MAX_DETS))):  # largest first: each cut narrows the last
        kept = rank < max_dets
        if not kept.all():
            true_pos, counted, category, rank = (
                true_pos[:, :, kept],
                counted[:, :, kept],
                category[kept],
                rank[kept],
            )
        bounds = np.searchsorted(category, np.arange(num_categories + 1))
        for k in np.flatnonzero(positives.any(axis=1)):
            block = slice(bounds[k], bounds[k + 1])
            curve_precision, curve_recall = _category_curves(
                true_pos[:, :, block], counted[:, :, block], positives[k], recall_index[k]
            )
            precision[:, :, k, :, m] = curve_precision.transpose(1, 2, 0)
            recall[:, k, :, m] = curve_recall.T
    valid_areas = positives > 0  # [K, A]
    precision = np.where(valid_areas[None, None, :, :, None], precision, -1.0)
    recall = np.where(valid_areas[None, :, :, None], recall, -1.0)
    return precision, recall


def _recall_sample_index(positives: np.ndarray) -> np.ndarray:
    """``[A, R]``: for each area, the (0-based) number of true positives reached at each recall threshold.

    Recall after ``j`` true positives is ``j / npig``; ``searchsorted(side="left")`` finds the first ``j``
    reaching each threshold, exactly as pycocotools does on the full recall curve.
    """
    index = np.zeros((len(positives), len(RECALL_THRESHOLDS)), dtype=np.int64)
    for a, count in enumerate(positives):
        if count > 0:
            recall_steps = np.arange(1, count + 1, dtype=np.float64) / count
            index[a] = np.searchsorted(recall_steps, RECALL_THRESHOLDS, side="left")
    return index


def _category_curves(
    true_pos: np.ndarray, counted: np.ndarray, positives: np.ndarray, recall_index: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sampled monotone precision ``[A, T, R]`` and final recall ``[A, T]`` of one category and maxDets.

    Only the true-positive positions matter: recall steps there, and precision between two of them can
    only fall, so the monotone envelope at a true positive is the maximum over the later true positives.
    """
    num_areas, num_thresholds, _ = true_pos.shape
    tp_cum = np.cumsum(true_pos, axis=2, dtype=np.int32)
    fp_cum = np.cumsum(counted & ~true_pos, axis=2, dtype=np.int32)
    tp_total = tp_cum[:, :, -1] if tp_cum.shape[2] else np.zeros((num_areas, num_thresholds), dtype=np.int64)
    area_index, threshold_index, position = np.nonzero(true_pos)
    tp_at = tp_cum[area_index, threshold_index, position].astype(np.float64)
    fp_at = fp_cum[area_index, threshold_index, position].astype(np.float64)
    envelope = np.zeros((num_areas, num_thresholds, int(positives.max()) + 1))
    envelope[area_index, threshold_index, tp_at.astype(np.int64) - 1] = tp_at / (
        fp_at + tp_at + np.spacing(1)
    )
    envelope = np.maximum.accumulate(envelope[:, :, ::-1], axis=2)[:, :, ::-1]
    sample = np.broadcast_to(recall_index[:, None, :], (num_areas, num_thresholds, recall_index.shape[1]))
    sampled = np.take_along_axis(envelope, sample.clip(max=envelope.shape[2] - 1), axis=2)
    precision = np.where(sample < tp_total[:, :, None], sampled, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp_total / positives[:, None].astype(np.float64)
    return precision, recall


def _summary_stats(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """The 12 COCO stats: means over the valid (``> -1``) entries of each setting, ``-1`` when none."""
    stats = np.zeros(len(_STAT_SETTINGS))
    for i, (is_ap, iou, area, max_dets) in enumerate(_STAT_SETTINGS):
        a, m = AREA_LABELS.index(area), MAX_DETS.index(max_dets)
        values = precision[:, :, :, a, m] if is_ap else recall[:, :, a, m]
        if iou is not None:
            values = values[_threshold_index(iou)][None]
        stats[i] = _mean_of_valid(values)
    return stats


def _mean_of_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def _threshold_index(iou_threshold: float) -> int:
    matches = np.flatnonzero(np.isclose(IOU_THRESHOLDS, iou_threshold, rtol=0, atol=1e-9))
    if len(matches) == 0:
        raise ValueError(
            f"iou_threshold must be one of {IOU_THRESHOLDS.round(2).tolist()}, got {iou_threshold}"
        )
    return int(matches[0])
