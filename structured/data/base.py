"""The dataset bases: ``DetectionDataset`` (COCO, VOC, YOLO, mask-folder loaders) and ``SemanticDataset``.

A loader parses its annotation format once into ``ImageRecord`` s (boxes already clipped and validated,
labels already contiguous ``1..C``). ``DetectionDataset.__getitem__`` then decodes the image, builds the
numpy target, applies the augmentation with a generator seeded by ``(seed, epoch, index)`` (the same
sample whatever the worker count) and returns ``(Tensor[3, H, W] float in [0, 1], Target)``.

Augmentations see numpy data: image uint8 ``[H, W, 3]`` RGB and a target with ``boxes`` float32
``[N, 4]``, ``labels`` int64 ``[N]`` and optionally ``masks`` uint8 ``[N, H, W]``, ``polygons``, ``iscrowd``,
``difficult`` (see ``structured.data.transforms``).

Semantic datasets (``SemanticDataset``: class-index PNG pairs, or instance datasets painted into class
maps) return ``(Tensor[3, H, W], SemanticTarget)`` the same way. Both kinds share what the training and
evaluation code needs of any dataset: ``class_names``, ``category_ids``, ``sample_ids``, ``image_path(i)``,
``select(indices)`` (keep a subset, in that order) and ``collate`` (the batching function of the kind).

Both can keep their decoded samples in memory (``cache_samples()``, the recipe's ``data.cache``, like
ultralytics' ``cache=ram``): each image and its target are read once, and every later pass augments a copy.
"""

from __future__ import annotations

import copy
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from structured.data.loading import (
    ImageReadError,
    collate_detection,
    collate_semantic,
    exif_transposes,
    image_to_tensor,
    read_image,
    read_index_png,
)
from structured.data.validate import ValidationReport
from structured.types import PER_INSTANCE_DTYPES, select_instances

BACKGROUND = "__background__"

CACHE_MEMORY_FRACTION = 0.5
"""``cache_samples`` refuses a cache estimated above this fraction of the memory available."""


def coco_image_id(record_id: int | str, index: int) -> int:
    """The COCO image id of record ``index``: its own id when it is an integer, else ``index + 1``.

    COCO data keeps its ids; VOC, YOLO and mask folders name images by file stem, which a COCO conversion
    (``structured.data.convert.write_coco``) and the evaluation number by position instead.
    """
    return record_id if isinstance(record_id, int) else index + 1


def numbered_class_names(num_classes: int) -> list[str]:
    """``[BACKGROUND, "class1", ..., "classC"]`` for a model whose classes have no names."""
    return [BACKGROUND, *(f"class{label}" for label in range(1, num_classes + 1))]


Transform = Callable[[np.ndarray, dict, np.random.Generator], tuple[np.ndarray, dict]]


@dataclass
class ImageRecord:
    """One image and its parsed annotations (``N`` objects).

    ``boxes`` float32 ``[N, 4]`` xyxy pixels, ``labels`` int64 ``[N]`` in ``1..C``, ``iscrowd`` int64 ``[N]``,
    ``difficult`` bool ``[N]`` or None; ``height`` / ``width`` as declared by the annotation (None when it
    does not say); ``extra`` holds format-specific data (COCO segmentations, mask file paths).
    """

    image_id: int | str
    path: Path
    boxes: np.ndarray
    labels: np.ndarray
    height: int | None = None
    width: int | None = None
    iscrowd: np.ndarray | None = None
    difficult: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.iscrowd is None:
            self.iscrowd = np.zeros(len(self.labels), dtype=np.int64)


def declared_size_mismatch(record: ImageRecord, height: int, width: int) -> str | None:
    """The sentence saying that ``record``'s image decodes at ``height`` x ``width``, not at the size its
    annotation declares (naming an EXIF rotation when that is the cause); None when the sizes agree or the
    annotation declares none."""
    if record.height is None or record.width is None or (record.height, record.width) == (height, width):
        return None
    message = (f"{record.path}: the image decodes as {width}x{height} (WxH) but its annotation declares "
               f"{record.width}x{record.height}")
    if (height, width) == (record.width, record.height) and exif_transposes(record.path):
        return (f"{message}, the size of its stored pixels: the file's EXIF orientation rotates it. If the labels "
                "were drawn on the stored (unrotated) pixels, remove the EXIF orientation tag from the file; if on "
                f"the upright picture, declare its size {width}x{height} in the annotation")
    return f"{message}; expected the image the labels were made on (restore it, or re-export the labels)"


