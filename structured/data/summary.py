"""Dataset inspection: open any supported layout, count images / boxes / sizes / problems, draw a mosaic.

``open_dataset`` recognises a COCO JSON file, a VOC folder (VOCdevkit or flat), a YOLO folder
(``images/`` + ``labels/`` + ``classes.txt``) or ultralytics ``data.yaml`` (the file or its folder) and a
DSB2018-style mask folder. ``summarize_dataset``
decodes every image once, so unreadable files show up as problems instead of failing mid-training.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from structured.data.base import DetectionDataset
from structured.data.coco import CocoDetection
from structured.data.folders import MaskFolderDataset
from structured.data.loading import ImageReadError
from structured.data.validate import ValidationReport
from structured.data.voc import IMAGE_EXTENSIONS, VOCDetection
from structured.data.yolo import YAML_SUFFIXES, read_yolo, yolo_data_file
from structured.visualize import draw_detections, save_image

DATASET_FORMATS = ("auto", "coco", "voc", "yolo", "folders")


def detect_format(path: Path) -> str:
    """The layout of ``path``: ``coco``, ``voc``, ``yolo`` or ``folders``; ``ValueError`` when none fits."""
    if path.suffix == ".json":
        return "coco"
    if path.suffix in YAML_SUFFIXES or (path.is_dir() and yolo_data_file(path) is not None):
        return "yolo"
    if (path / "Annotations").is_dir() or (path / "annotations").is_dir():
        return "voc"
    if (path / "labels").is_dir() and (path / "images").is_dir():
        return "yolo"
    if path.is_dir() and any((child / "images").is_dir() for child in path.iterdir()):
        return "folders"
    raise ValueError(f"{path}: cannot tell the dataset format; expected a COCO .json file, a VOC folder "
                     f"(Annotations/ or annotations/), a YOLO folder (images/ + labels/) or data.yaml, or <id>/images/ + <id>/masks/")


def locate_dataset(path: str | Path, fmt: str = "auto",
                   detect: Callable[[Path], str] = detect_format) -> tuple[Path, str]:
    """``(path, format)`` of the dataset at ``path`` (``fmt``, or ``detect(path)`` for ``auto``), looking one folder
    down when ``path`` itself is none and exactly one folder inside it is (``dsb2018_nuclei/stage1_train``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    if fmt != "auto":
        return path, fmt
    try:
        return path, detect(path)
    except ValueError as error:
        children = [child for child in sorted(path.iterdir()) if child.is_dir()] if path.is_dir() else []
        found = []
        for child in children:
            try:
                found.append((child, detect(child)))
            except ValueError:
                continue
        if len(found) == 1:
            return found[0]
        raise ValueError(f"{error} (and not exactly one dataset folder inside it: found {len(found)})") from None


def coco_image_root(annotation_file: Path) -> Path:
    """``images/`` beside the file or its folder, ``JPEGImages/`` beside its folder, else the file's own
    folder when it holds images (Roboflow's ``train/_annotations.coco.json`` among ``train/*.jpg``)."""
    for candidate in (annotation_file.parent / "images", annotation_file.parent.parent / "images",
                      annotation_file.parent.parent / "JPEGImages"):
        if candidate.is_dir():
            return candidate
    if any(child.suffix in IMAGE_EXTENSIONS for child in annotation_file.parent.iterdir()):
        return annotation_file.parent
    raise ValueError(f"{annotation_file}: image folder not found (looked for images/ beside it and beside its "
                     "folder, ../JPEGImages/, and images in its own folder); pass image_root")


def open_dataset(path: str | Path, fmt: str = "auto", image_root: str | Path | None = None,
                 split: str | None = None, class_names: Sequence[str] | None = None) -> DetectionDataset:
    """Open ``path`` as a detection dataset (masks not loaded), guessing the format when ``fmt="auto"``.

    ``split`` is a VOC ``ImageSets/Main`` split or a ``data.yaml`` split (``train``, ``val``; default ``train``).
    ``class_names`` (the recipe's ``data.classes``) fixes the classes and their order where the format
    discovers them (VOC; mask folders: one name); COCO and YOLO name their own, which must equal it.
    """
    path = Path(path)
    if fmt not in DATASET_FORMATS:
        raise ValueError(f"format must be one of {DATASET_FORMATS}, got {fmt!r}")
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "voc":
        return VOCDetection(path, split=split, class_names=class_names)
    if fmt == "folders":
        return _mask_folders(path, class_names)
    if fmt == "coco":
        dataset = CocoDetection(path, image_root if image_root is not None else coco_image_root(path))
    else:
        annotations = read_yolo(path, split=split)
        dataset = DetectionDataset(annotations.records, annotations.class_names, report=annotations.report)
    if class_names is not None and list(class_names) != dataset.class_names[1:]:
        raise ValueError(f"{path}: data.classes {list(class_names)} differ from the classes the {fmt} data names, "
                         f"{dataset.class_names[1:]}; leave data.classes out for {fmt} data or make it equal")
    return dataset


def _mask_folders(path: Path, class_names: Sequence[str] | None) -> MaskFolderDataset:
    if class_names is None:
        return MaskFolderDataset(path, with_masks=False)
    if len(class_names) != 1:
        raise ValueError(f"{path}: a mask folder dataset has one class; data.classes must name one, got {list(class_names)}")
    return MaskFolderDataset(path, class_name=class_names[0], with_masks=False)


@dataclass
class DatasetSummary:
    """Counts over a dataset; ``problems`` holds parse-time and decode-time findings."""

    num_images: int = 0
    num_empty_images: int = 0
    boxes_per_class: Counter = field(default_factory=Counter)
    image_sizes: Counter = field(default_factory=Counter)
    box_sides: list[float] = field(default_factory=list)
    problems: ValidationReport = field(default_factory=ValidationReport)


def summarize_dataset(dataset: DetectionDataset) -> DatasetSummary:
    """Decode every sample of ``dataset`` and count images, boxes per class, sizes and problems.

    The problems are the dataset's ``report`` (parse-time findings and those made while loading, such as
    empty mask files), each sample that fails to load (``bad_sample``), and ``no_objects`` when no image has
    an object at all (nothing to train on).
    """
    summary = DatasetSummary(num_images=len(dataset))
    load_problems = ValidationReport()
    for index in range(len(dataset)):
        try:
            image, target = dataset.load_sample(index)
        except (ImageReadError, ValueError) as error:
            load_problems.add("bad_sample", str(error))
            continue
        summary.image_sizes[image.shape[:2]] += 1
        summary.num_empty_images += int(len(target["labels"]) == 0)
        summary.boxes_per_class.update(dataset.class_names[label] for label in target["labels"].tolist())
        sides = target["boxes"][:, 2:] - target["boxes"][:, :2]
        summary.box_sides.extend(np.sqrt(sides.prod(axis=1)).tolist())
    if len(dataset) and not summary.boxes_per_class:
        load_problems.add("no_objects", f"none of the {len(dataset)} images has an object; a training set needs "
                                        "annotated objects")
    for report in (dataset.report, load_problems):
        summary.problems.counts.update(report.counts)
        summary.problems.messages.extend(report.messages)
        summary.problems.notes.extend(report.notes)
    return summary


def format_summary(summary: DatasetSummary, source: str) -> str:
    """Human-readable report of ``summary``."""
    sides = np.asarray(summary.box_sides)
    lines = [f"dataset: {source}", f"images: {summary.num_images} ({summary.num_empty_images} without objects)",
             f"boxes: {int(sum(summary.boxes_per_class.values()))}"]
    lines += [f"  {name}: {count}" for name, count in sorted(summary.boxes_per_class.items())]
    if len(sides):
        low, median, high = np.percentile(sides, [0, 50, 100])
        lines.append(f"box size sqrt(w*h) px: min {low:.1f}, median {median:.1f}, max {high:.1f}")
    common = ", ".join(f"{w}x{h} ({n})" for (h, w), n in summary.image_sizes.most_common(5))
    lines.append(f"image sizes (WxH, most common): {common}")
    lines.append(summary.problems.summary("problems") if summary.problems else "problems: none")
    if summary.problems.notes and not summary.problems:
        lines += [f"note: {note}" for note in summary.problems.notes]
    return "\n".join(lines)


def _tile(image: np.ndarray, target: dict, class_names: list[str], size: int) -> np.ndarray:
    scale = size / max(image.shape[:2])
    resized = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    tile = np.zeros((size, size, 3), dtype=np.uint8)
    tile[:resized.shape[0], :resized.shape[1]] = resized
    return draw_detections(tile, target["boxes"] * scale, target["labels"], class_names=class_names)


def write_mosaic(dataset: DetectionDataset, path: str | Path, count: int = 16, columns: int = 4, tile_size: int = 256,
                 seed: int = 0) -> Path:
    """Write a PNG grid of ``count`` randomly chosen annotated samples (drawn at load time) to ``path``; samples
    that fail to load are left out."""
    if len(dataset) == 0:
        raise ValueError("the dataset is empty; nothing to draw")
    rng = np.random.default_rng(seed)
    indices = rng.choice(len(dataset), size=min(count, len(dataset)), replace=False)
    tiles = []
    for index in sorted(indices.tolist()):
        try:
            image, target = dataset.load_sample(index)
        except (ImageReadError, ValueError):
            continue  # summarize_dataset lists it as a bad sample
        tiles.append(_tile(image, target, dataset.class_names, tile_size))
    if not tiles:
        raise ValueError(f"none of the {len(indices)} samples chosen for the mosaic could be loaded; nothing to draw")
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
    rows = [np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    return save_image(np.vstack(rows), path)
