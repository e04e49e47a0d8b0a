"""The ``data:`` section of a training recipe: which files, which format, which augmentation, which batches.

Keys (the fields of :class:`DataConfig`; an unknown key is a ``ConfigError`` naming it)::

    data:
      format: auto            # auto | coco | voc | yolo | folders (see structured.data.summary.detect_format)
      train: path             # COCO .json, VOC folder (VOCdevkit or flat), YOLO folder or data.yaml, mask folder
      val: null               # same forms; null: see val_split / val_fraction
      image_root: null        # COCO image folder (default: found next to the .json)
      train_split: null       # VOC ImageSets/Main/<split>.txt, or a data.yaml split (train, val, test)
      val_split: null
      val_fraction: 0.0       # without a val set, hold out this fraction of train (seeded, by image)
      augment: standard       # standard (photometric, zoom-out, IoU crop, flip, resize) | ssd | flip | none
                              # ssd: the SSD paper's preset (photometric distortion, zoom-out up to 4x
                              # with the mean pixel, IoU crop, flip; resized only when image_size is set:
                              # SSD models resize to their fixed size themselves)
      image_size: 512         # training resize: shorter side (null: keep); validation images keep their size
      max_size: 853           # longer side cap of the training resize
      batch_size: 2           # images per process per step
      workers: 0              # DataLoader worker processes
      with_masks: null        # load instance masks (COCO, mask folders); null: when the model is an
                              # instance model (its recipe's task, e.g. Mask R-CNN)
      skip_bad: false         # decode every image once and leave out unreadable ones

Rules for paths: a folder whose dataset sits one level down (``dsb2018_nuclei/stage1_train``) is found
when it is the only one there; a VOCdevkit folder with ``ImageSets/Main/train.txt`` and ``val.txt``, or
a YOLO ``data.yaml`` (the file or its folder) with ``train`` and ``val`` entries, with no splits or
``val`` given trains on ``train`` and validates on ``val``.

``num_classes``: when the recipe's ``model`` section leaves it out, :func:`fill_num_classes` sets it to
the training set's class count; when it is given it must equal that count.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from structured.config import Config, ConfigError, model_task, validate_keys
from structured.data.base import DetectionDataset
from structured.data.loading import EpochDataLoader, build_dataloader
from structured.data.summary import detect_format, open_dataset
from structured.data.transforms import (
    Compose,
    RandomHorizontalFlip,
    Resize,
    ssd_transforms,
    training_transforms,
)
from structured.data.yolo import yolo_splits

AUGMENT_PRESETS = ("standard", "ssd", "flip", "none")


@dataclass(frozen=True)
class DataConfig:
    """The ``data:`` section of a recipe (documented in the module docstring)."""

    format: str = "auto"
    train: str | None = None
    val: str | None = None
    image_root: str | None = None
    train_split: str | None = None
    val_split: str | None = None
    val_fraction: float = 0.0
    augment: str = "standard"
    image_size: int | None = 512
    max_size: int | None = 853
    batch_size: int = 2
    workers: int = 0
    with_masks: bool | None = None
    skip_bad: bool = False


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
    if not 0.0 <= settings.val_fraction < 1.0:
        raise ConfigError(f"{config.source}: data.val_fraction must be in [0, 1), got {settings.val_fraction}")
    if settings.batch_size < 1 or settings.workers < 0:
        raise ConfigError(f"{config.source}: data.batch_size must be >= 1 and data.workers >= 0")
    return settings


def _model_wants_masks(config: Config) -> bool:
    model = config.data.get("model")
    return isinstance(model, dict) and isinstance(model.get("name"), str) and model_task(config) == "instance"


def use_data_path(config: Config, path: str | Path) -> None:
    """Point the recipe at the dataset ``path`` (``--data``): format auto, no val / splits / image root,
    ``val_fraction`` kept, and ``model.num_classes`` dropped so it is taken from the data."""
    section = config.data.setdefault("data", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{config.source}: 'data' must be a mapping, got {type(section).__name__}")
    for key in ("val", "image_root", "train_split", "val_split"):
        section.pop(key, None)
    section["format"] = "auto"
    section["train"] = str(path)
    model = config.data.get("model")
    if isinstance(model, dict):
        model.pop("num_classes", None)


def locate_dataset(path: str | Path, fmt: str = "auto") -> tuple[Path, str]:
    """``(path, format)`` of the dataset at ``path``, looking one folder down when ``path`` itself is none."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    if fmt != "auto":
        return path, fmt
    try:
        return path, detect_format(path)
    except ValueError as error:
        children = [child for child in sorted(path.iterdir()) if child.is_dir()] if path.is_dir() else []
        found = []
        for child in children:
            try:
                found.append((child, detect_format(child)))
            except ValueError:
                continue
        if len(found) == 1:
            return found[0]
        raise ValueError(f"{error} (and not exactly one dataset folder inside it: found {len(found)})") from None


