"""COCO instances JSON -> (image, Target), with the category-id mapping both ways.

COCO category ids need not be contiguous (COCO itself uses 1..90 for 80 classes). Categories are sorted
by id and numbered ``1..C``: ``dataset.category_ids[label - 1]`` is the original id of ``label`` and
``dataset.category_id_to_label`` the reverse, so results can be exported with the original ids
(``to_category_ids``).

Boxes: COCO ``[x, y, w, h]`` -> ``xyxy`` pixels; clipped to the declared image size, zero-area ones
dropped (both counted in ``dataset.report``, see ``structured.data.validate``). ``iscrowd`` is kept
(``include_crowd=False`` drops crowd regions). Images without annotations stay as negatives unless
``skip_empty=True``. Masks (``with_masks=True``) are decoded from polygons, compressed or uncompressed
RLE with pycocotools; an annotation without segmentation gets its box as mask.

Exports as Roboflow writes them carry a placeholder category (id 0, named after the supercategory of
all the others, with no annotation); such a category is left out of the classes and noted in
``dataset.report``. A ``bbox`` must hold four numbers; anything else is a ``ValueError`` naming the
file, the annotation id and the image.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

from structured.data.base import DetectionDataset, ImageRecord, Transform
from structured.data.validate import ValidationReport, sanitize_boxes, unknown_class_error
from structured.io import load_json


def _require(entry: dict, keys: Sequence[str], where: str) -> None:
    missing = [key for key in keys if key not in entry]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; present: {sorted(entry)}")


def _parse_categories(content: dict, source: str, report: ValidationReport) -> tuple[list[int], list[str]]:
    categories = content.get("categories")
    if not categories:
        raise ValueError(f"{source}: no 'categories' list; a COCO instances file needs one")
    for index, category in enumerate(categories):
        _require(category, ("id", "name"), f"{source} categories[{index}]")
    placeholders = _placeholder_categories(categories, content.get("annotations", []))
    for category in placeholders:
        report.note(f"{source}: category id={category['id']} {category['name']!r} has no annotations and is the "
                    "supercategory of the others (a placeholder, as Roboflow exports write); not used as a class")
    categories = sorted((c for c in categories if c not in placeholders), key=lambda category: category["id"])
    ids = [int(category["id"]) for category in categories]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}: duplicate category ids in {ids}")
    return ids, [str(category["name"]) for category in categories]


def _placeholder_categories(categories: list[dict], annotations: list) -> list[dict]:
    """The categories no annotation uses whose name is the supercategory of other categories."""
    used = {annotation.get("category_id") for annotation in annotations if isinstance(annotation, dict)}
    parents = {category.get("supercategory") for category in categories
               if category.get("supercategory") != category["name"]}
    return [category for category in categories if category["id"] not in used and category["name"] in parents]


def _parse_images(content: dict, source: str) -> dict[Any, dict]:
    if not isinstance(content.get("images"), list):
        raise ValueError(f"{source}: no 'images' list; a COCO instances file needs one")
    images: dict[Any, dict] = {}
    for index, image in enumerate(content["images"]):
        _require(image, ("id", "file_name"), f"{source} images[{index}]")
        if image["id"] in images:
            raise ValueError(f"{source}: duplicate image id {image['id']!r} (images[{index}])")
        images[image["id"]] = image
    return images


def _group_annotations(content: dict, images: dict, id_to_label: dict[int, int], source: str) -> dict:
    grouped = defaultdict(list)
    for index, annotation in enumerate(content.get("annotations", [])):
        where = f"{source} annotation id={annotation.get('id', f'[{index}]')}"
        _require(annotation, ("image_id", "category_id", "bbox"), where)
        if annotation["image_id"] not in images:
            raise ValueError(f"{where}: refers to image_id {annotation['image_id']!r}, which is not in 'images'")
        if annotation["category_id"] not in id_to_label:
            raise unknown_class_error(annotation["category_id"], id_to_label, where, "category id")
        _check_bbox(annotation["bbox"], images[annotation["image_id"]], where)
        _check_segmentation(annotation.get("segmentation"), images[annotation["image_id"]], where)
        grouped[annotation["image_id"]].append(annotation)
    return grouped


def _in_image(where: str, image: dict) -> str:
    """``where`` (an annotation) followed by its image's id and file, for error messages."""
    return f"{where} (image_id={image['id']}, {image['file_name']})"


def _check_bbox(bbox: Any, image: dict, where: str) -> None:
    numbers = isinstance(bbox, list) and len(bbox) == 4 and all(
        isinstance(value, (int, float)) and not isinstance(value, bool) for value in bbox)
    if not numbers:
        raise ValueError(f"{_in_image(where, image)}: bbox must be 4 numbers [x, y, width, height], got {bbox!r}")


_NUMBER_TYPES = {int, float}


def _check_segmentation(segmentation: Any, image: dict, where: str) -> None:
    """Polygons (lists of numbers, x and y in turn) or RLE (a dict with ``size`` and ``counts``), or none."""
    if segmentation is None or segmentation == []:
        return
    where = _in_image(where, image)
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)) \
                or not isinstance(segmentation.get("counts"), (str, bytes, list)):
            raise ValueError(f"{where}: RLE segmentation must have 'size' [height, width] and 'counts', "
                             f"got keys {sorted(segmentation)}")
        return
    if not isinstance(segmentation, list):
        raise ValueError(f"{where}: segmentation must be a list of polygons or an RLE dict, got "
                         f"{type(segmentation).__name__}")
    for index, ring in enumerate(segmentation):
        numbers = isinstance(ring, list) and set(map(type, ring)) <= _NUMBER_TYPES  # JSON numbers: int or float
        if not numbers or len(ring) % 2:
            shown = f"{len(ring)} numbers" if numbers else repr(ring)[:60]
            raise ValueError(f"{where}: segmentation polygon {index} must be x, y pairs of numbers "
                             f"[x1, y1, x2, y2, ...], got {shown}")


