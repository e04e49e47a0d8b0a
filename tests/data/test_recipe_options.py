"""``data.cache`` (samples decoded once, kept in memory, equal to the uncached ones) and ``data.crop_size``."""

from __future__ import annotations

import json
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


@pytest.mark.parametrize("key", ["image_size", "max_size"])
def test_a_resize_below_one_pixel_names_the_key_and_the_set(key: str) -> None:
    config = Config({"model": {"name": "faster_rcnn_r18_fpn"}, "data": {"train": "x", key: 0}}, "r.yaml")
    config.overrides[f"data.{key}"] = f"data.{key}=0"
    with pytest.raises(ConfigError, match=rf"^r\.yaml \(--set data\.{key}=0\): data\.{key} must be null or >= 1"):
        data_config(config)


def test_a_training_set_that_validation_took_whole_says_so(tmp_path: Path, synthetic_root: Path) -> None:
    content = json.loads((synthetic_root / "annotations/instances_val.json").read_text())
    first = content["images"][0]["id"]
    content["images"] = content["images"][:1]
    content["annotations"] = [entry for entry in content["annotations"] if entry["image_id"] == first]
    path = tmp_path / "one.json"
    path.write_text(json.dumps(content))
    settings = _detection_settings(train=str(path), image_root=str(synthetic_root / "JPEGImages"), val_fraction=0.2)
    with pytest.raises(ValueError, match=r"one\.json has no images; data\.val_fraction 0\.2 held out all 1 of them"):
        build_datasets(settings)


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


def _detection_settings(**section):
    return data_config(Config({"model": {"name": "faster_rcnn_r18_fpn"}, "data": {"augment": "none", **section}}))


def _devkit_without_dog_in_val(root: Path, image: Path) -> Path:
    """A VOCdevkit whose train split has a cat and a dog, its val split only a cat."""
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    for stem, names in (("a", ("cat", "dog")), ("b", ("cat",))):
        (root / "JPEGImages" / f"{stem}.jpg").symlink_to(image)
        objects = "".join(f"<object><name>{name}</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>40</xmax>"
                          "<ymax>40</ymax></bndbox></object>" for name in names)
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><size><width>128</width><height>128</height></size>{objects}</annotation>")
    (root / "ImageSets/Main/train.txt").write_text("a\n")
    (root / "ImageSets/Main/val.txt").write_text("b\n")
    return root


def test_data_classes_give_both_splits_the_same_labels(tmp_path: Path, synthetic_root: Path) -> None:
    root = _devkit_without_dog_in_val(tmp_path / "voc", synthetic_root / "JPEGImages" / "000001.jpg")
    with pytest.raises(ValueError, match=r"the validation set .*voc \(split val\) has the classes \['cat'\] but the "
                                         r"training set .*voc \(split train\) has \['cat', 'dog'\]; give the full "
                                         r"class list in data\.classes"):
        build_datasets(_detection_settings(train=str(root)))
    train, val = build_datasets(_detection_settings(train=str(root), classes=["dog", "cat"]))
    assert train.class_names == val.class_names == ["__background__", "dog", "cat"]
    assert train.records[0].labels.tolist() == [2, 1]


@pytest.mark.parametrize("classes", [[], ["cat", "cat"], "cat"])
def test_data_classes_must_be_a_list_of_distinct_names(classes) -> None:
    with pytest.raises(ConfigError, match="classes"):
        _detection_settings(train="x", classes=classes)


def test_data_classes_for_coco_must_equal_its_categories(synthetic_root: Path) -> None:
    settings = _detection_settings(train=str(synthetic_root / "annotations/instances_val.json"), classes=["a"])
    with pytest.raises(ValueError, match=r"data\.classes \['a'\] differ from the classes the coco data names"):
        build_datasets(settings)


def test_a_training_set_without_any_object_is_refused_naming_the_file(tmp_path: Path, synthetic_root: Path) -> None:
    content = json.loads((synthetic_root / "annotations/instances_val.json").read_text())
    del content["annotations"]
    path = tmp_path / "test_images.json"
    path.write_text(json.dumps(content))
    settings = _detection_settings(train=str(path), image_root=str(synthetic_root / "JPEGImages"))
    with pytest.raises(ValueError, match=r"training set .*test_images\.json: none of its 4 images has an object"):
        build_datasets(settings)


def test_masks_from_a_coco_file_without_segmentations_are_announced(tmp_path: Path, synthetic_root: Path) -> None:
    content = json.loads((synthetic_root / "annotations/instances_val.json").read_text())
    for annotation in content["annotations"]:
        del annotation["segmentation"]
    path = tmp_path / "boxes_only.json"
    path.write_text(json.dumps(content))
    settings = _detection_settings(train=str(path), image_root=str(synthetic_root / "JPEGImages"), with_masks=True)
    with pytest.warns(UserWarning, match=r"boxes_only\.json: no annotation has a segmentation, so the instance masks "
                                         "are the boxes filled as rectangles"):
        build_datasets(settings)
