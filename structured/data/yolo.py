"""YOLO txt datasets: a plain folder with ``classes.txt``, or an ultralytics ``data.yaml`` with splits.

Two layouts are read:

- a folder ``root/images/*`` + ``root/labels/<stem>.txt`` + ``root/classes.txt`` (one name per line), the
  layout ``structured.data.convert`` writes;
- an ultralytics dataset file ``data.yaml`` (given itself, or as the folder holding it)::

      path: .                 # dataset root, relative to the yaml's folder (that folder when absent or not there)
      train: images/train     # image folder(s) of each split, relative to ``path``
      val: images/val
      names: [cat, dog]       # or {0: cat, 1: dog}; ``nc``, when given, must match

  Labels of ``.../images/<split>/x.jpg`` are in ``.../labels/<split>/x.txt`` (the last ``images`` folder
  of the path becomes ``labels``), so Roboflow's ``train/images`` + ``train/labels`` work too; an entry
  written ``../train/images`` that does not exist is also looked for as ``train/images`` (Roboflow writes
  such paths). A ``classes.txt`` beside ``data.yaml`` must agree with its ``names``.

Label lines are ``class cx cy w h`` (class from 0, coordinates normalised); labels become ``class + 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from structured.data.base import ImageRecord
from structured.data.loading import read_image_size
from structured.data.validate import ValidationReport, sanitize_boxes
from structured.data.voc import IMAGE_EXTENSIONS, natural_key

DATA_FILE_NAMES = ("data.yaml", "data.yml")
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class YoloAnnotations:
    """Images with boxes read from a YOLO dataset; ``class_names`` excludes the background."""

    records: list[ImageRecord]
    class_names: list[str]
    report: ValidationReport


@dataclass
class YoloDataFile:
    """An ultralytics ``data.yaml``: class names and the image folders of each split."""

    path: Path
    class_names: list[str]
    splits: dict[str, list[Path]]


def yolo_data_file(path: str | Path) -> Path | None:
    """``path`` when it is a ``.yaml`` file, the ``data.yaml`` inside the folder ``path``, else None."""
    path = Path(path)
    if path.suffix in YAML_SUFFIXES:
        return path
    return next((path / name for name in DATA_FILE_NAMES if (path / name).is_file()), None)


def read_data_file(path: str | Path) -> YoloDataFile:
    """Parse an ultralytics ``data.yaml`` (layout in the module docstring); ``ValueError`` names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"YOLO dataset file not found: {path}")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: invalid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(content, dict) or "names" not in content:
        raise ValueError(f"{path}: expected a YOLO dataset file with 'names' and 'train' / 'val' entries")
    class_names = _class_names(content["names"], content.get("nc"), path)
    root = _dataset_root(content.get("path"), path)
    splits = {split: _split_folders(content[split], root, split, path)
              for split in ("train", "val", "test") if content.get(split)}
    if "train" not in splits:
        raise ValueError(f"{path}: no 'train' entry; expected e.g. train: images/train")
    return YoloDataFile(path, class_names, splits)


def _class_names(names: Any, count: Any, path: Path) -> list[str]:
    if isinstance(names, dict) and sorted(names) == list(range(len(names))):
        names = [names[index] for index in range(len(names))]
    if not isinstance(names, list) or not names:
        raise ValueError(f"{path}: 'names' must be a list of class names or a mapping 0..N-1 -> name, got {names!r}")
    if count is not None and count != len(names):
        raise ValueError(f"{path}: nc is {count!r} but 'names' lists {len(names)} classes")
    return [str(name) for name in names]


def _dataset_root(entry: Any, data_file: Path) -> Path:
    """``path:`` relative to the yaml's folder; the yaml's folder when absent or not a folder there."""
    if entry is not None and not isinstance(entry, str):
        raise ValueError(f"{data_file}: 'path' must be a folder path, got {entry!r}")
    root = data_file.parent / entry if entry else data_file.parent
    return root if root.is_dir() else data_file.parent


