"""Pascal VOC: XML boxes (detection) and ``SegmentationClass`` palette PNGs (semantic segmentation).

Two layouts are recognised under ``root``:

- VOCdevkit: ``JPEGImages/``, ``Annotations/``, ``ImageSets/Main/<split>.txt`` (and
  ``ImageSets/Segmentation/<split>.txt``, ``SegmentationClass/`` for segmentation);
- flat: ``images/`` + ``annotations/`` (every XML in ``annotations/``, natural name order).

VOC coordinates are 1-based inclusive pixel indices; they become continuous ``xyxy`` as
``(xmin - 1, ymin - 1, xmax, ymax)``. XML is parsed with defusedxml: DTDs, entity declarations and
external references are refused with a ``ValueError`` naming the file (``xml.etree`` only writes).

The class list is given (the recipe's ``data.classes``) or discovered (sorted names found in the files).
Names are stripped of surrounding whitespace (a trailing space is a labelling slip); an object with a name
outside a given list raises a ``ValueError`` naming its file and listing the known names. Discovered names
that differ only in letter case (``Raccoon``, ``raccoon``) are counted in ``dataset.report``
(``similar_class_names``): giving the class list makes the stray ones errors. ``difficult`` objects are
kept with ``target["difficult"]`` unless ``keep_difficult=False``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import defusedxml
import defusedxml.ElementTree as SafeET
import numpy as np

from structured.data.base import (
    BACKGROUND,
    DetectionDataset,
    ImageRecord,
    SemanticSegmentationDataset,
    Transform,
)
from structured.data.validate import ValidationReport, sanitize_boxes, unknown_class_error

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")


@dataclass
class VocObject:
    """One ``<object>``: class name, continuous ``xyxy`` box, flags."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool = False
    truncated: bool = False


@dataclass
class VocAnnotation:
    """One parsed VOC XML file."""

    path: Path
    filename: str | None
    width: int | None
    height: int | None
    objects: list[VocObject] = field(default_factory=list)


def write_voc_xml(path: str | Path, filename: str, image_size: tuple[int, int], names: Sequence[str],
                  boxes: np.ndarray, difficult: Sequence[bool] | None = None) -> None:
    """Write one VOC XML file; ``boxes`` continuous ``xyxy`` become 1-based inclusive integer pixels."""
    height, width = image_size
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    difficult = difficult if difficult is not None else [False] * len(names)
    for name, (x1, y1, x2, y2), hard in zip(names, np.asarray(boxes).tolist(), difficult, strict=True):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        touches_border = x1 <= 0 or y1 <= 0 or x2 >= width or y2 >= height
        ET.SubElement(obj, "truncated").text = str(int(touches_border))
        ET.SubElement(obj, "difficult").text = str(int(hard))
        bndbox = ET.SubElement(obj, "bndbox")
        for key, value in (("xmin", round(x1) + 1), ("ymin", round(y1) + 1), ("xmax", round(x2)), ("ymax", round(y2))):
            ET.SubElement(bndbox, key).text = str(value)
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="unicode")


def natural_key(text: str) -> list:
    """Sort key that orders embedded numbers numerically (``raccoon-2`` before ``raccoon-10``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _parse_tree(path: Path) -> ET.Element:
    try:
        return SafeET.parse(path).getroot()
    except defusedxml.DefusedXmlException as error:
        raise ValueError(f"{path}: XML refused for safety (DTD / entities / external references): {error!r}") from None
    except ET.ParseError as error:
        line, column = error.position
        raise ValueError(f"{path}: malformed XML at line {line} column {column}: {error}") from None


def _number(element: ET.Element, tag: str, where: str) -> float:
    text = element.findtext(tag)
    try:
        return float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: <{tag}> must be a number, got {text!r}") from None


def _optional_int(element: ET.Element | None, tag: str) -> int | None:
    text = element.findtext(tag) if element is not None else None
    try:
        return int(float(text)) if text else None
    except ValueError:
        return None


def _parse_object(element: ET.Element, where: str) -> VocObject:
    name = (element.findtext("name") or "").strip()
    if not name:
        raise ValueError(f"{where}: <object> without a <name>")
    bndbox = element.find("bndbox")
    if bndbox is None:
        raise ValueError(f"{where}: <object> {name!r} has no <bndbox>")
    xmin, ymin, xmax, ymax = (_number(bndbox, tag, where) for tag in ("xmin", "ymin", "xmax", "ymax"))
    return VocObject(name=name, box=(xmin - 1, ymin - 1, xmax, ymax),
                     difficult=_optional_int(element, "difficult") == 1,
                     truncated=_optional_int(element, "truncated") == 1)


def parse_voc_xml(path: str | Path) -> VocAnnotation:
    """Parse one VOC XML file (safely); structural problems raise ``ValueError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"annotation file not found: {path}")
    root = _parse_tree(path)
    if root.tag != "annotation":
        raise ValueError(f"{path}: root element is <{root.tag}>, expected <annotation>")
    size = root.find("size")
    objects = [_parse_object(element, f"{path} object {index}") for index, element in enumerate(root.iter("object"))]
    return VocAnnotation(path=path, filename=(root.findtext("filename") or "").strip() or None,
                         width=_optional_int(size, "width") or None, height=_optional_int(size, "height") or None,
                         objects=objects)


def _find_image(image_dir: Path, stem: str, filename: str | None) -> Path:
    if filename and (image_dir / filename).is_file():
        return image_dir / filename
    for extension in IMAGE_EXTENSIONS:
        candidate = image_dir / f"{stem}{extension}"
        if candidate.is_file():
            return candidate
    return image_dir / (filename or f"{stem}.jpg")


