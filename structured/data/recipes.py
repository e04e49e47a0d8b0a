"""The ``data:`` section of a training recipe: which files, which format, which augmentation, which batches.

Keys (the fields of :class:`DataConfig`; an unknown key is a ``ConfigError`` naming it)::

    data:
      format: auto            # auto | coco | voc | yolo | folders, and masks for semantic data (see
                              # structured.data.summary.detect_format, structured.data.semantic)
      train: path             # COCO .json, VOC folder (VOCdevkit or flat), YOLO folder or data.yaml, mask folder
      val: null               # same forms; null: see val_split / val_fraction
      image_root: null        # COCO image folder (default: found next to the .json)
      classes: null           # detection class names, in label order: VOC (default: the sorted names found
                              # in the XML files, surrounding whitespace stripped) or mask folders (one name;
                              # default: object); an object of another class is an error naming its file.
                              # Give it when a split lacks a class. COCO / YOLO name their own classes: a
                              # list given must equal theirs
      train_split: null       # VOC ImageSets/Main (or Segmentation) <split>.txt, or a data.yaml split
      val_split: null
      val_fraction: 0.0       # without a val set, hold out this fraction of train (at least one image)
      hold_out: random        # which images val_fraction holds out: random (seeded by train.seed) or
                              # last (the last ones by sorted image id: a fixed split, whatever the seed)
      augment: standard       # standard (detection: photometric, zoom-out, IoU crop, flip, resize;
                              # semantic: photometric, flip, resize, scale jitter, crop) | ssd | flip | none
                              # ssd: the SSD paper's preset (photometric distortion, zoom-out up to 4x
                              # with the mean pixel, IoU crop, flip; resized only when image_size is set:
                              # SSD models resize to their fixed size themselves)
      image_size: 512         # training resize: shorter side (null: keep); validation images keep their size
      max_size: 853           # longer side cap of the training resize
      crop_size: null         # a random square crop of this side after the augmentation (null: none); with
                              # image_size null it trains at the images' own scale (smaller sides kept whole)
      batch_size: 2           # images per process per step
      workers: 0              # DataLoader worker processes
      with_masks: null        # load instance masks (COCO, mask folders); null: when the model is an
                              # instance model (its recipe's task, e.g. Mask R-CNN)
      skip_bad: false         # decode every image once and leave out unreadable ones
      cache: false            # keep the decoded training and validation samples in memory (read once,
                              # 2 threads; refused above half the free memory), like ultralytics' cache=ram

The kind of dataset follows the task of the recipe's model (``config.model_task``): a semantic model
(UNet) reads class maps (``structured.data.semantic``: VOC ``SegmentationClass``, ``images/`` + ``masks/``,
mask folders as foreground / background, COCO instances painted into class maps), every other model
boxes (and instance masks). Functions that open data take that ``task``.

Rules for paths: a folder whose dataset sits one level down (``dsb2018_nuclei/stage1_train``) is found
when it is the only one there; a VOCdevkit folder with ``ImageSets/Main/train.txt`` and ``val.txt``, or
a YOLO ``data.yaml`` (the file or its folder) with ``train`` and ``val`` entries, with no splits or
``val`` given trains on ``train`` and validates on ``val``.

``num_classes``: when the recipe's ``model`` section leaves it out, :func:`fill_num_classes` sets it to
the training set's class count; when it is given it must equal that count.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from structured.config import Config, ConfigError, model_task, validate_keys
from structured.data.base import DetectionDataset, SemanticDataset
from structured.data.coco import CocoDetection
from structured.data.loading import EpochDataLoader, build_dataloader
from structured.data.semantic import detect_semantic_format, open_semantic_dataset
from structured.data.summary import detect_format, locate_dataset, open_dataset
from structured.data.transforms import (
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    semantic_training_transforms,
    ssd_transforms,
    training_transforms,
)
from structured.data.yolo import yolo_splits

AUGMENT_PRESETS = ("standard", "ssd", "flip", "none")
HOLD_OUT_RULES = ("random", "last")
AnyDataset = DetectionDataset | SemanticDataset


@dataclass(frozen=True)
class DataConfig:
    """The ``data:`` section of a recipe (documented in the module docstring)."""

    format: str = "auto"
    train: str | None = None
    val: str | None = None
    image_root: str | None = None
    classes: list[str] | None = None
    train_split: str | None = None
    val_split: str | None = None
    val_fraction: float = 0.0
    hold_out: str = "random"
    augment: str = "standard"
    image_size: int | None = 512
    max_size: int | None = 853
    crop_size: int | None = None
    batch_size: int = 2
    workers: int = 0
    with_masks: bool | None = None
    skip_bad: bool = False
    cache: bool = False


def data_config(config: Config, require_train: bool = True) -> DataConfig:
    """The validated ``data:`` section of ``config`` (``require_train``: ``data.train`` must be set)."""
    section = config.get("data", {}) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{config.source}: 'data' must be a mapping, got {type(section).__name__}")
    validate_keys(DataConfig, section, "data", config.source, config.overrides_under("data"))
    settings = DataConfig(**section)
    if settings.with_masks is None:
        settings = replace(settings, with_masks=_model_wants_masks(config))
    if require_train and settings.train is None:
        raise ConfigError(f"{config.source}: data.train is not set; give a dataset path in the recipe or --data PATH")
    if settings.augment not in AUGMENT_PRESETS:
        raise ConfigError(f"{config.source}: data.augment must be one of {AUGMENT_PRESETS}, got {settings.augment!r}")
    if settings.hold_out not in HOLD_OUT_RULES:
        raise ConfigError(f"{config.source}: data.hold_out must be one of {HOLD_OUT_RULES}, got {settings.hold_out!r}")
    if not 0.0 <= settings.val_fraction < 1.0:
        raise ConfigError(f"{config.source}: data.val_fraction must be in [0, 1), got {settings.val_fraction}")
    if settings.crop_size is not None and settings.crop_size < 1:
        raise ConfigError(f"{config.source}: data.crop_size must be null or >= 1 pixels, got {settings.crop_size}")
    if settings.classes is not None and (not settings.classes or len(set(settings.classes)) != len(settings.classes)):
        raise ConfigError(f"{config.source}: data.classes must be null or a list of distinct class names, got "
                          f"{settings.classes}")
    for key in ("image_size", "max_size"):
        if getattr(settings, key) is not None and getattr(settings, key) < 1:
            raise ConfigError(f"{config.origin(f'data.{key}')}: data.{key} must be null or >= 1 pixels, got "
                              f"{getattr(settings, key)}")
    if settings.batch_size < 1 or settings.workers < 0:
        raise ConfigError(f"{config.source}: data.batch_size must be >= 1 and data.workers >= 0")
    return settings


def _model_wants_masks(config: Config) -> bool:
    model = config.data.get("model")
    return isinstance(model, dict) and isinstance(model.get("name"), str) and model_task(config) == "instance"


def use_data_path(config: Config, path: str | Path) -> None:
    """Point the recipe at the dataset ``path`` (``--data``): format auto, no val / splits / image root,
    ``val_fraction`` kept, and ``model.num_classes`` dropped so it is taken from the data. What the command
    line set (``--set data.val=...``, ``model.num_classes=...``) stays: only the recipe's own values go."""
    section = config.data.setdefault("data", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{config.source}: 'data' must be a mapping, got {type(section).__name__}")
    given = config.overrides_under("data")
    for key in ("val", "image_root", "train_split", "val_split"):
        if key not in given:
            section.pop(key, None)
    if "format" not in given:
        section["format"] = "auto"
    section["train"] = str(path)
    model = config.data.get("model")
    if isinstance(model, dict) and "num_classes" not in config.overrides_under("model"):
        model.pop("num_classes", None)


def _locate(path: str | Path, fmt: str, task: str) -> tuple[Path, str]:
    """``summary.locate_dataset`` with the ``task``'s format detection (class maps for semantic models)."""
    return locate_dataset(path, fmt, detect_semantic_format if task == "semantic" else detect_format)


def _default_splits(path: Path, fmt: str, settings: DataConfig, task: str) -> tuple[str | None, str | None]:
    """``(train split, val split)``: the recipe's, else ``train`` / ``val`` when the dataset defines both
    (VOC: in ``ImageSets/Main``, or for semantic data also ``ImageSets/Segmentation``)."""
    if settings.val is not None or settings.train_split is not None or settings.val_split is not None:
        return settings.train_split, settings.val_split
    split_folders = ("Main", "Segmentation") if task == "semantic" else ("Main",)
    voc_splits = fmt == "voc" and any((path / "ImageSets" / folder / "train.txt").is_file()
                                      and (path / "ImageSets" / folder / "val.txt").is_file()
                                      for folder in split_folders)
    yolo_splits_given = fmt == "yolo" and {"train", "val"} <= set(yolo_splits(path))
    return ("train", "val") if voc_splits or yolo_splits_given else (None, None)


def _train_transforms(settings: DataConfig, task: str) -> Compose | None:
    steps = _augmentation_steps(settings, task)
    if settings.crop_size is not None:
        steps.append(RandomCrop((settings.crop_size, settings.crop_size)))
    return Compose(steps) if steps else None


def _augmentation_steps(settings: DataConfig, task: str) -> list:
    """The steps of the ``augment`` preset, its resize included."""
    if settings.augment == "standard":
        if settings.image_size is None:
            raise ConfigError("data.augment=standard needs data.image_size (the training resize)")
        pipeline = semantic_training_transforms if task == "semantic" else training_transforms
        return list(pipeline(settings.image_size, settings.max_size).transforms)
    steps: list = {"flip": [RandomHorizontalFlip()], "ssd": list(ssd_transforms().transforms)}.get(settings.augment, [])
    if settings.image_size is not None:
        steps.append(Resize(settings.image_size, settings.max_size))
    return steps


def _open(path: Path, fmt: str, settings: DataConfig, split: str | None, task: str) -> AnyDataset:
    if task == "semantic":
        if settings.skip_bad:
            raise ConfigError("data.skip_bad applies to detection data; semantic datasets report a bad file when read")
        if settings.classes is not None:
            raise ConfigError("data.classes applies to detection data; semantic datasets name their classes in "
                              "labelmap.txt")
        return open_semantic_dataset(path, fmt, settings.image_root, split)
    dataset = open_dataset(path, fmt, settings.image_root, split, settings.classes)
    if settings.with_masks:
        dataset.with_masks = True
        _warn_when_masks_are_boxes(dataset)
    if settings.skip_bad:
        dataset.drop_unreadable()
    return dataset


def _warn_when_masks_are_boxes(dataset: DetectionDataset) -> None:
    """One warning when a COCO dataset loaded with masks has objects but no segmentation at all (masks are
    its boxes)."""
    if isinstance(dataset, CocoDetection) and dataset.num_objects() and not dataset.has_segmentations:
        warnings.warn(f"{dataset.annotation_file}: no annotation has a segmentation, so the instance masks are "
                      "the boxes filled as rectangles; give polygons or RLE to train real masks", UserWarning,
                      stacklevel=2)


def open_evaluation_dataset(path: str | Path, settings: DataConfig, split: str | None = None,
                            task: str = "detection") -> AnyDataset:
    """The ``task``'s dataset at ``path`` (any supported format, found as for training) without augmentation."""
    located, fmt = _locate(path, settings.format, task)
    return _open(located, fmt, settings, split, task)


def held_out_indices(sample_ids: list, fraction: float, rule: str, seed: int) -> list[int]:
    """The positions of the ``fraction`` of ``sample_ids`` (at least one) held out for validation, ascending.

    ``rule`` ``random``: a permutation seeded by ``seed``; ``last``: the last ones in sorted id order (by the
    ids' text), the same split whatever the seed.
    """
    count = max(1, round(fraction * len(sample_ids)))
    if rule == "last":
        order = sorted(range(len(sample_ids)), key=lambda index: str(sample_ids[index]))[-count:]
    else:
        order = np.random.default_rng(seed).permutation(len(sample_ids))[:count].tolist()
    return sorted(order)


def _hold_out(train: AnyDataset, val: AnyDataset, settings: DataConfig, seed: int) -> None:
    """Move ``settings.val_fraction`` of ``train``'s images into ``val`` (both opened on the same data)."""
    held_out = set(held_out_indices(train.sample_ids, settings.val_fraction, settings.hold_out, seed))
    val.select(sorted(held_out))
    train.select([index for index in range(len(train)) if index not in held_out])


def build_datasets(settings: DataConfig, seed: int = 0,
                   task: str = "detection") -> tuple[AnyDataset, AnyDataset | None]:
    """``(train dataset with augmentation, validation dataset without it or None)`` of the ``task`` from ``settings``."""
    train, val = _split_datasets(settings, seed, task)
    train.transforms = _train_transforms(settings, task)
    train.seed = seed
    if settings.cache:
        for dataset in (train, val):
            if dataset is not None:
                dataset.cache_samples()
    return train, val


def recipe_validation_dataset(settings: DataConfig, seed: int = 0, task: str = "detection") -> AnyDataset:
    """The validation set training used (``data.val``, a ``val_split``, given or the data's own, or the images
    ``val_fraction`` held out with the recipe's ``seed``), without augmentation; a ``ConfigError`` when the
    recipe names none."""
    if settings.val is not None:
        return _open_val(settings, task)
    if settings.train is None:
        raise ConfigError("the recipe names no data (data.train and data.val are null); pass the dataset to "
                          "evaluate with --data")
    val = _split_datasets(settings, seed, task)[1]
    if val is None:
        raise ConfigError(f"the recipe names no validation data for {settings.train} (data.val, data.val_split or "
                          "data.val_fraction); pass the dataset to evaluate with --data")
    return val


def _open_val(settings: DataConfig, task: str) -> AnyDataset:
    """The dataset ``data.val`` names (its ``val_split`` if any)."""
    located, fmt = _locate(settings.val, settings.format, task)
    return _open(located, fmt, settings, settings.val_split, task)


def _split_datasets(settings: DataConfig, seed: int, task: str) -> tuple[AnyDataset, AnyDataset | None]:
    """The training and validation datasets ``settings`` name, without transforms: the validation set is
    ``val``, ``val_split`` (given or the data's own), or the ``val_fraction`` of train held out with ``seed``."""
    train_path, fmt = _locate(settings.train, settings.format, task)
    train_split, val_split = _default_splits(train_path, fmt, settings, task)
    train = _open(train_path, fmt, settings, train_split, task)
    val: AnyDataset | None = None
    if settings.val is not None:
        val = _open_val(settings, task)
    elif val_split is not None:
        val = _open(train_path, fmt, settings, val_split, task)
    elif settings.val_fraction > 0:
        val = _open(train_path, fmt, settings, train_split, task)
        _hold_out(train, val, settings, seed)
    if len(train) == 0:
        held_out = f"; data.val_fraction {settings.val_fraction} held out all {len(val)} of them for validation " \
            "(lower it, or give data.val)" if val is not None and settings.val is None and val_split is None else ""
        raise ValueError(f"training set {settings.train} has no images{held_out}")
    if isinstance(train, DetectionDataset) and train.num_objects() == 0:
        test_set = " (a COCO file without 'annotations' is a test set)" if fmt == "coco" else ""
        raise ValueError(f"training set {_described(settings.train, train_split)}: none of its {len(train)} images "
                         f"has an object{test_set}; expected annotated objects")
    if val is not None and val.class_names != train.class_names:
        val_source = _described(settings.val or settings.train, settings.val_split if settings.val else val_split)
        raise ValueError(f"the validation set {val_source} has the classes {val.class_names[1:]} but the training set "
                         f"{_described(settings.train, train_split)} has {train.class_names[1:]}; give the full "
                         "class list in data.classes so that both use the same labels")
    return train, val


def _described(path: str, split: str | None) -> str:
    """``path``, with `` (split <split>)`` when a split of it is meant, for messages."""
    return path if split is None else f"{path} (split {split})"


def build_train_loader(dataset: AnyDataset, settings: DataConfig, sampler: Sampler[int],
                       seed: int = 0) -> EpochDataLoader:
    """Training batches in ``sampler``'s order (the loop sets the epoch on both), batched by the dataset's
    ``collate`` (semantic batches are padded to one size with 255 = ignore)."""
    return build_dataloader(dataset, batch_size=settings.batch_size, shuffle=False, num_workers=settings.workers,
                            seed=seed, sampler=sampler)


def fill_num_classes(config: Config, class_names: list[str]) -> None:
    """Set ``model.num_classes`` from the data when absent; a different explicit value is a ``ConfigError``."""
    model = config.data.get("model")
    if not isinstance(model, dict):
        raise ConfigError(f"{config.source}: no 'model' section; expected model: {{name: ..., ...}}")
    num_classes = len(class_names) - 1
    if "num_classes" not in model:
        model["num_classes"] = num_classes
    elif model["num_classes"] != num_classes:
        raise ConfigError(
            f"{config.source}: model.num_classes is {model['num_classes']} but the training data has {num_classes} "
            f"classes ({', '.join(class_names[1:])}); remove model.num_classes to take it from the data"
        )


def describe(dataset: AnyDataset | None) -> dict[str, Any]:
    """A short JSON-ready description of a dataset (size and classes) for the run log."""
    if dataset is None:
        return {"images": 0}
    return {"images": len(dataset), "classes": dataset.class_names[1:]}