def target_to_tensors(target: dict) -> dict:
    """Numpy target -> Target dict of tensors (``polygons`` dropped: they only serve augmentation)."""
    converted = {}
    for key, value in target.items():
        if key in PER_INSTANCE_DTYPES:
            converted[key] = torch.as_tensor(np.ascontiguousarray(value), dtype=PER_INSTANCE_DTYPES[key])
        elif key == "semantic":
            converted[key] = torch.as_tensor(np.ascontiguousarray(value), dtype=torch.int64)
        elif key != "polygons":
            converted[key] = value
    return converted


class SampleCache:
    """Decoded samples kept in memory: ``cache_samples()`` reads each once, ``raw_sample(i)`` returns a copy.

    A base of the dataset classes, which provide ``load_sample(i)``, ``image_path(i)`` and ``len()``.

    The cache is keyed by image file, so ``select`` (a subset, another order) keeps it valid. Loader
    workers started after the cache is filled share it (forked copy-on-write memory); the augmentation
    works on a copy, never on the cached arrays.
    """

    sample_cache: dict[Path, tuple[np.ndarray, dict]] | None = None

    def raw_sample(self, index: int) -> tuple[np.ndarray, dict]:
        """``load_sample(index)``, from the cache when it holds the sample (a copy the caller may change)."""
        cached = None if self.sample_cache is None else self.sample_cache.get(self.image_path(index))
        if cached is None:
            return self.load_sample(index)
        image, target = cached
        return image.copy(), copy.deepcopy(target)

    def cache_samples(self, threads: int = 2) -> int:
        """Read every sample into memory (``threads`` at a time); return the bytes held.

        ``ValueError`` naming the dataset's first image when the cache, estimated from the first sample,
        would take more than ``CACHE_MEMORY_FRACTION`` of the memory available (where the system reports it).
        """
        count = len(self)
        if count == 0:
            self.sample_cache = {}
            return 0
        first = self.load_sample(0)
        estimate = _sample_bytes(first) * count
        available = _available_memory()
        if available is not None and estimate > CACHE_MEMORY_FRACTION * available:
            raise ValueError(f"data.cache: the {count} decoded samples of the dataset of {self.image_path(0)} "
                              f"would take about {estimate / 2**20:.1f} MiB of the {available / 2**20:.1f} MiB of memory "
                              "free; expected at most half (set data.cache: false)")
        with ThreadPoolExecutor(max(1, threads)) as pool:
            rest = list(pool.map(self.load_sample, range(1, count)))
        samples = [first, *rest]
        self.sample_cache = {self.image_path(index): sample for index, sample in enumerate(samples)}
        return sum(_sample_bytes(sample) for sample in samples)