def voc_layout(root: Path) -> tuple[Path, Path]:
    """``(image folder, annotation folder)`` of a VOCdevkit or flat layout under ``root``."""
    for image_folder, annotation_folder in (("JPEGImages", "Annotations"), ("images", "annotations")):
        if (root / annotation_folder).is_dir():
            return root / image_folder, root / annotation_folder
    raise ValueError(f"{root}: not a VOC dataset; expected JPEGImages/ + Annotations/ (VOCdevkit) "
                     f"or images/ + annotations/ (flat)")


def read_split(root: Path, split: str, task: str = "Main") -> list[str]:
    """Image ids listed in ``ImageSets/<task>/<split>.txt`` (first column)."""
    path = root / "ImageSets" / task / f"{split}.txt"
    if not path.is_file():
        available = sorted(p.stem for p in (root / "ImageSets" / task).glob("*.txt"))
        raise ValueError(f"split file not found: {path}; available splits: {available}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _annotation_files(root: Path, annotation_dir: Path, split: str | None) -> list[Path]:
    if split is not None:
        return [annotation_dir / f"{image_id}.xml" for image_id in read_split(root, split)]
    return sorted(annotation_dir.glob("*.xml"), key=lambda path: natural_key(path.name))


def _voc_record(annotation: VocAnnotation, image_dir: Path, class_to_label: dict[str, int], keep_difficult: bool,
                report: ValidationReport) -> ImageRecord:
    where = str(annotation.path)
    objects = [obj for obj in annotation.objects if keep_difficult or not obj.difficult]
    for obj in objects:
        if obj.name not in class_to_label:
            raise unknown_class_error(obj.name, class_to_label, where)
    size = (annotation.height, annotation.width) if annotation.height and annotation.width else None
    boxes, keep = sanitize_boxes(np.asarray([obj.box for obj in objects], dtype=np.float32), size, where, report)
    kept = [obj for obj, ok in zip(objects, keep, strict=True) if ok]
    return ImageRecord(
        image_id=annotation.path.stem, path=_find_image(image_dir, annotation.path.stem, annotation.filename),
        boxes=boxes[keep], labels=[class_to_label[obj.name] for obj in kept],
        height=annotation.height, width=annotation.width,
        difficult=np.asarray([obj.difficult for obj in kept], dtype=bool),
    )


def discover_classes(annotations: Sequence[VocAnnotation]) -> list[str]:
    """Sorted distinct object names found in ``annotations``."""
    return sorted({obj.name for annotation in annotations for obj in annotation.objects})


def _report_similar_names(class_names: Sequence[str], where: str, report: ValidationReport) -> None:
    """Add to ``report`` each group of ``class_names`` that differ only in letter case."""
    groups: dict[str, list[str]] = {}
    for name in class_names:
        groups.setdefault(name.casefold(), []).append(name)
    for names in (group for group in groups.values() if len(group) > 1):
        report.add("similar_class_names", f"{where}: class names {names} differ only in letter case; give the "
                                          "intended classes (data.classes) to make the others errors naming their file")


class VOCDetection(DetectionDataset):
    """Pascal VOC boxes as a dataset of ``(image, Target)`` with ``target["difficult"]``.

    ``split`` selects ``ImageSets/Main/<split>.txt`` (VOCdevkit layout); None takes every XML file.
    ``class_names`` fixes the classes and their order (default: discovered, sorted; see the module docstring).
    """

    def __init__(self, root: str | Path, split: str | None = None, class_names: Sequence[str] | None = None,
                 transforms: Transform | None = None, keep_difficult: bool = True, skip_empty: bool = False,
                 skip_bad: bool = False, seed: int = 0) -> None:
        root = Path(root)
        image_dir, annotation_dir = voc_layout(root)
        annotations = [parse_voc_xml(path) for path in _annotation_files(root, annotation_dir, split)]
        report = ValidationReport()
        if class_names is None:
            class_names = discover_classes(annotations)
            _report_similar_names(class_names, str(root), report)
        class_to_label = {name: label for label, name in enumerate(class_names, start=1)}
        records = [_voc_record(a, image_dir, class_to_label, keep_difficult, report) for a in annotations]
        if skip_empty:
            records = [record for record in records if len(record.labels)]
        super().__init__(records, class_names, transforms, False, seed, skip_bad, report)
        self.root = root
        self.report.warn(str(root))


class VOCSegmentation(SemanticSegmentationDataset):
    """VOC ``SegmentationClass`` palette PNGs (255 = ignore) with their ``JPEGImages``.

    ``split`` reads ``ImageSets/Segmentation/<split>.txt`` (falling back to ``ImageSets/Main``); None
    takes every PNG in ``SegmentationClass/``. ``class_names`` excludes the background (default: the 20 VOC
    classes); ``dataset.class_names[0]`` is ``"__background__"``.
    """

    def __init__(self, root: str | Path, split: str | None = None, class_names: Sequence[str] = VOC_CLASSES,
                 transforms: Transform | None = None, seed: int = 0) -> None:
        root = Path(root)
        mask_dir = root / "SegmentationClass"
        if not mask_dir.is_dir():
            raise ValueError(f"{root}: no SegmentationClass/ folder of class-index PNGs")
        if split is None:
            ids = sorted((path.stem for path in mask_dir.glob("*.png")), key=natural_key)
        else:
            task = "Segmentation" if (root / "ImageSets" / "Segmentation" / f"{split}.txt").is_file() else "Main"
            ids = read_split(root, split, task)
        pairs = [(image_id, _find_image(root / "JPEGImages", image_id, None), mask_dir / f"{image_id}.png")
                 for image_id in ids]
        super().__init__(pairs, [BACKGROUND, *class_names], transforms, seed)