def _image_record(image: dict, annotations: list[dict], image_root: Path, id_to_label: dict[int, int],
                  source: str, report: ValidationReport) -> ImageRecord:
    where = f"{source} image_id={image['id']} ({image['file_name']})"
    xywh = np.asarray([a["bbox"] for a in annotations], dtype=np.float32).reshape(-1, 4)
    xyxy = np.concatenate((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), axis=1)
    size = (int(image["height"]), int(image["width"])) if "height" in image and "width" in image else None
    boxes, keep = sanitize_boxes(xyxy, size, where, report)
    kept = [annotation for annotation, ok in zip(annotations, keep, strict=True) if ok]
    return ImageRecord(
        image_id=image["id"], path=image_root / image["file_name"], boxes=boxes[keep],
        labels=[id_to_label[a["category_id"]] for a in kept],
        height=size[0] if size else None, width=size[1] if size else None,
        iscrowd=np.asarray([int(a.get("iscrowd", 0)) for a in kept], dtype=np.int64),
        extra={"segmentations": [a.get("segmentation") for a in kept]},
    )


def parse_coco(annotation_file: str | Path, image_root: str | Path, include_crowd: bool = True,
               report: ValidationReport | None = None) -> tuple[list[ImageRecord], list[str], list[int]]:
    """Parse a COCO instances file into ``(records, class names, category ids)``.

    ``category_ids[label - 1]`` is the original id of contiguous ``label``. Problems are added to ``report``;
    structural errors (missing keys, unknown image or category ids, malformed JSON) raise ``ValueError``.
    """
    source = str(annotation_file)
    report = report if report is not None else ValidationReport()
    content = load_json(annotation_file, "annotation")
    if not isinstance(content, dict):
        raise ValueError(f"{source}: expected a JSON object with 'images', 'annotations', 'categories'")
    category_ids, class_names = _parse_categories(content, source, report)
    id_to_label = {category_id: label for label, category_id in enumerate(category_ids, start=1)}
    images = _parse_images(content, source)
    grouped = _group_annotations(content, images, id_to_label, source)
    records = []
    for image_id, image in images.items():
        annotations = [a for a in grouped[image_id] if include_crowd or not a.get("iscrowd", 0)]
        records.append(_image_record(image, annotations, Path(image_root), id_to_label, source, report))
    return records, class_names, category_ids


def segmentation_to_mask(segmentation: Any, box: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 ``[H, W]`` mask of a COCO segmentation (polygons, RLE); the box when there is none."""
    if isinstance(segmentation, list) and segmentation:
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict):
        rle = segmentation
    else:
        mask = np.zeros((height, width), dtype=np.uint8)
        x1, y1, x2, y2 = np.round(box).astype(int)
        mask[y1:y2, x1:x2] = 1
        return mask
    return mask_utils.decode(rle).astype(np.uint8)


def polygon_rings(segmentation: Any) -> list[np.ndarray]:
    """``[K, 2]`` float32 rings of a COCO polygon segmentation; ``[]`` for RLE or none."""
    if not isinstance(segmentation, list):
        return []
    rings = [np.asarray(ring, dtype=np.float32).reshape(-1, 2) for ring in segmentation]
    return [ring for ring in rings if len(ring) >= 3]


class CocoDetection(DetectionDataset):
    """A COCO instances file and its image folder as a dataset of ``(image, Target)``.

    Extra attributes: ``category_ids`` (original id of label ``i`` at ``i - 1``), ``category_id_to_label``,
    ``annotation_file``. ``skip_bad=True`` decodes every image once and leaves out the unreadable ones
    (listed in ``report``) instead of failing when they are reached.
    """

    def __init__(self, annotation_file: str | Path, image_root: str | Path, transforms: Transform | None = None,
                 with_masks: bool = False, include_crowd: bool = True, skip_empty: bool = False,
                 skip_bad: bool = False, seed: int = 0) -> None:
        report = ValidationReport()
        records, class_names, category_ids = parse_coco(annotation_file, image_root, include_crowd, report)
        if skip_empty:
            records = [record for record in records if len(record.labels)]
        super().__init__(records, class_names, transforms, with_masks, seed, skip_bad, report)
        self.annotation_file = Path(annotation_file)
        self.category_ids = category_ids
        self.category_id_to_label = {category_id: label for label, category_id in enumerate(category_ids, start=1)}
        self.report.warn(str(annotation_file))

    def load_masks(self, record: ImageRecord, height: int, width: int) -> np.ndarray:
        """Decode the instance masks of ``record`` at the decoded image's size."""
        if (record.height, record.width) not in ((height, width), (None, None)):
            raise ValueError(f"{record.path}: image is {height}x{width} (HxW) but {self.annotation_file} "
                             f"declares {record.height}x{record.width}")
        masks = [segmentation_to_mask(segmentation, box, height, width)
                 for segmentation, box in zip(record.extra["segmentations"], record.boxes, strict=True)]
        return np.stack(masks) if masks else np.zeros((0, height, width), dtype=np.uint8)

    def load_polygons(self, record: ImageRecord) -> list[list[np.ndarray]] | None:
        """Polygon rings per instance (``[]`` for RLE instances); None when no instance has polygons."""
        polygons = [polygon_rings(segmentation) for segmentation in record.extra["segmentations"]]
        return polygons if any(polygons) else None
