"""COCO evaluation against pycocotools on adversarial generated cases, export, empty input and errors."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from structured.evaluation.coco import (
    STAT_NAMES,
    evaluate_coco,
    evaluate_predictions,
    predictions_to_coco_results,
    write_coco_results,
)
from tests.evaluation.coco_cases import (
    CATEGORY_IDS,
    pycocotools_class_ap,
    pycocotools_eval,
    random_bbox_case,
    random_segm_case,
)

TOLERANCE = 1e-12


def assert_same_as_pycocotools(dataset, results, iou_type) -> None:
    reference = pycocotools_eval(dataset, results, iou_type)
    ours = evaluate_coco(dataset, results, iou_type)
    np.testing.assert_allclose(ours.stats, reference.stats, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(ours.precision, reference.eval["precision"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(ours.recall, reference.eval["recall"], rtol=0, atol=TOLERANCE)
    reference_ap = pycocotools_class_ap(reference)
    assert ours.per_class_ap.keys() == reference_ap.keys()
    for category_id, ap in reference_ap.items():
        assert abs(ours.per_class_ap[category_id] - ap) <= TOLERANCE, category_id


@pytest.mark.parametrize("seed", range(12))
def test_bbox_equals_pycocotools(seed):
    dataset, results = random_bbox_case(seed)
    assert len(results) > 130  # one image/category holds more than maxDets=100 detections
    assert_same_as_pycocotools(dataset, results, "bbox")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), num_images=st.integers(1, 6))
def test_bbox_equals_pycocotools_hypothesis(seed, num_images):
    dataset, results = random_bbox_case(seed, num_images=num_images)
    if not results:  # pycocotools' loadRes cannot read an empty list; covered by test_empty_results
        return
    assert_same_as_pycocotools(dataset, results, "bbox")


def test_bbox_equals_pycocotools_on_a_larger_set():
    dataset, results = random_bbox_case(100, num_images=150)
    assert_same_as_pycocotools(dataset, results, "bbox")


@pytest.mark.parametrize("with_boxes", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_segm_equals_pycocotools(seed, with_boxes):
    dataset, results = random_segm_case(seed, with_boxes)
    assert_same_as_pycocotools(dataset, results, "segm")


@pytest.mark.parametrize("with_boxes", [False, True])
def test_segm_equals_pycocotools_on_thousands_of_results(with_boxes):
    """pycocotools' mask.area overflows on lists of more than 255 RLEs (numpy 2): ours measures any number."""
    dataset, results = random_segm_case(7, with_boxes, num_images=400)
    assert len(results) > 1000 and len({r["image_id"] for r in results}) > 255
    assert_same_as_pycocotools(dataset, results, "segm")


def test_identical_scores_and_duplicate_boxes_follow_list_order():
    box = [10.0, 10.0, 20.0, 20.0]
    dataset = {
        "images": [{"id": 1, "height": 50, "width": 50}, {"id": 2, "height": 50, "width": 50}],
        "annotations": [
            {"id": i + 1, "image_id": 1 + i % 2, "category_id": 1, "bbox": box, "area": 400.0, "iscrowd": 0}
            for i in range(4)
        ],
        "categories": [{"id": 1, "name": "a"}],
    }
    results = [
        {"image_id": 1 + i % 2, "category_id": 1, "bbox": [10.0 + i % 3, 10.0, 20.0, 20.0], "score": 0.5}
        for i in range(9)
    ]
    assert_same_as_pycocotools(dataset, results, "bbox")


def test_empty_results_give_zeros_and_minus_one():
    dataset, _ = random_bbox_case(0)
    ours = evaluate_coco(dataset, [], "bbox")
    # pycocotools cannot load an empty list; one detection of the category without ground truth
    # (CATEGORY_IDS[-1]) changes nothing for the categories that have ground truth.
    lone = [
        {
            "image_id": dataset["images"][0]["id"],
            "category_id": CATEGORY_IDS[-1],
            "bbox": [0, 0, 5, 5],
            "score": 1.0,
        }
    ]
    reference = pycocotools_eval(dataset, lone, "bbox")
    np.testing.assert_array_equal(ours.stats, reference.stats)
    np.testing.assert_array_equal(ours.precision, reference.eval["precision"])
    assert set(ours.stats.tolist()) <= {0.0, -1.0}
    assert ours.per_class_ap[CATEGORY_IDS[-1]] == -1.0