def _split_folders(entry: Any, root: Path, split: str, data_file: Path) -> list[Path]:
    entries = entry if isinstance(entry, list) else [entry]
    if not all(isinstance(item, str) for item in entries):
        raise ValueError(f"{data_file}: {split!r} must be a folder path or a list of them, got {entry!r}")
    folders = []
    for item in entries:
        folder = root / item
        if not folder.is_dir() and item.startswith("../"):
            folder = root / item[3:]
        if not folder.is_dir():
            raise ValueError(f"{data_file}: {split} image folder {root / item} not found; expected a folder of "
                             "images (e.g. images/train, with its labels in labels/train)")
        folders.append(folder)
    return folders


def label_folder(image_folder: Path) -> Path:
    """Where the labels of ``image_folder`` are: its last ``images`` part replaced by ``labels``."""
    parts = image_folder.parts
    if "images" not in parts:
        return image_folder
    last = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:last], "labels", *parts[last + 1:])


def read_yolo(root: str | Path, class_names: Sequence[str] | None = None,
              split: str | None = None) -> YoloAnnotations:
    """Read a YOLO dataset: the folder ``root`` (``images/``, ``labels/``, ``classes.txt``) or the ``split``
    (default ``train``) of the ``data.yaml`` that ``root`` is or holds. ``class_names`` overrides the names."""
    root = Path(root)
    data_file = yolo_data_file(root)
    if data_file is not None:
        data = read_data_file(data_file)
        _check_classes_file(data.path.parent / "classes.txt", data)
        split = split or "train"
        if split not in data.splits:
            raise ValueError(f"{data_file}: no {split!r} split; it lists {sorted(data.splits)}")
        folders, names = data.splits[split], list(class_names or data.class_names)
    else:
        folders, names = [root / "images" if split is None else root / "images" / split], _classes_txt(root, class_names)
    report = ValidationReport()
    records = [_yolo_record(image, label_folder(image.parent) / f"{image.stem}.txt", len(names), report)
               for folder in folders for image in _images_in(folder)]
    report.warn(str(data_file or root))
    return YoloAnnotations(records, names, report)


def yolo_splits(path: str | Path) -> list[str]:
    """The split names (``train``, ``val``, ``test``) of the ``data.yaml`` at or in ``path``; [] without one."""
    data_file = yolo_data_file(path)
    return list(read_data_file(data_file).splits) if data_file is not None else []


def _classes_txt(root: Path, class_names: Sequence[str] | None) -> list[str]:
    if class_names is not None:
        return list(class_names)
    classes_file = root / "classes.txt"
    if not classes_file.is_file():
        raise ValueError(f"{classes_file} not found; expected one class name per line there, or a data.yaml with "
                         "'names' in that folder")
    return [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]


def _check_classes_file(classes_file: Path, data: YoloDataFile) -> None:
    if not classes_file.is_file():
        return
    listed = _classes_txt(classes_file.parent, None)
    if listed != data.class_names:
        raise ValueError(f"{classes_file} lists {listed} but {data.path} names {data.class_names}; "
                         "make them agree or remove classes.txt")


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ValueError(f"YOLO image folder not found: {folder}")
    return sorted((p for p in folder.iterdir() if p.suffix in IMAGE_EXTENSIONS), key=lambda p: natural_key(p.name))


def _yolo_rows(label_file: Path, num_classes: int) -> np.ndarray:
    if not label_file.is_file():
        return np.zeros((0, 5))
    rows = []
    for number, line in enumerate(label_file.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields[:5]]
        except ValueError:
            raise ValueError(f"{label_file} line {number}: expected 'class cx cy w h' numbers, got {line!r}") from None
        if len(fields) < 5 or not values[0].is_integer() or not 0 <= values[0] < num_classes:
            raise ValueError(f"{label_file} line {number}: expected 'class cx cy w h' with class in "
                             f"0..{num_classes - 1}, got {line!r}")
        rows.append(values)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


def _yolo_record(image: Path, label_file: Path, num_classes: int, report: ValidationReport) -> ImageRecord:
    height, width = read_image_size(image)
    rows = _yolo_rows(label_file, num_classes)
    centre, size = rows[:, 1:3] * [width, height], rows[:, 3:5] * [width, height]
    boxes, keep = sanitize_boxes(np.concatenate((centre - size / 2, centre + size / 2), axis=1), (height, width),
                                 str(label_file), report)
    return ImageRecord(image_id=image.stem, path=image, boxes=boxes[keep], labels=rows[keep, 0].astype(np.int64) + 1,
                       height=height, width=width)
