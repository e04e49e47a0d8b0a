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

Structure: ``images`` and ``categories`` are lists of objects, image and category ids integers (as
pycocotools and the evaluation expect), annotation ids unique; ``annotations`` a list of objects, or absent:
a file without it (as COCO's ``image_info_test`` files) holds unlabelled test images, which a training set
refuses (``structured.data.recipes``) and ``inspect_dataset`` reports as ``no_objects``. Segmentations:
a polygon needs at least 3 points (6 numbers); shorter ones are dropped (counted), and an annotation left
without any polygon is dropped with them, as detectron2 does; an RLE ``size`` must be the ``[height, width]``
of its image.
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


def _require(entry: Any, keys: Sequence[str], where: str) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a JSON object with keys {list(keys)}, got {type(entry).__name__}")
    missing = [key for key in keys if key not in entry]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; present: {sorted(entry)}")


def _require_integer_id(value: Any, key: str, where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{where}: '{key}' must be an integer (COCO ids are integers), got {value!r}")


def _check_image_size(image: dict, where: str) -> None:
    for key in ("height", "width"):
        value = image.get(key)
        if key in image and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{where}: '{key}' must be a positive integer (pixels), got {value!r}")


def _list_of(content: dict, key: str, source: str) -> list:
    """``content[key]`` when it is a list; ``ValueError`` naming the file and the key otherwise."""
    value = content.get(key)
    if not isinstance(value, list):
        shown = "none" if key not in content else f"a {type(value).__name__}"
        raise ValueError(f"{source}: '{key}' must be a list of objects, got {shown}")
    return value


def _annotation_list(content: dict, source: str) -> list:
    """The ``annotations`` list; ``[]`` when the key is absent (a file of unlabelled test images)."""
    return _list_of(content, "annotations", source) if "annotations" in content else []


def _parse_categories(content: dict, source: str, report: ValidationReport) -> tuple[list[int], list[str]]:
    categories = _list_of(content, "categories", source)
    if not categories:
        raise ValueError(f"{source}: the 'categories' list is empty; a COCO instances file needs one")
    for index, category in enumerate(categories):
        _require(category, ("id", "name"), f"{source} categories[{index}]")
        _require_integer_id(category["id"], "id", f"{source} categories[{index}]")
    placeholders = _placeholder_categories(categories, _annotation_list(content, source))
    for category in placeholders:
        report.note(f"{source}: category id={category['id']} {category['name']!r} has no annotations and is the "
                    "supercategory of the others (a placeholder, as Roboflow exports write); not used as a class")
    categories = sorted((c for c in categories if c not in placeholders), key=lambda category: category["id"])
    ids = [category["id"] for category in categories]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}: duplicate category ids in {ids}")
    return ids, [str(category["name"]) for category in categories]


def _placeholder_categories(categories: list[dict], annotations: list) -> list[dict]:
    """The categories no annotation uses whose name is the supercategory of other categories."""
    used = {annotation.get("category_id") for annotation in annotations
            if isinstance(annotation, dict) and isinstance(annotation.get("category_id"), int)}
    parents = {category.get("supercategory") for category in categories
               if isinstance(category.get("supercategory"), str) and category.get("supercategory") != category["name"]}
    return [category for category in categories if category["id"] not in used and category["name"] in parents]


def _parse_images(content: dict, source: str) -> dict[int, dict]:
    images: dict[int, dict] = {}
    for index, image in enumerate(_list_of(content, "images", source)):
        _require(image, ("id", "file_name"), f"{source} images[{index}]")
        _require_integer_id(image["id"], "id", f"{source} images[{index}]")
        _check_image_size(image, f"{source} images[{index}]")
        if image["id"] in images:
            raise ValueError(f"{source}: duplicate image id {image['id']!r} (images[{index}])")
        images[image["id"]] = image
    return images


def _group_annotations(content: dict, images: dict, id_to_label: dict[int, int], source: str,
                       report: ValidationReport) -> dict:
    grouped = defaultdict(list)
    annotation_ids: dict[Any, int] = {}
    for index, annotation in enumerate(_annotation_list(content, source)):
        where = _annotation_where(annotation, index, source)
        _require(annotation, ("image_id", "category_id", "bbox"), where)
        _check_annotation_ids(annotation, index, annotation_ids, where)
        if annotation["image_id"] not in images:
            raise ValueError(f"{where}: refers to image_id {annotation['image_id']!r}, which is not in 'images'")
        if annotation["category_id"] not in id_to_label:
            raise unknown_class_error(annotation["category_id"], id_to_label, where, "category id")
        image = images[annotation["image_id"]]
        _check_bbox(annotation["bbox"], image, where)
        _check_segmentation(annotation.get("segmentation"), image, where)
        grouped[image["id"]].append(_without_short_polygons(annotation, _in_image(where, image), report))
    return grouped


def _annotation_where(annotation: Any, index: int, source: str) -> str:
    """``<file> annotation id=<id>`` for error messages (its position when it has no id)."""
    has_id = isinstance(annotation, dict) and "id" in annotation
    return f"{source} annotation id={annotation['id'] if has_id else f'[{index}]'}"


def _check_annotation_ids(annotation: dict, index: int, seen: dict[Any, int], where: str) -> None:
    """Integer ``image_id`` / ``category_id`` / ``id``, and an ``id`` no earlier annotation has."""
    for key in ("image_id", "category_id", *(("id",) if "id" in annotation else ())):
        _require_integer_id(annotation[key], key, where)
    if "id" in annotation:
        if annotation["id"] in seen:
            raise ValueError(f"{where}: duplicate annotation id (annotations[{seen[annotation['id']]}] and "
                             f"annotations[{index}]); annotation ids must be unique")
        seen[annotation["id"]] = index


def _without_short_polygons(annotation: dict, where: str, report: ValidationReport) -> dict:
    """``annotation`` without its polygons of fewer than 3 points (counted once in ``report``; pycocotools misreads
    them); when none is left, without a segmentation: its box stays an object, its mask falls back to the box."""
    segmentation = annotation.get("segmentation")
    if not isinstance(segmentation, list) or not segmentation:
        return annotation
    rings = [ring for ring in segmentation if len(ring) >= 2 * MIN_POLYGON_POINTS]
    if len(rings) == len(segmentation):
        return annotation
    dropped = "that polygon is dropped" if rings else "its segmentation is dropped (the box is kept)"
    report.add("short_polygon", f"{where}: segmentation polygon of fewer than {MIN_POLYGON_POINTS} points "
                                f"(6 numbers); {dropped}")
    if rings:
        return {**annotation, "segmentation": rings}
    return {key: value for key, value in annotation.items() if key != "segmentation"}


def _in_image(where: str, image: dict) -> str:
    """``where`` (an annotation) followed by its image's id and file, for error messages."""
    return f"{where} (image_id={image['id']}, {image['file_name']})"


def _check_bbox(bbox: Any, image: dict, where: str) -> None:
    numbers = isinstance(bbox, list) and len(bbox) == 4 and all(
        isinstance(value, (int, float)) and not isinstance(value, bool) for value in bbox)
    if not numbers:
        raise ValueError(f"{_in_image(where, image)}: bbox must be 4 numbers [x, y, width, height], got {bbox!r}")


_NUMBER_TYPES = {int, float}
MIN_POLYGON_POINTS = 3


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
        declared = [image.get("height"), image.get("width")]
        if None not in declared and size != declared:
            raise ValueError(f"{where}: RLE segmentation 'size' is {size} but the image is {declared} "
                             "[height, width]; expected the image's size")
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
    size = (image["height"], image["width"]) if "height" in image and "width" in image else None
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
    grouped = _group_annotations(content, images, id_to_label, source, report)
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

    @property
    def has_segmentations(self) -> bool:
        """Whether any annotation has a segmentation (else masks are the boxes filled as rectangles)."""
        return any(bool(segmentation) for record in self.records for segmentation in record.extra["segmentations"])

    def load_masks(self, record: ImageRecord, height: int, width: int) -> np.ndarray:
        """Decode the instance masks of ``record`` at the decoded image's size (``load_sample`` has checked it
        against the declared size; an RLE of another size is a ``ValueError`` naming the image)."""
        masks = [segmentation_to_mask(segmentation, box, height, width)
                 for segmentation, box in zip(record.extra["segmentations"], record.boxes, strict=True)]
        for mask in masks:
            if mask.shape != (height, width):
                raise ValueError(f"{record.path}: an RLE segmentation in {self.annotation_file} is {mask.shape[1]}x"
                                 f"{mask.shape[0]} (WxH) but the image is {width}x{height}; expected the image's size")
        return np.stack(masks) if masks else np.zeros((0, height, width), dtype=np.uint8)

    def load_polygons(self, record: ImageRecord) -> list[list[np.ndarray]] | None:
        """Polygon rings per instance (``[]`` for RLE instances); None when no instance has polygons."""
        polygons = [polygon_rings(segmentation) for segmentation in record.extra["segmentations"]]
        return polygons if any(polygons) else None