def _default_splits(path: Path, fmt: str, settings: DataConfig) -> tuple[str | None, str | None]:
    """``(train split, val split)``: the recipe's, else ``train`` / ``val`` when the dataset defines both."""
    if settings.val is not None or settings.train_split is not None or settings.val_split is not None:
        return settings.train_split, settings.val_split
    main = path / "ImageSets" / "Main"
    voc_splits = fmt == "voc" and (main / "train.txt").is_file() and (main / "val.txt").is_file()
    yolo_splits_given = fmt == "yolo" and {"train", "val"} <= set(yolo_splits(path))
    return ("train", "val") if voc_splits or yolo_splits_given else (None, None)


def _train_transforms(settings: DataConfig) -> Compose | None:
    if settings.augment == "standard":
        if settings.image_size is None:
            raise ConfigError("data.augment=standard needs data.image_size (the training resize)")
        return training_transforms(settings.image_size, settings.max_size)
    steps: list = {"flip": [RandomHorizontalFlip()], "ssd": list(ssd_transforms().transforms)}.get(settings.augment, [])
    if settings.image_size is not None:
        steps.append(Resize(settings.image_size, settings.max_size))
    return Compose(steps) if steps else None


def _open(path: Path, fmt: str, settings: DataConfig, split: str | None) -> DetectionDataset:
    dataset = open_dataset(path, fmt, settings.image_root, split)
    if settings.with_masks:
        dataset.with_masks = True
    if settings.skip_bad:
        dataset.drop_unreadable()
    return dataset


def open_evaluation_dataset(path: str | Path, settings: DataConfig, split: str | None = None) -> DetectionDataset:
    """The dataset at ``path`` (any supported format, found as for training) without augmentation."""
    located, fmt = locate_dataset(path, settings.format)
    return _open(located, fmt, settings, split)


def _hold_out(train: DetectionDataset, val: DetectionDataset, fraction: float, seed: int) -> None:
    """Move a seeded ``fraction`` of ``train``'s images (at least one) into ``val`` (both opened on the same data)."""
    order = np.random.default_rng(seed).permutation(len(train.records))
    count = max(1, round(fraction * len(order)))
    held_out = set(order[:count].tolist())
    records = train.records
    val.records = [record for index, record in enumerate(records) if index in held_out]
    train.records = [record for index, record in enumerate(records) if index not in held_out]


def build_datasets(settings: DataConfig, seed: int = 0) -> tuple[DetectionDataset, DetectionDataset | None]:
    """``(train dataset with augmentation, validation dataset without it or None)`` from ``settings``."""
    train_path, fmt = locate_dataset(settings.train, settings.format)
    train_split, val_split = _default_splits(train_path, fmt, settings)
    train = _open(train_path, fmt, settings, train_split)
    val: DetectionDataset | None = None
    if settings.val is not None:
        val_path, val_format = locate_dataset(settings.val, settings.format)
        val = _open(val_path, val_format, settings, val_split)
    elif val_split is not None:
        val = _open(train_path, fmt, settings, val_split)
    elif settings.val_fraction > 0:
        val = _open(train_path, fmt, settings, train_split)
        _hold_out(train, val, settings.val_fraction, seed)
    if len(train) == 0:
        raise ValueError(f"training set {settings.train} has no images")
    if val is not None and val.class_names != train.class_names:
        raise ValueError(f"validation classes {val.class_names[1:]} differ from training classes {train.class_names[1:]}")
    train.transforms = _train_transforms(settings)
    train.seed = seed
    return train, val


def build_train_loader(dataset: DetectionDataset, settings: DataConfig, sampler: Sampler[int],
                       seed: int = 0) -> EpochDataLoader:
    """Training batches in ``sampler``'s order (the loop sets the epoch on both)."""
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


def describe(dataset: DetectionDataset | None) -> dict[str, Any]:
    """A short JSON-ready description of a dataset (size and classes) for the run log."""
    if dataset is None:
        return {"images": 0}
    return {"images": len(dataset), "classes": dataset.class_names[1:]}
