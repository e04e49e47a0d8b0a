"""The synthetic generator: deterministic, consistent ground truth, the promised variety, real files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from pycocotools.coco import COCO

from structured.data.geometry import masks_to_boxes, rings_to_box
from structured.data.loading import read_image, read_index_png
from structured.data.synthetic import SHAPE_CLASSES, generate_dataset, iter_samples, make_sample, semantic_map
from tests.data.conftest import CATEGORY_IDS


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    first = generate_dataset(tmp_path / "a", num_train=3, num_val=1, image_size=96, seed=1)
    second = generate_dataset(tmp_path / "b", num_train=3, num_val=1, image_size=96, seed=1)
    third = generate_dataset(tmp_path / "c", num_train=3, num_val=1, image_size=96, seed=2)
    assert _digest(first) == _digest(second)
    assert _digest(first) != _digest(third)


def test_boxes_are_tight_boxes_of_masks_and_polygons_agree() -> None:
    for sample in iter_samples(20, seed=0, image_size=128):
        np.testing.assert_array_equal(sample.boxes, masks_to_boxes(sample.masks))
        for box, rings in zip(sample.boxes, sample.polygons, strict=True):
            assert np.abs(rings_to_box(rings) - box).max() <= 1.5
        assert sample.labels.min(initial=1) >= 1 and sample.labels.max(initial=1) <= len(SHAPE_CLASSES)


def test_variety_classes_scales_border_and_occlusion() -> None:
    samples = iter_samples(60, seed=0, image_size=160)
    labels = np.concatenate([s.labels for s in samples])
    boxes = np.concatenate([s.boxes for s in samples])
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert set(labels.tolist()) == set(range(1, len(SHAPE_CLASSES) + 1))
    assert sides.min() < 14 and sides.max() > 60
    assert ((boxes[:, :2] <= 0) | (boxes[:, 2:] >= 160)).any(axis=1).sum() >= 5
    unoccluded = np.concatenate([s.unoccluded for s in samples])
    assert (unoccluded < 0.9).sum() >= 5 and unoccluded.min() >= 0.4 - 1e-6


def test_masks_barely_overlap_and_background_is_not_flat() -> None:
    sample = make_sample(np.random.default_rng(3), 128, min_objects=4, max_objects=4)
    assert (sample.masks.sum(axis=0) > 1).sum() <= 0.02 * sample.masks.sum()
    background = sample.image[sample.masks.sum(axis=0) == 0]
    assert background.std(axis=0).min() > 3


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        make_sample(np.random.default_rng(0), 16)
    with pytest.raises(ValueError, match="formats"):
        generate_dataset(tmp_path, 1, 1, formats=("yolo",))
    with pytest.raises(ValueError, match="category_ids"):
        generate_dataset(tmp_path, 1, 1, category_ids=(1, 1, 2, 3, 4))
    with pytest.raises(ValueError, match="classes must be distinct shapes"):
        make_sample(np.random.default_rng(0), 64, classes=("circle", "hexagon"))


def test_a_subset_of_shapes_names_and_draws_only_those(tmp_path: Path) -> None:
    classes = ("star", "circle")
    generate_dataset(tmp_path, 6, 0, image_size=64, seed=1, formats=("coco", "voc"), classes=classes)
    coco = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    assert [category["name"] for category in coco["categories"]] == list(classes)
    assert {annotation["category_id"] for annotation in coco["annotations"]} == {1, 2}
    names = {line.strip() for xml in (tmp_path / "Annotations").glob("*.xml") for line in xml.read_text().splitlines()
             if line.strip().startswith("<name>")}
    assert names == {"<name>star</name>", "<name>circle</name>"}
    default = make_sample(np.random.default_rng(2), 96, min_objects=4, max_objects=4)
    same_order = make_sample(np.random.default_rng(2), 96, min_objects=4, max_objects=4, classes=SHAPE_CLASSES)
    assert np.array_equal(default.image, same_order.image)


def test_coco_file_is_read_by_pycocotools_and_matches_images(synthetic_root: Path) -> None:
    coco = COCO(str(synthetic_root / "annotations" / "instances_train.json"))
    assert sorted(coco.getCatIds()) == list(CATEGORY_IDS)
    kinds = {type(a["segmentation"]).__name__ for a in coco.dataset["annotations"]}
    assert kinds == {"list", "dict"}
    for annotation in coco.dataset["annotations"]:
        image = coco.imgs[annotation["image_id"]]
        mask = coco.annToMask(annotation)
        assert mask.shape == (image["height"], image["width"])
        x, y, w, h = annotation["bbox"]
        box = masks_to_boxes(mask[None])[0]
        # pycocotools rasterises polygons a little inside cv2's fill: up to 2 px on thin star points
        assert np.abs(box - [x, y, x + w, y + h]).max() <= 2.0
        assert abs(mask_utils.area(coco.annToRLE(annotation)) - annotation["area"]) <= 0.3 * annotation["area"] + 6
    assert all((synthetic_root / "JPEGImages" / im["file_name"]).is_file() for im in coco.dataset["images"])


def test_semantic_pngs_and_voc_lists(synthetic_root: Path) -> None:
    train_ids = (synthetic_root / "ImageSets" / "Main" / "train.txt").read_text().split()
    val_ids = (synthetic_root / "ImageSets" / "Main" / "val.txt").read_text().split()
    assert len(train_ids) == 12 and len(val_ids) == 4 and not set(train_ids) & set(val_ids)
    content = json.loads((synthetic_root / "annotations" / "instances_val.json").read_text())
    assert [im["file_name"][:-4] for im in content["images"]] == val_ids
    for image_id in train_ids[:4]:
        indices = read_index_png(synthetic_root / "SegmentationClass" / f"{image_id}.png")
        image = read_image(synthetic_root / "JPEGImages" / f"{image_id}.jpg")
        assert indices.shape == image.shape[:2] and indices.max() <= len(SHAPE_CLASSES)


def test_semantic_map_labels_each_mask() -> None:
    sample = make_sample(np.random.default_rng(1), 96, min_objects=3, max_objects=3)
    class_map = semantic_map(sample)
    alone = sample.masks.sum(axis=0) == 1
    for mask, label in zip(sample.masks, sample.labels, strict=True):
        assert (class_map[mask.astype(bool) & alone] == label).all()
    assert (class_map[sample.masks.sum(axis=0) == 0] == 0).all()