def _available_memory() -> int | None:
    """Bytes of memory free now (None where ``os.sysconf`` cannot tell)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _sample_bytes(sample: tuple[np.ndarray, dict]) -> int:
    image, target = sample
    return image.nbytes + sum(value.nbytes for value in target.values() if isinstance(value, np.ndarray))


class DetectionDataset(SampleCache, Dataset):
    """Images with boxes (and optionally instance masks); subclasses provide records and masks.

    Attributes: ``class_names`` (``class_names[0] == "__background__"``, labels index the rest),
    ``category_ids`` (the dataset's own id of label ``i`` at ``i - 1``: COCO's category ids, ``1..C`` for
    formats without ids), ``records`` (list of ``ImageRecord``), ``report`` (problems found while parsing),
    ``transforms``.
    """

    collate = staticmethod(collate_detection)

    def __init__(self, records: Sequence[ImageRecord], class_names: Sequence[str], transforms: Transform | None = None,
                 with_masks: bool = False, seed: int = 0, skip_bad: bool = False,
                 report: ValidationReport | None = None) -> None:
        self.class_names = [BACKGROUND, *class_names]
        self.category_ids = list(range(1, len(self.class_names)))
        self.transforms = transforms
        self.with_masks = with_masks
        self.seed = seed
        self.epoch = 0
        self.report = report if report is not None else ValidationReport()
        self.records = list(records)
        if skip_bad:
            self.drop_unreadable()

    def drop_unreadable(self) -> None:
        """Remove the records whose image cannot be read (``bad_image``) or is not the size its annotation
        declares (``size_mismatch``), adding each problem to ``report``."""
        self.records = [record for record in self.records if self._image_is_usable(record)]

    def _image_is_usable(self, record: ImageRecord) -> bool:
        try:
            image = read_image(record.path)
        except ImageReadError as error:
            self.report.add("bad_image", str(error))
            return False
        mismatch = declared_size_mismatch(record, image.shape[0], image.shape[1])
        if mismatch is not None:
            self.report.add("size_mismatch", mismatch)
        return mismatch is None

    @property
    def num_classes(self) -> int:
        """Number of object classes ``C`` (labels are ``1..C``)."""
        return len(self.class_names) - 1

    @property
    def sample_ids(self) -> list[int | str]:
        """The image id of each sample, in order."""
        return [record.image_id for record in self.records]

    def image_path(self, index: int) -> Path:
        """The image file of sample ``index``."""
        return self.records[index].path

    def select(self, indices: Sequence[int]) -> None:
        """Keep only the samples ``indices``, in that order."""
        self.records = [self.records[index] for index in indices]

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw: sample ``i`` of epoch ``e`` is seeded by ``(seed, e, i)``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def num_objects(self) -> int:
        """The number of annotated objects over all samples (as parsed, before loading)."""
        return sum(len(record.labels) for record in self.records)

    def to_category_ids(self, labels: Sequence[int] | np.ndarray) -> np.ndarray:
        """The dataset's own category ids (``category_ids``) of contiguous ``labels`` (``1..C``)."""
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size and (labels.min() < 1 or labels.max() > len(self.category_ids)):
            raise ValueError(f"labels must be in 1..{len(self.category_ids)}, got {sorted(set(labels.tolist()))}")
        return np.asarray(self.category_ids, dtype=np.int64)[labels - 1]

    def coco_image_id(self, index: int) -> int:
        """The COCO image id of sample ``index`` (see :func:`coco_image_id`)."""
        return coco_image_id(self.records[index].image_id, index)

    def load_masks(self, record: ImageRecord, height: int, width: int) -> np.ndarray:
        """uint8 ``[N, H, W]`` instance masks of ``record``; formats with masks (COCO, mask folders) override this."""
        raise ValueError(f"{type(self).__name__} has no instance masks ({record.path}); with_masks needs COCO "
                         "segmentations or a mask folder")

    def load_polygons(self, record: ImageRecord) -> list[list[np.ndarray]] | None:
        """Per-instance polygon rings of ``record`` when the format has them, else None."""
        return None

    def load_sample(self, index: int) -> tuple[np.ndarray, dict]:
        """The un-augmented numpy ``(image, target)`` of sample ``index``; ``ValueError`` naming the image when
        it decodes at another size than its annotation declares (:func:`declared_size_mismatch`)."""
        record = self.records[index]
        image = read_image(record.path)
        height, width = image.shape[:2]
        mismatch = declared_size_mismatch(record, height, width)
        if mismatch is not None:
            raise ValueError(mismatch)
        target: dict[str, Any] = {"boxes": np.clip(record.boxes, 0, [width, height, width, height]),
                                  "labels": record.labels.copy(), "iscrowd": record.iscrowd.copy(),
                                  "image_id": record.image_id}
        if record.difficult is not None:
            target["difficult"] = record.difficult.copy()
        polygons = self.load_polygons(record)
        if polygons is not None:
            target["polygons"] = polygons
        if self.with_masks:
            target["masks"] = self.load_masks(record, height, width)
        boxes = target["boxes"]
        return image, select_instances(target, (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image, target = self.raw_sample(index)
        if self.transforms is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            image, target = self.transforms(image, target, rng)
        return image_to_tensor(image), target_to_tensors(target)


class SemanticDataset(SampleCache, Dataset, ABC):
    """Images with a class per pixel, as ``(Tensor[3, H, W], SemanticTarget)``; subclasses load the samples
    (the four abstract methods).

    ``class_names`` lists the classes ``0..C``, the background at index 0; ``category_ids`` are ``1..C``
    (the class indices themselves); ``transforms`` see ``(image, {"semantic", "image_id"})``.
    """

    collate = staticmethod(collate_semantic)

    def __init__(self, class_names: Sequence[str], transforms: Transform | None = None, seed: int = 0) -> None:
        self.class_names = list(class_names)
        self.category_ids = list(range(1, len(self.class_names)))
        self.transforms = transforms
        self.seed = seed
        self.epoch = 0

    @property
    def num_classes(self) -> int:
        """Number of classes ``C`` besides the background (indices are ``0..C``)."""
        return len(self.class_names) - 1

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw: sample ``i`` of epoch ``e`` is seeded by ``(seed, e, i)``."""
        self.epoch = epoch

    @property
    @abstractmethod
    def sample_ids(self) -> list[int | str]:
        """The image id of each sample, in order."""

    @abstractmethod
    def image_path(self, index: int) -> Path:
        """The image file of sample ``index``."""

    @abstractmethod
    def select(self, indices: Sequence[int]) -> None:
        """Keep only the samples ``indices``, in that order."""

    @abstractmethod
    def load_sample(self, index: int) -> tuple[np.ndarray, dict]:
        """The un-augmented numpy ``(image, {"semantic": uint8 [H, W], "image_id"})`` of sample ``index``."""

    def __len__(self) -> int:
        return len(self.sample_ids)

    def check_class_map(self, semantic: np.ndarray, image: np.ndarray, mask_path: Path, image_path: Path) -> None:
        """``ValueError`` naming ``mask_path`` when the map's size differs from the image's or it holds a class
        index outside ``0..C`` other than 255 (ignore)."""
        if semantic.shape != image.shape[:2]:
            raise ValueError(f"{mask_path}: mask is {semantic.shape[0]}x{semantic.shape[1]} (HxW) but the image "
                             f"{image_path} is {image.shape[0]}x{image.shape[1]}")
        bad = (semantic >= len(self.class_names)) & (semantic != 255)
        if bad.any():
            raise ValueError(f"{mask_path}: class indices {sorted(set(semantic[bad].tolist()))} outside "
                             f"0..{len(self.class_names) - 1} ({', '.join(self.class_names)}) and not 255 = ignore")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image, target = self.raw_sample(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target, np.random.default_rng((self.seed, self.epoch, index)))
        return image_to_tensor(image), target_to_tensors(target)


class SemanticSegmentationDataset(SemanticDataset):
    """Pairs of (image file, class-index PNG) as ``(Tensor[3, H, W], SemanticTarget)``.

    ``class_names`` lists the classes ``0..C`` including the background at index 0. A mask whose size
    differs from its image, values above ``C`` other than 255 (ignore), or a missing mask file raise
    ``ValueError`` naming the mask file.
    """

    def __init__(self, pairs: Sequence[tuple[str, Path, Path]], class_names: Sequence[str],
                 transforms: Transform | None = None, seed: int = 0) -> None:
        super().__init__(class_names, transforms, seed)
        self.pairs = list(pairs)

    @property
    def sample_ids(self) -> list[int | str]:
        """The image id (file stem) of each sample, in order."""
        return [image_id for image_id, _, _ in self.pairs]

    def image_path(self, index: int) -> Path:
        """The image file of sample ``index``."""
        return self.pairs[index][1]

    def select(self, indices: Sequence[int]) -> None:
        """Keep only the samples ``indices``, in that order."""
        self.pairs = [self.pairs[index] for index in indices]

    def load_sample(self, index: int) -> tuple[np.ndarray, dict]:
        """The un-augmented numpy ``(image, {"semantic", "image_id"})`` of sample ``index``."""
        image_id, image_path, mask_path = self.pairs[index]
        image = read_image(image_path)
        semantic = read_index_png(mask_path)
        self.check_class_map(semantic, image, mask_path, image_path)
        return image, {"semantic": semantic, "image_id": image_id}
