"""Semantic-segmentation data in every layout the package reads, found and opened like detection data.

``open_semantic_dataset(path)`` (``fmt="auto"``: ``detect_semantic_format``) opens:

- ``voc``: a VOC folder with ``SegmentationClass/`` palette PNGs (``VOCSegmentation``; the synthetic
  shapes data too); splits from ``ImageSets/Segmentation`` or ``ImageSets/Main``;
- ``masks``: ``images/`` + ``masks/``, a class-index PNG per image, paired by file stem
  (``SemanticFolderDataset``; masks holding only 0 and 255 are refused: 255 is ignore, not foreground);
- ``folders``: the DSB2018 mask-folder layout (``<id>/images/`` + ``<id>/masks/``) as foreground /
  background: the union of an image's instance masks is class 1;
- ``coco``: a COCO instances file, each image's instances painted into one class map.

Class names: ``labelmap.txt`` in the dataset folder names the class of each index, one per line in index
order, the background first (a name alone, or CVAT's ``name:r,g,b::`` form; ``#`` lines are comments);
as in every dataset, ``class_names[0]`` is ``"__background__"`` whatever the first line says.
VOC folders without one have the 20 VOC classes; ``masks`` folders need one; COCO and mask folders name
their classes themselves. Instance datasets become class maps by :class:`InstanceSemanticDataset`:
instances painted in annotation order (a later one covers an earlier one), crowd regions 255 (ignore).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from structured.data.base import DetectionDataset, SemanticDataset, Transform
from structured.data.coco import CocoDetection
from structured.data.folders import MaskFolderDataset, SemanticFolderDataset
from structured.data.summary import coco_image_root
from structured.data.voc import VOC_CLASSES, VOCSegmentation
from structured.types import IGNORE_INDEX

SEMANTIC_FORMATS = ("auto", "coco", "voc", "masks", "folders")
LABELMAP_NAME = "labelmap.txt"


def read_labelmap(path: str | Path) -> list[str]:
    """The class names of ``labelmap.txt`` for indices ``0..C`` (background first); ``ValueError`` naming the
    file when it lists fewer than two classes or a name twice."""
    path = Path(path)
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [line.split(":")[0].strip() for line in lines if line and not line.startswith("#")]
    if len(names) < 2 or "" in names:
        raise ValueError(f"{path}: expected one class name per line, the background first, and at least one "
                         f"class besides it; got {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: class names appear twice: {sorted({n for n in names if names.count(n) > 1})}")
    return names


def detect_semantic_format(path: Path) -> str:
    """The semantic layout of ``path``: ``coco``, ``voc``, ``masks`` or ``folders``; ``ValueError`` when none fits."""
    if path.suffix == ".json":
        return "coco"
    if (path / "SegmentationClass").is_dir():
        return "voc"
    if (path / "images").is_dir() and (path / "masks").is_dir():
        return "masks"
    if path.is_dir() and any((child / "images").is_dir() and (child / "masks").is_dir() for child in path.iterdir()):
        return "folders"
    raise ValueError(f"{path}: cannot tell the semantic dataset format; expected a COCO instances .json file, a VOC "
                     "folder with SegmentationClass/, images/ + masks/ (class-index PNGs), or <id>/images/ + "
                     "<id>/masks/ (instance mask folders, read as foreground/background)")


class InstanceSemanticDataset(SemanticDataset):
    """An instance dataset (COCO, mask folders) seen as class maps: each instance's mask painted with its label.

    Instances are painted in annotation order over the background (0), crowd regions last with 255 (ignore).
    ``instances`` is opened with masks; its own transforms are not used (this dataset has its own).
    """

    def __init__(self, instances: DetectionDataset, transforms: Transform | None = None, seed: int = 0) -> None:
        super().__init__(instances.class_names, transforms, seed)
        self.category_ids = list(instances.category_ids)
        instances.with_masks = True
        instances.transforms = None
        self.instances = instances

    @property
    def sample_ids(self) -> list[int | str]:
        """The image id of each sample, in order."""
        return self.instances.sample_ids

    def image_path(self, index: int) -> Path:
        """The image file of sample ``index``."""
        return self.instances.image_path(index)

    def select(self, indices: Sequence[int]) -> None:
        """Keep only the samples ``indices``, in that order."""
        self.instances.select(indices)

    def load_sample(self, index: int) -> tuple[np.ndarray, dict]:
        """The image and its instances painted into one uint8 ``[H, W]`` class map."""
        image, target = self.instances.load_sample(index)
        semantic = np.zeros(image.shape[:2], dtype=np.uint8)
        crowd = target["iscrowd"].astype(bool)
        for mask, label in zip(target["masks"][~crowd], target["labels"][~crowd], strict=True):
            semantic[mask.astype(bool)] = label
        for mask in target["masks"][crowd]:
            semantic[mask.astype(bool)] = IGNORE_INDEX
        return image, {"semantic": semantic, "image_id": target["image_id"]}


def _labelmap_classes(folder: Path) -> list[str] | None:
    """The class names (background excluded) of ``folder/labelmap.txt``, or None when there is none."""
    path = folder / LABELMAP_NAME
    return read_labelmap(path)[1:] if path.is_file() else None


def open_semantic_dataset(path: str | Path, fmt: str = "auto", image_root: str | Path | None = None,
                          split: str | None = None) -> SemanticDataset:
    """Open ``path`` as a semantic dataset (module docstring), guessing the layout when ``fmt="auto"``.

    ``split`` is a VOC ``ImageSets`` split (``train``, ``val``); ``image_root`` the COCO image folder.
    """
    path = Path(path)
    if fmt not in SEMANTIC_FORMATS:
        raise ValueError(f"semantic data format must be one of {SEMANTIC_FORMATS}, got {fmt!r}")
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    fmt = detect_semantic_format(path) if fmt == "auto" else fmt
    if fmt == "voc":
        return VOCSegmentation(path, split=split, class_names=_labelmap_classes(path) or VOC_CLASSES)
    if fmt == "masks":
        class_names = _labelmap_classes(path)
        if class_names is None:
            raise ValueError(f"{path}: no {LABELMAP_NAME}; write the class name of each mask index on its own line, "
                             "the background (index 0) first")
        return SemanticFolderDataset(path / "images", path / "masks", class_names)
    if fmt == "coco":
        root = image_root if image_root is not None else coco_image_root(path)
        return InstanceSemanticDataset(CocoDetection(path, root, with_masks=True))
    return InstanceSemanticDataset(MaskFolderDataset(path, with_masks=True))
