"""COCO loading against pycocotools, category-id mapping, and every documented bad-input outcome."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from structured.data.coco import CocoDetection
from structured.data.loading import ImageReadError
from structured.data.summary import format_summary, open_dataset, summarize_dataset
from structured.data.synthetic import SHAPE_CLASSES
from tests.data.conftest import CATEGORY_IDS


def _paths(root: Path, split: str = "train") -> tuple[Path, Path]:
    return root / "annotations" / f"instances_{split}.json", root / "JPEGImages"


def _write(tmp_path: Path, content: dict) -> Path:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(content))
    return path


@pytest.fixture()
def content(synthetic_root: Path) -> dict:
    return json.loads(_paths(synthetic_root)[0].read_text())


def test_targets_match_pycocotools(synthetic_root: Path) -> None:
    annotation_file, image_root = _paths(synthetic_root)
    dataset = CocoDetection(annotation_file, image_root, with_masks=True)
    coco = COCO(str(annotation_file))
    assert len(dataset) == len(coco.getImgIds())
    assert dataset.class_names == ["__background__", *SHAPE_CLASSES]
    for index in range(len(dataset)):
        image, target = dataset[index]
        info = coco.imgs[target["image_id"]]
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[target["image_id"]]))
        assert image.shape == (3, info["height"], info["width"]) and image.dtype == torch.float32
        assert image.min() >= 0 and image.max() <= 1
        xywh = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        torch.testing.assert_close(target["boxes"], torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), 1))
        assert dataset.to_category_ids(target["labels"].numpy()).tolist() == [a["category_id"] for a in annotations]
        expected_masks = np.stack([coco.annToMask(a) for a in annotations]) if annotations else np.zeros((0, *image.shape[1:]))
        np.testing.assert_array_equal(target["masks"].numpy(), expected_masks)
        assert target["masks"].dtype == torch.uint8 and target["labels"].dtype == torch.int64


def test_category_mapping_both_ways(synthetic_root: Path) -> None:
    dataset = CocoDetection(*_paths(synthetic_root))
    assert dataset.category_ids == list(CATEGORY_IDS)
    assert dataset.category_id_to_label == {cid: label for label, cid in enumerate(CATEGORY_IDS, start=1)}
    assert dataset.to_category_ids([1, 5, 3]).tolist() == [3, 42, 11]
    with pytest.raises(ValueError, match=r"1\.\.5"):
        dataset.to_category_ids([0])


def test_images_without_objects_are_negatives_unless_skipped(tmp_path: Path, content: dict, synthetic_root: Path) -> None:
    emptied = content["images"][0]["id"]
    content["annotations"] = [a for a in content["annotations"] if a["image_id"] != emptied]
    path = _write(tmp_path, content)
    dataset = CocoDetection(path, synthetic_root / "JPEGImages", with_masks=True)
    index = next(i for i, r in enumerate(dataset.records) if r.image_id == emptied)
    _, target = dataset[index]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,) and target["masks"].shape[0] == 0
    skipping = CocoDetection(path, synthetic_root / "JPEGImages", skip_empty=True)
    assert emptied not in [r.image_id for r in skipping.records]


def test_crowd_regions_kept_or_dropped(tmp_path: Path, content: dict, synthetic_root: Path) -> None:
    content["annotations"][0]["iscrowd"] = 1
    path = _write(tmp_path, content)
    with_crowd = CocoDetection(path, synthetic_root / "JPEGImages")
    without = CocoDetection(path, synthetic_root / "JPEGImages", include_crowd=False)
    crowd_image = content["annotations"][0]["image_id"]
    index = next(i for i, r in enumerate(with_crowd.records) if r.image_id == crowd_image)
    assert with_crowd[index][1]["iscrowd"].sum() == 1
    assert len(without.records[index].labels) == len(with_crowd.records[index].labels) - 1


def test_unknown_category_id_error_lists_known_ids(tmp_path: Path, content: dict) -> None:
    content["annotations"][2]["category_id"] = 999
    with pytest.raises(ValueError, match=r"unknown category id 999; known: \[3, 7, 11, 20, 42\]") as error:
        CocoDetection(_write(tmp_path, content), tmp_path)
    assert f"annotation id={content['annotations'][2]['id']}" in str(error.value)


def test_unknown_image_id_and_missing_keys_are_errors(tmp_path: Path, content: dict) -> None:
    broken = copy.deepcopy(content)
    broken["annotations"][0]["image_id"] = 12345
    with pytest.raises(ValueError, match="image_id 12345"):
        CocoDetection(_write(tmp_path, broken), tmp_path)
    del content["images"][1]["file_name"]
    with pytest.raises(ValueError, match=r"images\[1\].*file_name"):
        CocoDetection(_write(tmp_path, content), tmp_path)


def test_malformed_json_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"images": [],\n  "categories": [}')
    with pytest.raises(ValueError, match=r"broken\.json: malformed JSON at line 2 column"):
        CocoDetection(path, tmp_path)


def test_inverted_and_outside_boxes_are_dropped_or_clipped_with_one_counted_warning(
        tmp_path: Path, content: dict, synthetic_root: Path) -> None:
    first = content["annotations"][0]
    first["bbox"] = [50.0, 40.0, -10.0, 20.0]  # x2 < x1
    second = content["annotations"][1]
    second["bbox"] = [-5.0, 100.0, 30.0, 60.0]  # crosses the left and bottom borders of a 128 px image
    with pytest.warns(UserWarning, match=r"1 clipped_box, 1 degenerate_box") as caught:
        dataset = CocoDetection(_write(tmp_path, content), synthetic_root / "JPEGImages")
    assert len(caught) == 1
    assert f"image_id={first['image_id']}" in str(caught[0].message)
    record = next(r for r in dataset.records if r.image_id == second["image_id"])
    assert [0.0, 100.0, 25.0, 128.0] in record.boxes.tolist()
    for index in range(len(dataset)):
        boxes = dataset[index][1]["boxes"]
        assert (boxes[:, 2:] > boxes[:, :2]).all()


def test_clean_file_gives_no_warning(synthetic_root: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        dataset = CocoDetection(*_paths(synthetic_root, "val"))
    assert not dataset.report


def test_missing_image_is_an_error_naming_the_file_or_skipped_with_skip_bad(
        tmp_path: Path, content: dict, synthetic_root: Path) -> None:
    content["images"][0]["file_name"] = "does_not_exist.jpg"
    path = _write(tmp_path, content)
    dataset = CocoDetection(path, synthetic_root / "JPEGImages")
    with pytest.raises(ImageReadError, match=r"does_not_exist\.jpg"):
        dataset[0]
    with pytest.warns(UserWarning, match="1 bad_image"):
        skipping = CocoDetection(path, synthetic_root / "JPEGImages", skip_bad=True)
    assert len(skipping) == len(dataset) - 1
    assert "does_not_exist.jpg" in skipping.report.messages[0]


def test_an_image_not_the_declared_size_is_a_bad_sample_or_skipped_with_skip_bad(
        tmp_path: Path, content: dict, synthetic_root: Path) -> None:
    content["images"][0]["height"] = 64
    path = _write(tmp_path, content)
    dataset = CocoDetection(path, synthetic_root / "JPEGImages")
    with pytest.raises(ValueError, match=r"000001\.jpg: the image decodes as 128x128 \(WxH\) but its annotation "
                                         r"declares 128x64; expected the image the labels were made on"):
        dataset[0]
    summary = summarize_dataset(dataset)
    assert summary.problems.counts["bad_sample"] == 1 and summary.num_images == len(content["images"])
    skipping = CocoDetection(path, synthetic_root / "JPEGImages", skip_bad=True)
    assert len(skipping) == len(dataset) - 1 and skipping.report.counts["size_mismatch"] == 1


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c.update(annotations={}), "instances.json: 'annotations' must be a list of objects, got a dict"),
    (lambda c: c.update(images=None), "instances.json: 'images' must be a list of objects, got a NoneType"),
    (lambda c: c["images"][0].update(id=[1]), "instances.json images[0]: 'id' must be an integer (COCO ids are "
                                              "integers), got [1]"),
    (lambda c: c["images"][0].update(id="1"), "images[0]: 'id' must be an integer (COCO ids are integers), got '1'"),
    (lambda c: c["images"][0].update(height="128"), "images[0]: 'height' must be a positive integer (pixels), got '128'"),
    (lambda c: c["categories"][0].update(id="3"), "categories[0]: 'id' must be an integer"),
    (lambda c: c["annotations"][1].update(category_id=[3]), "'category_id' must be an integer"),
    (lambda c: c["annotations"].insert(1, 7), "instances.json annotation id=[1]: expected a JSON object with keys"),
    (lambda c: c["annotations"][1].update(id=c["annotations"][0]["id"]),
     "duplicate annotation id (annotations[0] and annotations[1]); annotation ids must be unique"),
])
def test_a_malformed_structure_is_one_sentence_naming_the_file_and_key(tmp_path: Path, content: dict, change,
                                                                       message: str) -> None:
    change(content)
    with pytest.raises(ValueError) as error:
        CocoDetection(_write(tmp_path, content), tmp_path)
    assert message in str(error.value)


def test_a_file_without_annotations_opens_as_test_images(tmp_path: Path, content: dict, synthetic_root: Path) -> None:
    del content["annotations"]
    dataset = CocoDetection(_write(tmp_path, content), synthetic_root / "JPEGImages")
    assert len(dataset) == len(content["images"]) and dataset.num_objects() == 0


def test_polygons_of_fewer_than_three_points_are_dropped_and_counted(tmp_path: Path, content: dict,
                                                                     synthetic_root: Path) -> None:
    first, second = content["annotations"][0], content["annotations"][1]
    first["segmentation"] = [[10, 10, 20, 20]]  # 2 points: pycocotools would read it as a box
    second["segmentation"] = [[10, 10], [10, 10, 30, 10, 20, 25]]  # one short ring beside a good one
    dataset = CocoDetection(_write(tmp_path, content), synthetic_root / "JPEGImages", with_masks=True)
    assert dataset.report.counts["short_polygon"] == 2
    assert f"annotation id={first['id']} (image_id={first['image_id']}" in dataset.report.messages[0]
    assert "its segmentation is dropped (the box is kept)" in dataset.report.messages[0]
    assert dataset.num_objects() == len(content["annotations"])  # no box is lost for a bad segmentation
    for annotation in (first, second):
        index = next(i for i, r in enumerate(dataset.records) if r.image_id == annotation["image_id"])
        assert dataset[index][1]["masks"].shape[0] == len(dataset.records[index].labels)


def test_an_rle_of_another_size_than_its_image_names_the_annotation(tmp_path: Path, content: dict) -> None:
    annotation = content["annotations"][2]
    annotation["segmentation"] = {"size": [256, 256], "counts": "abc"}
    with pytest.raises(ValueError, match=rf"annotation id={annotation['id']} \(image_id=.*RLE segmentation 'size' "
                                         r"is \[256, 256\] but the image is \[128, 128\] \[height, width\]"):
        CocoDetection(_write(tmp_path, content), tmp_path)


def test_a_bbox_that_is_not_four_numbers_names_the_file_annotation_and_image(tmp_path: Path, content: dict) -> None:
    annotation = content["annotations"][3]
    annotation["bbox"][2] = "ten"
    image = next(image for image in content["images"] if image["id"] == annotation["image_id"])
    with pytest.raises(ValueError) as error:
        CocoDetection(_write(tmp_path, content), tmp_path)
    message = str(error.value)
    assert f"instances.json annotation id={annotation['id']}" in message and image["file_name"] in message
    assert "bbox must be 4 numbers" in message and "'ten'" in message


@pytest.mark.parametrize(("segmentation", "message"), [
    ([[1.0, 2.0, 3.0]], "segmentation polygon 0 must be x, y pairs of numbers [x1, y1, x2, y2, ...], got 3 numbers"),
    ([[1, 2, 3, 4, 5, 6], [1, "a", 3, 4]], "segmentation polygon 1 must be x, y pairs of numbers"),
    ({"counts": "abc"}, "RLE segmentation must have 'size' [height, width] and 'counts', got keys ['counts']"),
    ("polygon", "segmentation must be a list of polygons or an RLE dict, got str"),
])
def test_a_malformed_segmentation_names_the_file_annotation_and_image(tmp_path: Path, content: dict,
                                                                      segmentation: object, message: str) -> None:
    annotation = content["annotations"][2]
    annotation["segmentation"] = segmentation
    image = next(image for image in content["images"] if image["id"] == annotation["image_id"])
    with pytest.raises(ValueError) as error:
        CocoDetection(_write(tmp_path, content), tmp_path)
    expected = f"instances.json annotation id={annotation['id']} (image_id={image['id']}, {image['file_name']}): "
    assert expected + message in str(error.value)


def test_roboflow_export_images_beside_the_json_and_placeholder_supercategory(tmp_path: Path, content: dict,
                                                                               synthetic_root: Path) -> None:
    split = tmp_path / "train"
    split.mkdir()
    for image in content["images"]:
        (split / image["file_name"]).symlink_to(synthetic_root / "JPEGImages" / image["file_name"])
    for category in content["categories"]:
        category["supercategory"] = "shapes"
    content["categories"].insert(0, {"id": 0, "name": "shapes", "supercategory": "none"})
    (split / "_annotations.coco.json").write_text(json.dumps(content))
    with pytest.warns(UserWarning, match="category id=0 'shapes' has no annotations"):
        dataset = open_dataset(split / "_annotations.coco.json")
    assert dataset.class_names[1:] == list(SHAPE_CLASSES) and dataset.category_ids == list(CATEGORY_IDS)
    assert dataset.records[0].path.parent == split and not dataset.report
    summary = format_summary(summarize_dataset(dataset), "export")
    assert "problems: none" in summary and "not used as a class" in summary


def test_an_rle_of_another_size_than_an_undeclared_image_names_it_when_loaded(tmp_path: Path, content: dict,
                                                                             synthetic_root: Path) -> None:
    annotation = content["annotations"][0]
    annotation["segmentation"] = {"size": [64, 64], "counts": [0, 4096]}
    image = next(image for image in content["images"] if image["id"] == annotation["image_id"])
    del image["height"], image["width"]
    dataset = CocoDetection(_write(tmp_path, content), synthetic_root / "JPEGImages", with_masks=True)
    index = next(i for i, record in enumerate(dataset.records) if record.image_id == image["id"])
    with pytest.raises(ValueError, match=rf"{image['file_name']}: an RLE segmentation in .*instances\.json is 64x64 "
                                         r"\(WxH\) but the image is 128x128"):
        dataset[index]
