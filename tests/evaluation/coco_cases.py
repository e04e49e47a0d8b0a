"""Seeded generators of adversarial COCO ground truth + results, and the pycocotools oracle."""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

CATEGORY_IDS = (42, 3, 7, 11, 20)  # unsorted on purpose; 20 never has ground truth


def random_box(rng: np.random.Generator, limit: float) -> list[float]:
    """xywh box whose size falls in the small, medium or large COCO range; sometimes integral."""
    low, high = [(2, 30), (33, 90), (100, 200)][rng.integers(3)]
    w, h = rng.uniform(low, high, size=2)
    x, y = rng.uniform(0, limit, size=2)
    box = [x, y, w, h]
    return [float(round(v)) for v in box] if rng.random() < 0.3 else [float(v) for v in box]


def jitter_box(rng: np.random.Generator, box: list[float]) -> list[float]:
    """A detection near ``box``: an exact copy, or shifted/scaled by a few percent."""
    if rng.random() < 0.2:
        return list(box)
    x, y, w, h = box
    dx, dy = rng.normal(0, 0.08, size=2) * [w, h]
    sw, sh = np.exp(rng.normal(0, 0.1, size=2))
    return [float(x + dx), float(y + dy), float(w * sw), float(h * sh)]


def score_sampler(rng: np.random.Generator) -> Any:
    """Scores with many exact ties (a few levels) or two-decimal scores."""
    if rng.random() < 0.5:
        levels = rng.uniform(0, 1, size=4)
        return lambda: float(rng.choice(levels))
    return lambda: float(round(rng.uniform(0, 1), 2))


def random_bbox_case(seed: int, num_images: int = 14) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ground truth and bbox results with crowds, duplicates, empty images, >100 detections, ties."""
    rng = np.random.default_rng(seed)
    image_ids = rng.choice(np.arange(1, 1000), size=num_images, replace=False).tolist()
    images = [{"id": int(i), "height": 300, "width": 300} for i in image_ids]
    annotations, results = [], []
    next_score = score_sampler(rng)
    for index, image_id in enumerate(image_ids):
        num_gt = 0 if index % 5 == 0 else int(rng.integers(1, 9))
        boxes = []
        for _ in range(num_gt):
            box = list(boxes[-1][1]) if boxes and rng.random() < 0.15 else random_box(rng, 150)
            category = int(rng.choice(CATEGORY_IDS[:4]))
            boxes.append((category, box))
            area = box[2] * box[3] * (rng.uniform(0.5, 1.0) if rng.random() < 0.3 else 1.0)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": int(image_id),
                    "category_id": category,
                    "bbox": box,
                    "area": float(area),
                    "iscrowd": int(rng.random() < 0.15),
                }
            )
        if index % 7 == 3:
            continue  # an image without detections
        for category, box in boxes:
            for _ in range(int(rng.integers(0, 4))):
                label = category if rng.random() < 0.85 else int(rng.choice(CATEGORY_IDS))
                results.append(_box_result(image_id, label, jitter_box(rng, box), next_score()))
        extra = 130 if index == 1 else int(rng.integers(0, 6))
        label = int(rng.choice(CATEGORY_IDS))
        for _ in range(extra):
            source = (
                boxes[rng.integers(len(boxes))][1] if boxes and rng.random() < 0.5 else random_box(rng, 150)
            )
            results.append(_box_result(image_id, label, jitter_box(rng, source), next_score()))
    order = rng.permutation(len(annotations))
    categories = [{"id": c, "name": f"class{c}"} for c in CATEGORY_IDS]
    dataset = {"images": images, "annotations": [annotations[i] for i in order], "categories": categories}
    return dataset, results


def _box_result(image_id: int, category: int, box: list[float], score: float) -> dict[str, Any]:
    return {"image_id": int(image_id), "category_id": int(category), "bbox": box, "score": score}


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE (column-major run lengths, starting with a run of zeros) of a binary mask."""
    flat = mask.ravel(order="F")
    bounds = np.r_[0, np.flatnonzero(flat[1:] != flat[:-1]) + 1, flat.size]
    counts = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": [0, *counts] if flat[0] == 1 else counts}


def compressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """JSON-ready compressed RLE of a binary mask."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def random_mask(
    rng: np.random.Generator, height: int, width: int, near: np.ndarray | None = None
) -> np.ndarray:
    """A rectangle, possibly shifted from ``near``, with some pixels flipped."""
    if near is not None and near.any():
        mask = np.roll(near, shift=tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))
    else:
        y0, x0 = rng.integers(0, height - 4), rng.integers(0, width - 4)
        y1, x1 = rng.integers(y0 + 2, height + 1), rng.integers(x0 + 2, width + 1)
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[y0:y1, x0:x1] = 1
    noise = rng.random((height, width)) < 0.01
    return (mask ^ noise).astype(np.uint8)


def random_segm_case(
    seed: int, with_boxes: bool, num_images: int = 10
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ground truth (polygons, RLEs, uncompressed crowd RLEs) and RLE results with ties and empty images."""
    rng = np.random.default_rng(seed)
    image_ids = rng.choice(np.arange(1, 500), size=num_images, replace=False).tolist()
    images, annotations, results = [], [], []
    next_score = score_sampler(rng)
    for index, image_id in enumerate(image_ids):
        height, width = int(rng.integers(20, 110)), int(rng.integers(20, 110))
        images.append({"id": int(image_id), "height": height, "width": width})
        masks = []
        for _ in range(0 if index % 4 == 0 else int(rng.integers(1, 6))):
            category = int(rng.choice(CATEGORY_IDS[:4]))
            crowd = rng.random() < 0.15
            annotation, mask = _segm_annotation(rng, height, width, crowd)
            annotation.update(id=len(annotations) + 1, image_id=int(image_id), category_id=category)
            annotations.append(annotation)
            masks.append((category, mask))
        if index % 5 == 2:
            continue
        for category, mask in masks:
            for _ in range(int(rng.integers(0, 4))):
                label = category if rng.random() < 0.85 else int(rng.choice(CATEGORY_IDS))
                results.append(
                    _segm_result(
                        image_id, label, random_mask(rng, height, width, mask), next_score(), with_boxes
                    )
                )
        for _ in range(int(rng.integers(0, 4))):
            label = int(rng.choice(CATEGORY_IDS))
            results.append(
                _segm_result(image_id, label, random_mask(rng, height, width), next_score(), with_boxes)
            )
    categories = [{"id": c, "name": f"class{c}"} for c in CATEGORY_IDS]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def _segm_annotation(
    rng: np.random.Generator, height: int, width: int, crowd: bool
) -> tuple[dict[str, Any], np.ndarray]:
    if crowd:
        mask = random_mask(rng, height, width)
        segmentation: Any = uncompressed_rle(mask)
    elif rng.random() < 0.5:
        x0, y0 = rng.uniform(0, width / 2), rng.uniform(0, height / 2)
        x1, y1 = rng.uniform(x0 + 2, width), rng.uniform(y0 + 2, height)
        segmentation = [[x0, y0, x1, y0, x1, y1, x0, y1]]
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        with warnings.catch_warnings():  # pycocotools' decode trips a NumPy 2 deprecation warning
            warnings.simplefilter("ignore", DeprecationWarning)
            mask = mask_utils.decode(rle)
    else:
        mask = random_mask(rng, height, width)
        segmentation = compressed_rle(mask)
    area = float(mask.sum()) * (rng.uniform(0.8, 1.2) if rng.random() < 0.3 else 1.0)
    ys, xs = np.nonzero(mask)
    bbox = (
        [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)]
        if len(xs)
        else [0.0] * 4
    )
    return {"segmentation": segmentation, "area": area, "bbox": bbox, "iscrowd": int(crowd)}, mask


def _segm_result(
    image_id: int, category: int, mask: np.ndarray, score: float, with_box: bool
) -> dict[str, Any]:
    result = {
        "image_id": int(image_id),
        "category_id": int(category),
        "segmentation": compressed_rle(mask),
        "score": score,
    }
    if with_box:
        ys, xs = np.nonzero(mask)
        result["bbox"] = [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)]
    return result


def pycocotools_eval(dataset: dict[str, Any], results: list[dict[str, Any]], iou_type: str) -> COCOeval:
    """Run pycocotools' COCOeval (quietly) on copies of the inputs; returns the finished evaluator."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(dataset)
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def pycocotools_class_ap(evaluator: COCOeval) -> dict[int, float]:
    """AP@[.5:.95] per category from pycocotools' precision array (area all, 100 detections)."""
    ap = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        values = evaluator.eval["precision"][:, :, k, 0, -1]
        values = values[values > -1]
        ap[int(category_id)] = float(np.mean(values)) if values.size else -1.0
    return ap
