"""Semantic datasets in every layout, found by format detection: class maps, class names, hold-out, batching."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from structured.config import Config
from structured.data.base import BACKGROUND
from structured.data.coco import CocoDetection
from structured.data.loading import collate_semantic, write_palette_png
from structured.data.recipes import build_datasets, data_config, held_out_indices
from structured.data.semantic import (
    InstanceSemanticDataset,
    detect_semantic_format,
    open_semantic_dataset,
    read_labelmap,
)
from structured.data.synthetic import SHAPE_CLASSES
from structured.data.transforms import semantic_training_transforms
from tests.data.test_folders import _write_instance_folders


def test_synthetic_shapes_open_as_voc_class_maps_named_by_the_labelmap(synthetic_root: Path) -> None:
    assert detect_semantic_format(synthetic_root) == "voc"
    dataset = open_semantic_dataset(synthetic_root, split="val")
    assert dataset.class_names == [BACKGROUND, *SHAPE_CLASSES] and len(dataset) == 4
    coco = CocoDetection(synthetic_root / "annotations" / "instances_val.json", synthetic_root / "JPEGImages",
                         with_masks=True)
    image, target = dataset[0]
    assert image.shape[1:] == target["semantic"].shape and target["semantic"].dtype == torch.int64
    assert set(target["semantic"].unique().tolist()) <= set(range(len(SHAPE_CLASSES) + 1))
    assert dataset.sample_ids == [record.path.stem for record in coco.records]


def test_coco_instances_are_painted_in_order_with_crowds_ignored(synthetic_root: Path) -> None:
    coco = CocoDetection(synthetic_root / "annotations" / "instances_train.json", synthetic_root / "JPEGImages",
                         with_masks=True)
    index = next(i for i, record in enumerate(coco.records) if len(record.labels) >= 2)
    coco.records[index].iscrowd[0] = 1
    _, instances = coco.load_sample(index)
    painted = InstanceSemanticDataset(coco).load_sample(index)[1]["semantic"]
    expected = np.zeros_like(painted)
    for mask, label in zip(instances["masks"][1:], instances["labels"][1:], strict=True):
        expected[mask.astype(bool)] = label
    expected[instances["masks"][0].astype(bool)] = 255
    np.testing.assert_array_equal(painted, expected)
    assert open_semantic_dataset(synthetic_root / "annotations" / "instances_val.json").class_names[1:] == list(SHAPE_CLASSES)


def test_instance_mask_folders_read_as_foreground_and_background(tmp_path: Path) -> None:
    samples = _write_instance_folders(tmp_path, 2)
    dataset = open_semantic_dataset(tmp_path)
    assert detect_semantic_format(tmp_path) == "folders" and dataset.class_names == [BACKGROUND, "object"]
    for index, sample in enumerate(samples):
        np.testing.assert_array_equal(dataset[index][1]["semantic"].numpy(), sample.masks.any(axis=0))


def _write_mask_folder(root: Path, masks: dict[str, np.ndarray], image_size: tuple[int, int] = (20, 24)) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\ncat:1,2,3::\ndog\n")
    for stem, mask in masks.items():
        cv2.imwrite(str(root / "images" / f"{stem}.jpg"), np.zeros((*image_size, 3), np.uint8))
        write_palette_png(root / "masks" / f"{stem}.png", mask)
    return root


def test_an_images_and_masks_folder_needs_a_labelmap_and_checks_every_mask(tmp_path: Path) -> None:
    good = np.zeros((20, 24), np.uint8)
    good[2:5, 3:9], good[10:, :4] = 2, 255
    root = _write_mask_folder(tmp_path / "pets", {"a": good})
    dataset = open_semantic_dataset(root)
    assert detect_semantic_format(root) == "masks" and dataset.class_names == [BACKGROUND, "cat", "dog"]
    np.testing.assert_array_equal(dataset[0][1]["semantic"].numpy(), good)
    (root / "labelmap.txt").unlink()
    with pytest.raises(ValueError, match=r"pets: no labelmap\.txt"):
        open_semantic_dataset(root)
    bad = _write_mask_folder(tmp_path / "bad", {"small": np.zeros((10, 12), np.uint8), "index": np.full((20, 24), 7, np.uint8)})
    dataset = open_semantic_dataset(bad)
    with pytest.raises(ValueError, match=r"index\.png: class indices \[7\] outside 0\.\.2"):
        dataset[0]
    with pytest.raises(ValueError, match=r"small\.png: mask is 10x12 \(HxW\) but the image .*small\.jpg is 20x24"):
        dataset[1]
    (bad / "masks" / "small.png").unlink()
    with pytest.raises(ValueError, match=r"masks: no mask <stem>\.png for 1 image\(s\), e\.g\. \['small\.jpg'\]"):
        open_semantic_dataset(bad)
    (tmp_path / "twice.txt").write_text("bg\ncat\ncat\n")
    with pytest.raises(ValueError, match=r"twice\.txt: class names appear twice: \['cat'\]"):
        read_labelmap(tmp_path / "twice.txt")


def test_semantic_batches_pad_images_with_zero_and_class_maps_with_ignore() -> None:
    batch = [(torch.ones(3, 4, 5), {"semantic": torch.ones(4, 5, dtype=torch.int64), "image_id": "a"}),
             (torch.ones(3, 6, 3), {"semantic": torch.full((6, 3), 2, dtype=torch.int64), "image_id": "b"})]
    images, targets = collate_semantic(batch)
    assert [tuple(image.shape) for image in images] == [(3, 6, 5)] * 2
    assert images[0][:, 4:].abs().sum() == 0 and images[1][:, :, 3:].abs().sum() == 0
    assert (targets[0]["semantic"][4:] == 255).all() and (targets[0]["semantic"][:4] == 1).all()
    assert (targets[1]["semantic"][:, 3:] == 255).all() and targets[1]["image_id"] == "b"


def test_the_semantic_training_pipeline_keeps_class_values_within_the_crop_size(synthetic_root: Path) -> None:
    dataset = open_semantic_dataset(synthetic_root, split="train")
    pipeline = semantic_training_transforms(64)
    for index in range(3):
        image, target = dataset.load_sample(index)
        allowed = {*np.unique(target["semantic"]).tolist(), 255}
        image, target = pipeline(image, target, np.random.default_rng(index))
        assert image.shape[:2] == target["semantic"].shape and max(image.shape[:2]) <= 64
        assert set(np.unique(target["semantic"]).tolist()) <= allowed


def test_the_last_hold_out_is_the_tail_in_sorted_id_order_whatever_the_seed(synthetic_root: Path) -> None:
    ids = ["b3", "a1", "c9", "a2", "b1"]
    assert held_out_indices(ids, 0.4, "last", seed=0) == held_out_indices(ids, 0.4, "last", seed=7) == [0, 2]
    assert len(held_out_indices(ids, 0.4, "random", seed=3)) == 2
    config = Config({"model": {"name": "unet_original"},
                     "data": {"train": str(synthetic_root), "train_split": "train", "val_fraction": 0.25,
                              "hold_out": "last", "augment": "none", "image_size": None}})
    train, val = build_datasets(data_config(config), seed=0, task="semantic")
    assert len(train) == 9 and val.sample_ids == sorted(train.sample_ids + val.sample_ids)[-3:]


@pytest.mark.real_data
def test_dsb2018_nuclei_as_foreground_background_with_the_fixed_160_40_split(shared_data: Path) -> None:
    root = shared_data / "dsb2018_nuclei"
    config = Config({"model": {"name": "unet_nuclei"},
                     "data": {"train": str(root), "val_fraction": 0.2, "hold_out": "last", "augment": "none",
                              "image_size": None}})
    train, val = build_datasets(data_config(config), seed=0, task="semantic")
    assert (len(train), len(val)) == (160, 40) and train.class_names == [BACKGROUND, "object"]
    assert sorted(val.sample_ids) == sorted(train.sample_ids + val.sample_ids)[-40:]
    image, target = val[0]
    instances = val.instances.load_sample(0)[1]["masks"]
    assert image.shape[1:] == target["semantic"].shape
    np.testing.assert_array_equal(target["semantic"].numpy(), instances.any(axis=0))
