"""Conversion of box annotations between COCO JSON, Pascal VOC XML and YOLO txt.

Every format is read into an ``AnnotationSet`` (``ImageRecord`` s with continuous ``xyxy`` boxes and labels
``1..C``, the class names and, from COCO, the original category ids) and written from it. Output folders:

- ``coco``: ``<out>/annotations.json`` + ``<out>/images/``;
- ``voc``: ``<out>/Annotations/*.xml`` + ``<out>/JPEGImages/`` + ``<out>/ImageSets/Main/all.txt``;
- ``yolo``: ``<out>/labels/*.txt`` (``class cx cy w h``, normalised, class ``label - 1``) + ``<out>/images/``
  + ``<out>/classes.txt`` (one name per line).

YOLO is also read from an ultralytics ``data.yaml`` (see ``structured.data.yolo``). Images are symlinked
(default), copied, or left alone (``image_mode``). What each format can hold:
VOC stores integer pixels (1-based inclusive), so its boxes are rounded to whole pixels; YOLO stores six
decimals of the normalised coordinates (within 1e-3 px for images under 1000 px); only COCO keeps category
ids and ``iscrowd``; only VOC keeps ``difficult``. Segmentations are not converted. Integer-pixel boxes
make lossless round trips between all three formats.

Crowd regions (COCO ``iscrowd=1``: one box over many objects, ignored by COCO evaluation) are left out of VOC
and YOLO, which have no such flag; they are not written as VOC ``difficult``, a flag for one hard object that
training keeps. ``crowd_count`` says how many a conversion leaves out. Boxes the reader clips or drops are in
``AnnotationSet.report``. The destination must be a new or empty folder, so that no labels of an earlier
conversion mix in, and with images placed (``symlink``, ``copy``) every image must exist.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from structured.data.base import ImageRecord, coco_image_id
from structured.data.coco import parse_coco
from structured.data.loading import read_image_size
from structured.data.summary import coco_image_root, locate_dataset
from structured.data.validate import ValidationReport
from structured.data.voc import VOCDetection, write_voc_xml
from structured.data.yolo import read_yolo
from structured.io import save_json

ANNOTATION_FORMATS = ("coco", "voc", "yolo")
IMAGE_MODES = ("symlink", "copy", "none")
CROWD_FORMATS = ("coco",)
"""The formats that keep crowd regions; the others leave them out."""


@dataclass
class AnnotationSet:
    """Images with boxes in a format-neutral form; ``class_names`` excludes the background.

    ``report`` holds what the reader clipped, dropped or noted (``structured.data.validate``).
    """

    records: list[ImageRecord]
    class_names: list[str]
    category_ids: list[int] | None = None
    report: ValidationReport = field(default_factory=ValidationReport)


def _check_choice(value: str, choices: Sequence[str], argument: str) -> None:
    if value not in choices:
        raise ValueError(f"{argument} must be one of {tuple(choices)}, got {value!r}")


def _image_size(record: ImageRecord) -> tuple[int, int]:
    if record.height and record.width:
        return record.height, record.width
    return read_image_size(record.path)


def read_annotations(fmt: str, source: str | Path, image_root: str | Path | None = None,
                     class_names: Sequence[str] | None = None, split: str | None = None) -> AnnotationSet:
    """Read ``source`` in ``fmt`` (``auto``: found and detected as for training, ``summary.locate_dataset``): a COCO JSON
    file (``image_root`` = its image folder, default: found as the loader finds it, ``coco_image_root``), a VOC
    root (optional ``split``) or a YOLO root or ``data.yaml`` (optional ``split``, default ``train``; see
    ``structured.data.yolo``). ``class_names`` fixes the label order for VOC and YOLO."""
    if fmt == "auto":
        source, fmt = locate_dataset(source)
        if fmt not in ANNOTATION_FORMATS:
            raise ValueError(f"{source} is a mask folder dataset (<id>/images + <id>/masks); box annotations convert "
                             f"between {', '.join(ANNOTATION_FORMATS)}")
    _check_choice(fmt, ANNOTATION_FORMATS, "format")
    if fmt == "coco":
        image_root = coco_image_root(Path(source)) if image_root is None else image_root
        report = ValidationReport()
        records, names, category_ids = parse_coco(source, image_root, report=report)
        report.warn(str(source))
        return AnnotationSet(records, names, category_ids, report)
    if fmt == "voc":
        dataset = VOCDetection(source, split=split, class_names=class_names)
        return AnnotationSet(dataset.records, dataset.class_names[1:], report=dataset.report)
    yolo = read_yolo(source, class_names, split)
    return AnnotationSet(yolo.records, yolo.class_names, report=yolo.report)


def crowd_count(annotations: AnnotationSet, fmt: str) -> int:
    """How many crowd regions writing ``annotations`` in ``fmt`` leaves out (0 for the ``CROWD_FORMATS``)."""
    if fmt in CROWD_FORMATS:
        return 0
    return int(sum(record.iscrowd.astype(bool).sum() for record in annotations.records))


def _without_crowd(annotations: AnnotationSet) -> AnnotationSet:
    records = []
    for record in annotations.records:
        keep = ~record.iscrowd.astype(bool)
        difficult = record.difficult[keep] if record.difficult is not None else None
        records.append(replace(record, boxes=record.boxes[keep], labels=record.labels[keep],
                               iscrowd=record.iscrowd[keep], difficult=difficult))
    return replace(annotations, records=records)


def _place_image(source: Path, target: Path, image_mode: str) -> None:
    if image_mode == "none" or target.exists() or target.is_symlink():
        return
    if image_mode == "copy":
        shutil.copy2(source, target)
    else:
        os.symlink(source.resolve(), target)


def _check_images(records: Sequence[ImageRecord], image_mode: str) -> None:
    counts = Counter(record.path.name for record in records)
    duplicates = sorted(name for name, count in counts.items() if count > 1)
    if duplicates:
        raise ValueError(f"image file names must be unique to share one folder; repeated: {duplicates[:5]}")
    missing = [record.path for record in records if not record.path.is_file()]
    if missing and image_mode != "none":
        listed = ", ".join(str(path) for path in missing[:5])
        raise FileNotFoundError(f"{len(missing)} annotated image(s) not found, e.g. {listed}; fix the file names "
                                "or the image folder, or convert with image_mode='none' (--image-mode none)")


def _check_destination(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"destination {out} is a file; expected a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"destination {out} is not empty; convert into a new or empty folder so that no "
                              "earlier labels mix in")


def _place_images(records: Sequence[ImageRecord], folder: Path, image_mode: str) -> None:
    if image_mode != "none":
        folder.mkdir(parents=True, exist_ok=True)
        for record in records:
            _place_image(record.path, folder / record.path.name, image_mode)


def write_coco(annotations: AnnotationSet, out: str | Path, image_mode: str = "symlink") -> Path:
    """Write ``out/annotations.json`` (+ ``out/images``) and return the JSON path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _place_images(annotations.records, out / "images", image_mode)
    category_ids = annotations.category_ids or list(range(1, len(annotations.class_names) + 1))
    content: dict = {"images": [], "annotations": [], "categories": [
        {"id": int(cid), "name": name} for cid, name in zip(category_ids, annotations.class_names, strict=True)]}
    for index, record in enumerate(annotations.records):
        height, width = _image_size(record)
        image_id = coco_image_id(record.image_id, index)
        content["images"].append({"id": image_id, "file_name": record.path.name, "height": height, "width": width})
        for box, label, crowd in zip(record.boxes.tolist(), record.labels.tolist(), record.iscrowd.tolist(), strict=True):
            x1, y1, x2, y2 = box
            content["annotations"].append({
                "id": len(content["annotations"]) + 1, "image_id": image_id, "category_id": category_ids[label - 1],
                "bbox": [round(v, 3) for v in (x1, y1, x2 - x1, y2 - y1)], "area": round((x2 - x1) * (y2 - y1), 3),
                "iscrowd": int(crowd)})
    return save_json(content, out / "annotations.json")


