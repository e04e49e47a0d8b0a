"""``data.cache`` (samples decoded once, kept in memory, equal to the uncached ones) and ``data.crop_size``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from structured.config import Config, ConfigError, load_config
from structured.data import base
from structured.data.recipes import build_datasets, data_config, use_data_path


def _datasets(root: Path, task: str, **options):
    """The synthetic set's train and val datasets of ``task``, flips only, images at their own size."""
    model = "unet_original" if task == "semantic" else "faster_rcnn_r18_fpn"
    section = {"train": str(root / "annotations/instances_train.json"), "format": "coco",
               "val": str(root / "annotations/instances_val.json"), "with_masks": True}
    if task == "semantic":
        section = {"train": str(root), "train_split": "train", "val_split": "val"}
    section = {**section, "augment": "flip", "image_size": None, **options}
    return build_datasets(data_config(Config({"model": {"name": model}, "data": section})), seed=3, task=task)


def _assert_same_sample(first, second) -> None:
    torch.testing.assert_close(first[0], second[0], rtol=0, atol=0)
    assert first[1].keys() == second[1].keys()
    for key, value in first[1].items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, second[1][key], rtol=0, atol=0)
        else:
            assert value == second[1][key]


@pytest.mark.parametrize("task", ["detection", "semantic"])
def test_cached_samples_equal_the_files_over_epochs_and_after_select(synthetic_root: Path, task: str) -> None:
    plain_train, plain_val = _datasets(synthetic_root, task, cache=False)
    cached_train, cached_val = _datasets(synthetic_root, task, cache=True)
    assert len(cached_train.sample_cache) == len(cached_train) and len(cached_val.sample_cache) == len(cached_val)
    for epoch in (0, 1, 2):  # the flip draws change with the epoch; the cached arrays must stay untouched
        plain_train.set_epoch(epoch)
        cached_train.set_epoch(epoch)
        for index in range(len(plain_train)):
            _assert_same_sample(plain_train[index], cached_train[index])
    order = list(range(len(plain_val)))[::-1]
    plain_val.select(order)
    cached_val.select(order)
    for index in range(len(plain_val)):
        _assert_same_sample(plain_val[index], cached_val[index])


def test_a_changed_sample_does_not_change_the_cache(synthetic_root: Path) -> None:
    train, _ = _datasets(synthetic_root, "detection", cache=True)
    image, target = train.raw_sample(0)
    reference = train.load_sample(0)
    image[:] = 0
    target["boxes"][:] = -1
    target["masks"][:] = 1
    again = train.raw_sample(0)
    np.testing.assert_array_equal(again[0], reference[0])
    np.testing.assert_array_equal(again[1]["boxes"], reference[1]["boxes"])
    np.testing.assert_array_equal(again[1]["masks"], reference[1]["masks"])


def test_a_cache_too_large_for_the_free_memory_is_refused_naming_the_dataset(
        synthetic_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_available_memory", lambda: 1000)
    with pytest.raises(ValueError, match=r"data\.cache: the 12 decoded samples of the dataset of .*000001.jpg would take .* MiB of memory free; expected at most half"):
        _datasets(synthetic_root, "detection", cache=True)


@pytest.mark.parametrize("task", ["detection", "semantic"])
def test_crop_size_crops_training_samples_at_their_own_scale(synthetic_root: Path, task: str) -> None:
    train, val = _datasets(synthetic_root, task, crop_size=48)
    uncropped = train.load_sample(0)[0]
    for index in range(len(train)):
        image, target = train[index]
        assert image.shape[1:] == (48, 48)  # the synthetic pictures are 128 px: every crop is whole
        if task == "detection":
            assert bool((target["boxes"] >= 0).all() and (target["boxes"] <= 48).all())
        else:
            assert target["semantic"].shape == (48, 48)
    assert uncropped.shape[:2] == (128, 128) and val[0][0].shape[1:] == (128, 128)  # validation keeps its size


def test_a_crop_size_below_one_pixel_is_a_config_error() -> None:
    config = Config({"model": {"name": "unet_original"}, "data": {"train": "x", "crop_size": 0}})
    with pytest.raises(ConfigError, match=r"data\.crop_size must be null or >= 1 pixels, got 0"):
        data_config(config)


def test_data_path_replaces_the_recipes_own_data_but_keeps_what_the_command_line_set(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: {name: faster_rcnn_r18_fpn, num_classes: 3}\n"
                      "data: {format: voc, train: old, val: old_val, image_root: imgs, val_fraction: 0.1}\n")
    plain = load_config(recipe)
    use_data_path(plain, "new.json")
    assert plain.data["data"] == {"format": "auto", "train": "new.json", "val_fraction": 0.1}
    assert "num_classes" not in plain.data["model"]

    given = load_config(recipe, ["data.val=mine.json", "data.format=coco", "model.num_classes=5"])
    use_data_path(given, "new.json")
    assert given.data["data"] == {"format": "coco", "train": "new.json", "val": "mine.json", "val_fraction": 0.1}
    assert given.data["model"]["num_classes"] == 5
