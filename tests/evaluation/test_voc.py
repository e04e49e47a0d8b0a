"""VOC AP against hand-computed cases: both AP definitions, difficult objects, duplicates, IoU options."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from structured.evaluation.voc import evaluate_voc, voc_ap


def image(gt_boxes, gt_labels, det_boxes, det_scores, det_labels, difficult=None):
    target = {
        "boxes": torch.tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(gt_labels),
    }
    if difficult is not None:
        target["difficult"] = torch.tensor(difficult)
    prediction = {
        "boxes": torch.tensor(det_boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(det_scores, dtype=torch.float32),
        "labels": torch.tensor(det_labels, dtype=torch.int64),
    }
    return prediction, target


def hand_case():
    """Class 1: ranked TP, duplicate FP, difficult match, TP, miss FP, TP over 3 positives (+1 difficult).

    recall    = 1/3, 1/3, 1/3, 2/3, 2/3, 1
    precision = 1,   1/2, 1/2, 2/3, 1/2, 3/5
    all-point AP = (1 + 2/3 + 3/5) / 3 = 34/45; 11-point AP = (4 * 1 + 3 * 2/3 + 4 * 3/5) / 11 = 8.4/11.
    Class 2 has one detection and no ground truth (AP nan). Class 3: one perfect detection (AP 1).
    """
    g1, g2, g3, g4 = [0, 0, 10, 10], [50, 50, 70, 70], [0, 0, 20, 20], [40, 40, 60, 60]
    first = image(
        [g1, g2, [5, 5, 25, 25]],
        [1, 1, 3],
        [g1, [0, 0, 10, 9.5], g2, [80, 80, 90, 90], [5, 5, 25, 25]],
        [0.9, 0.8, 0.7, 0.1, 0.3],
        [1, 1, 1, 2, 3],
        difficult=[False, True, False],
    )
    second = image([g3, g4], [1, 1], [g3, [100, 100, 120, 120], g4], [0.6, 0.5, 0.4], [1, 1, 1])
    return [first[0], second[0]], [first[1], second[1]]


def test_all_point_ap_hand_computed():
    predictions, targets = hand_case()
    result = evaluate_voc(predictions, targets, num_classes=3)
    assert result.num_positives == {1: 3, 2: 0, 3: 1}
    assert result.per_class_ap[1] == pytest.approx(34 / 45, abs=1e-12)
    assert math.isnan(result.per_class_ap[2])
    assert result.per_class_ap[3] == pytest.approx(1.0)
    assert result.mean_ap == pytest.approx((34 / 45 + 1) / 2, abs=1e-12)
    recall, precision = result.curves[1]
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(precision, [1, 1 / 2, 1 / 2, 2 / 3, 1 / 2, 3 / 5])


def test_eleven_point_ap_hand_computed():
    predictions, targets = hand_case()
    result = evaluate_voc(predictions, targets, num_classes=3, use_07_metric=True)
    assert result.per_class_ap[1] == pytest.approx(8.4 / 11, abs=1e-12)
    assert result.as_dict(["bg", "a", "b", "c"])["per_class_ap"] == {
        "a": pytest.approx(8.4 / 11),
        "b": None,
        "c": 1.0,
    }


def test_difficult_ground_truth_is_neither_positive_nor_false_positive():
    box = [0, 0, 10, 10]
    with_difficult = image(
        [box, [30, 30, 40, 40]], [1, 1], [box, [30, 30, 40, 40]], [0.5, 0.9], [1, 1], [False, True]
    )
    result = evaluate_voc([with_difficult[0]], [with_difficult[1]], num_classes=1)
    assert result.num_positives[1] == 1
    assert result.per_class_ap[1] == 1.0  # the top-scored detection on the difficult box is ignored
    as_regular = image(
        [box, [30, 30, 40, 40]], [1, 1], [box, [30, 30, 40, 40]], [0.5, 0.9], [1, 1], [False, False]
    )
    assert evaluate_voc([as_regular[0]], [as_regular[1]], num_classes=1).num_positives[1] == 2


def test_duplicate_detection_is_a_false_positive_even_if_another_box_overlaps():
    # the second detection's best overlap is the already detected box -> duplicate, although it overlaps
    # the other ground truth by more than 0.5 too (VOC takes the single best overlap)
    gt = [[0, 0, 10, 10], [1, 0, 11, 10]]
    pred, target = image(gt, [1, 1], [[0, 0, 10, 10], [0.2, 0, 10.2, 10]], [0.9, 0.8], [1, 1])
    result = evaluate_voc([pred], [target], num_classes=1)
    np.testing.assert_allclose(result.curves[1][1], [1.0, 0.5])
    assert result.per_class_ap[1] == pytest.approx(0.5)


def test_recall_of_exactly_three_tenths_counts_for_the_point_three_threshold():
    recall = np.array([1, 2, 3]) / 10
    assert voc_ap(recall, np.ones(3), use_07_metric=True) == pytest.approx(4 / 11)
    assert voc_ap(recall, np.ones(3)) == pytest.approx(0.3)


def test_iou_threshold_is_inclusive_and_configurable():
    pred, target = image([[0, 0, 10, 10]], [1], [[0, 0, 10, 5]], [0.9], [1])  # IoU exactly 0.5
    assert evaluate_voc([pred], [target], 1).per_class_ap[1] == 1.0
    assert evaluate_voc([pred], [target], 1, iou_threshold=0.51).per_class_ap[1] == 0.0


def test_pixel_plus_one_uses_inclusive_pixel_widths():
    # inclusive pixels: widths 10, overlap 5 -> IoU 1/3; continuous: widths 9, overlap 4 -> 2/7
    pred, target = image([[0, 0, 9, 9]], [1], [[5, 0, 14, 9]], [0.9], [1])
    assert evaluate_voc([pred], [target], 1, iou_threshold=0.3, pixel_plus_one=True).per_class_ap[1] == 1.0
    assert evaluate_voc([pred], [target], 1, iou_threshold=0.3).per_class_ap[1] == 0.0


def test_bad_input_is_a_clear_error():
    pred, target = image([[0, 0, 9, 9]], [1], [[5, 0, 14, 9]], [0.9], [1])
    with pytest.raises(ValueError, match="one per image"):
        evaluate_voc([pred], [], 1)
    with pytest.raises(ValueError, match="iou_threshold"):
        evaluate_voc([pred], [target], 1, iou_threshold=0)
    with pytest.raises(ValueError, match="'difficult'"):
        evaluate_voc([pred], [{**target, "difficult": torch.tensor([True, False])}], 1)