def test_results_json_file_loads_in_pycocotools_with_same_stats(tmp_path):
    torch.manual_seed(0)
    dataset, _ = random_segm_case(4, with_boxes=True)
    image_ids = [image["id"] for image in dataset["images"]]
    label_to_category_id = {label: category for label, category in enumerate(sorted(CATEGORY_IDS), start=1)}
    predictions = [
        _prediction_near_ground_truth(dataset, image, label_to_category_id) for image in dataset["images"]
    ]
    results = predictions_to_coco_results(predictions, image_ids, label_to_category_id)
    path = write_coco_results(results, tmp_path / "results.json")
    json.loads(path.read_text())
    for iou_type in ("bbox", "segm"):
        with contextlib.redirect_stdout(io.StringIO()):
            ground_truth = COCO()
            ground_truth.dataset = json.loads(json.dumps(dataset))
            ground_truth.createIndex()
            evaluator = COCOeval(ground_truth, ground_truth.loadRes(str(path)), iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        from_file = evaluate_coco(dataset, path, iou_type)
        from_predictions = evaluate_predictions(
            dataset, predictions, image_ids, label_to_category_id, iou_type
        )
        np.testing.assert_allclose(from_file.stats, evaluator.stats, rtol=0, atol=TOLERANCE)
        np.testing.assert_array_equal(from_predictions.stats, from_file.stats)
        assert from_file.stats[0] > 0


def _prediction_near_ground_truth(dataset, image, label_to_category_id):
    """Boxes and soft masks around the image's ground truth plus one spurious detection."""
    category_to_label = {category: label for label, category in label_to_category_id.items()}
    height, width = image["height"], image["width"]
    annotations = [a for a in dataset["annotations"] if a["image_id"] == image["id"]]
    boxes, labels, masks = [], [], []
    for annotation in [*annotations, {"bbox": [1.0, 1.0, 6.0, 5.0], "category_id": CATEGORY_IDS[0]}]:
        x, y, w, h = annotation["bbox"]
        boxes.append([x, y, x + w, y + h])
        labels.append(category_to_label[annotation["category_id"]])
        mask = torch.rand(height, width) * 0.5
        mask[int(y) : int(y + h), int(x) : int(x + w)] += 0.5
        masks.append(mask)
    count = len(boxes)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(count, 4),
        "scores": torch.rand(count),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": torch.stack(masks)[:, None] if masks else torch.zeros(0, 1, height, width),
    }


def test_result_dict_and_summary():
    dataset, results = random_bbox_case(1)
    result = evaluate_coco(dataset, results)
    as_dict = json.loads(json.dumps(result.as_dict()))
    assert list(as_dict["stats"]) == list(STAT_NAMES)
    assert as_dict["stats"]["AP"] == result.stats[0]
    assert {entry["category_id"] for entry in as_dict["per_class"].values()} == set(CATEGORY_IDS)
    assert len(result.summary().splitlines()) == 12
    recall, precision = result.pr_curve(0, 0.5)
    assert recall.shape == precision.shape == (101,)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d, r: r.append({**r[0], "image_id": 10**6}), "image_id 1000000"),
        (lambda d, r: r.append({**r[0], "category_id": 999}), "category_id 999"),
        (lambda d, r: r.append({**r[0], "score": float("nan")}), "NaN score"),
        (lambda d, r: r.append({**r[0], "bbox": [1, 2, 3]}), "'bbox' must be 4 numbers"),
        (lambda d, r: d["annotations"][0].pop("area"), "'area'"),
        (lambda d, r: d.pop("categories"), "'categories'"),
    ],
)
def test_bad_input_is_a_clear_error(mutate, message):
    dataset, results = random_bbox_case(2)
    mutate(dataset, results)
    with pytest.raises(ValueError, match=message):
        evaluate_coco(dataset, results, "bbox")


def test_bad_arguments_are_clear_errors(tmp_path):
    dataset, results = random_bbox_case(2)
    with pytest.raises(ValueError, match="iou_type"):
        evaluate_coco(dataset, results, "keypoints")
    with pytest.raises(ValueError, match="file not found"):
        evaluate_coco(tmp_path / "missing.json", results)
    prediction = {"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([7])}
    with pytest.raises(ValueError, match="label 7"):
        predictions_to_coco_results([prediction], [1], {1: 3})
    with pytest.raises(ValueError, match="segmentation"):
        evaluate_coco(dataset, results, "segm")


def test_segm_needs_image_sizes():
    dataset, results = random_segm_case(0, with_boxes=False)
    del dataset["images"][0]["height"]
    with pytest.raises(ValueError, match="'height' and 'width'"):
        evaluate_coco(dataset, results, "segm")