def write_voc(annotations: AnnotationSet, out: str | Path, image_mode: str = "symlink") -> Path:
    """Write a VOCdevkit-layout folder (``Annotations``, ``JPEGImages``, ``ImageSets/Main/all.txt``), without
    crowd regions."""
    out = Path(out)
    annotations = _without_crowd(annotations)
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    _place_images(annotations.records, out / "JPEGImages", image_mode)
    for record in annotations.records:
        names = [annotations.class_names[label - 1] for label in record.labels]
        write_voc_xml(out / "Annotations" / f"{record.path.stem}.xml", record.path.name, _image_size(record), names,
                      record.boxes, record.difficult)
    (out / "ImageSets" / "Main" / "all.txt").write_text("".join(f"{r.path.stem}\n" for r in annotations.records))
    return out


def write_yolo(annotations: AnnotationSet, out: str | Path, image_mode: str = "symlink") -> Path:
    """Write ``out/labels/*.txt``, ``out/classes.txt`` (+ ``out/images``), without crowd regions."""
    out = Path(out)
    annotations = _without_crowd(annotations)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    _place_images(annotations.records, out / "images", image_mode)
    (out / "classes.txt").write_text("".join(f"{name}\n" for name in annotations.class_names))
    for record in annotations.records:
        text = yolo_label_text(record.boxes, record.labels, _image_size(record))
        (out / "labels" / f"{record.path.stem}.txt").write_text(text)
    return out


