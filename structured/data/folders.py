"""Datasets stored as folders of masks.

``MaskFolderDataset`` reads the DSB2018 / BBBC038 layout, one folder per image::

    root/<id>/images/<id>.png        the image (any format OpenCV reads; RGBA becomes RGB)
    root/<id>/masks/*.png            one binary mask per instance (0 and one foreground value, such as 255)

Boxes are the tight boxes of the masks (a mask with several connected parts gets one box around all of
them); all instances get label 1 (``class_name``). A mask file with several foreground values (an
instance-label image, or soft edges) is a ``ValueError`` naming it: it is not split into instances, since
nothing tells labels from grey levels. Empty mask files are dropped and counted (once per file) in
``dataset.report``; so is, when the dataset is opened, a sample folder without ``masks/`` (read as an
image without objects). Masks are read when the sample is loaded; ``with_masks=False`` drops them from the
target after the boxes are derived.

``SemanticFolderDataset`` pairs ``image_dir/<stem>.*`` with ``mask_dir/<stem>.png`` class-index PNGs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from structured.data.base import (
    BACKGROUND,
    DetectionDataset,
    ImageRecord,
    SemanticSegmentationDataset,
    Transform,
)
from structured.data.geometry import masks_to_boxes
from structured.data.loading import ImageReadError, read_image, read_index_png
from structured.data.validate import ValidationReport
from structured.data.voc import IMAGE_EXTENSIONS, natural_key
from structured.types import IGNORE_INDEX


def read_binary_mask(path: Path) -> np.ndarray:
    """uint8 ``[H, W]`` 0/1 mask from an image file (non-zero = 1); ``ImageReadError`` naming the file when it
    cannot be read, ``ValueError`` when it holds more than one foreground value."""
    mask = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_GRAYSCALE) if path.is_file() else None
    if mask is None:
        raise ImageReadError(f"cannot read mask file: {path}")
    foreground = mask[mask != 0]
    if foreground.size and foreground.min() != foreground.max():
        values = np.unique(foreground).tolist()
        raise ValueError(f"{path}: the mask holds {len(values)} different foreground values {values[:10]}; expected "
                         "one binary mask per instance (0 and one other value), so save each instance as its own PNG")
    return cv2.threshold(mask, 0, 1, cv2.THRESH_BINARY)[1]


def _sample_record(sample_dir: Path, report: ValidationReport) -> ImageRecord:
    images = sorted(path for path in (sample_dir / "images").glob("*") if path.suffix in IMAGE_EXTENSIONS)
    if len(images) != 1:
        raise ValueError(f"{sample_dir / 'images'}: expected exactly one image file, found {[p.name for p in images]}")
    if not (sample_dir / "masks").is_dir():
        report.add("no_masks_folder", f"{sample_dir}: no masks/ folder; read as an image without objects")
    mask_paths = sorted((sample_dir / "masks").glob("*.png"))
    return ImageRecord(image_id=sample_dir.name, path=images[0], boxes=np.zeros((0, 4)), labels=[],
                       extra={"mask_paths": mask_paths})


class MaskFolderDataset(DetectionDataset):
    """One image + one binary PNG per instance, per folder (DSB2018 layout); boxes derived from masks.

    ``records[i].boxes`` stay empty until loading: ``len(records[i].extra["mask_paths"])`` is the number of
    instance files of image ``i``.
    """

    def __init__(self, root: str | Path, class_name: str = "object", transforms: Transform | None = None,
                 with_masks: bool = True, skip_bad: bool = False, seed: int = 0) -> None:
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"mask folder root not found: {root}")
        sample_dirs = sorted((path for path in root.iterdir() if (path / "images").is_dir()),
                             key=lambda path: natural_key(path.name))
        if not sample_dirs:
            raise ValueError(f"{root}: no <id>/images/ folders; expected the layout <id>/images/<id>.png + <id>/masks/*.png")
        report = ValidationReport()
        records = [_sample_record(sample_dir, report) for sample_dir in sample_dirs]
        super().__init__(records, [class_name], transforms, with_masks, seed, skip_bad, report)
        self.root = root
        self._empty_masks: set[Path] = set()
        self.report.warn(str(root))

    def num_objects(self) -> int:
        """The number of instance mask files over all samples (empty ones included: they are found on loading)."""
        return sum(len(record.extra["mask_paths"]) for record in self.records)

    def load_masks(self, record: ImageRecord, height: int, width: int) -> np.ndarray:
        """uint8 ``[N, H, W]`` masks of ``record``; a mask whose size differs from the image is an error."""
        masks = [read_binary_mask(path) for path in record.extra["mask_paths"]]
        for path, mask in zip(record.extra["mask_paths"], masks, strict=True):
            if mask.shape != (height, width):
                raise ValueError(f"{path}: mask is {mask.shape} (HxW) but the image {record.path} is {(height, width)}")
        return np.stack(masks) if masks else np.zeros((0, height, width), dtype=np.uint8)

    def _drop_empty(self, record: ImageRecord, boxes: np.ndarray) -> np.ndarray:
        non_empty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        for path, ok in zip(record.extra["mask_paths"], non_empty, strict=True):
            if not ok and path not in self._empty_masks:
                self._empty_masks.add(path)
                self.report.add("empty_mask", f"{path}: mask has no foreground pixel; dropped")
        return non_empty

    def load_sample(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        """The numpy ``(image, target)`` of sample ``index``, boxes derived from the masks."""
        record = self.records[index]
        image = read_image(record.path)
        height, width = image.shape[:2]
        masks = self.load_masks(record, height, width)
        boxes = masks_to_boxes(masks)
        keep = self._drop_empty(record, boxes)
        target: dict[str, Any] = {"boxes": boxes[keep], "labels": np.ones(int(keep.sum()), dtype=np.int64),
                                  "iscrowd": np.zeros(int(keep.sum()), dtype=np.int64), "image_id": record.image_id}
        if self.with_masks:
            target["masks"] = masks[keep]
        return image, target


def _find_mask_pairs(image_dir: Path, mask_dir: Path) -> list[tuple[str, Path, Path]]:
    images = sorted((p for p in image_dir.iterdir() if p.suffix in IMAGE_EXTENSIONS), key=lambda p: natural_key(p.name))
    missing = [image.name for image in images if not (mask_dir / f"{image.stem}.png").is_file()]
    if missing:
        raise ValueError(f"{mask_dir}: no mask <stem>.png for {len(missing)} image(s), e.g. {missing[:5]}")
    return [(image.stem, image, mask_dir / f"{image.stem}.png") for image in images]


class SemanticFolderDataset(SemanticSegmentationDataset):
    """Images in ``image_dir`` paired by file stem with class-index PNGs in ``mask_dir`` (255 = ignore).

    ``class_names`` excludes the background; ``dataset.class_names[0]`` is ``"__background__"``. Masks that
    hold only 0 and 255 (binary masks saved as 0 / 255) are refused when the dataset is opened: 255 is
    ignore, so no pixel would be foreground.
    """

    def __init__(self, image_dir: str | Path, mask_dir: str | Path, class_names: Sequence[str],
                 transforms: Transform | None = None, seed: int = 0) -> None:
        image_dir, mask_dir = Path(image_dir), Path(mask_dir)
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise ValueError(f"folder not found: {folder}")
        pairs = _find_mask_pairs(image_dir, mask_dir)
        if not pairs:
            raise ValueError(f"{image_dir}: no images with extensions {IMAGE_EXTENSIONS}")
        super().__init__(pairs, [BACKGROUND, *class_names], transforms, seed)
        _refuse_ignore_as_foreground(mask_dir, [mask for _, _, mask in pairs], self.class_names)


def _refuse_ignore_as_foreground(mask_dir: Path, mask_paths: Sequence[Path], class_names: Sequence[str]) -> None:
    """``ValueError`` naming ``mask_dir`` when no mask holds a class besides the background and some hold
    255 (ignore): binary masks saved as 0 / 255. Reads masks until one holds a class (the first, in a good set)."""
    holds_ignore = False
    for path in mask_paths:
        class_map = read_index_png(path)
        if ((class_map > 0) & (class_map != IGNORE_INDEX)).any():
            return
        holds_ignore = holds_ignore or bool((class_map == IGNORE_INDEX).any())
    if holds_ignore:
        raise ValueError(f"{mask_dir}: the masks hold only 0 and 255, and 255 means ignore here, so no pixel is of "
                         f"class {class_names[1]!r}; save the foreground as its class index from labelmap.txt "
                         "(1 for the first class) and keep 255 for pixels the loss should ignore")