def yolo_label_text(boxes: np.ndarray, labels: np.ndarray, image_size: tuple[int, int]) -> str:
    """YOLO label lines ``class cx cy w h`` (class from 0, coordinates normalised) for ``xyxy`` pixel boxes."""
    height, width = image_size
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 / [width, height]
    size = (boxes[:, 2:] - boxes[:, :2]) / [width, height]
    return "".join(f"{label - 1} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n"
                   for label, (cx, cy), (w, h) in zip(np.asarray(labels).tolist(), centre, size, strict=True))


def yolo_segment_text(polygons: Sequence[Sequence[np.ndarray]], labels: np.ndarray, image_size: tuple[int, int]) -> str:
    """YOLO-seg label lines ``class x1 y1 x2 y2 ...`` (normalised) of each instance's largest ring.

    ``polygons`` per instance a list of ``[K, 2]`` (x, y) pixel rings, largest first (as
    ``structured.data.geometry.masks_to_polygons`` gives them); instances without a ring get no line.
    """
    height, width = image_size
    lines = []
    for rings, label in zip(polygons, np.asarray(labels).tolist(), strict=True):
        if rings:
            points = (np.asarray(rings[0], dtype=np.float64) / [width, height]).clip(0, 1).reshape(-1)
            lines.append(f"{label - 1} " + " ".join(f"{value:.6f}" for value in points) + "\n")
    return "".join(lines)


WRITERS = {"coco": write_coco, "voc": write_voc, "yolo": write_yolo}


def write_annotations(annotations: AnnotationSet, fmt: str, out: str | Path, image_mode: str = "symlink") -> Path:
    """Write ``annotations`` in ``fmt`` into the new or empty folder ``out`` (layouts in the module docstring).

    Before anything is written: a non-empty ``out`` raises ``FileExistsError``, an image that is missing
    while ``image_mode`` places images ``FileNotFoundError``, repeated image file names ``ValueError``.
    """
    _check_choice(fmt, ANNOTATION_FORMATS, "format")
    _check_choice(image_mode, IMAGE_MODES, "image_mode")
    _check_destination(Path(out))
    _check_images(annotations.records, image_mode)
    return WRITERS[fmt](annotations, out, image_mode)
