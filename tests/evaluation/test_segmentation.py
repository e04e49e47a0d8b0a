"""Confusion-matrix metrics against a hand-computed matrix; ignore index, logits, batches, errors."""

from __future__ import annotations

import math

import pytest
import torch

from structured.evaluation.segmentation import ConfusionMatrix

# 3 classes, one 3x4 image; 255 = ignored.
TARGET = torch.tensor([[0, 0, 1, 1], [0, 2, 1, 255], [2, 2, 2, 255]])
PREDICTION = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 0], [2, 1, 2, 2]])
# rows truth, columns prediction (ignored pixels dropped):
#   truth 0: (0,0) 0, (0,1) 1, (1,0) 0      -> [2, 1, 0]
#   truth 1: (0,2) 1, (0,3) 1, (1,2) 0      -> [1, 2, 0]
#   truth 2: (1,1) 2, (2,0) 2, (2,1) 1, (2,2) 2 -> [0, 1, 3]
EXPECTED = torch.tensor([[2, 1, 0], [1, 2, 0], [0, 1, 3]])


def test_matrix_and_metrics_hand_computed():
    metrics = ConfusionMatrix(3)
    metrics.update(PREDICTION[None], TARGET[None])
    assert torch.equal(metrics.matrix, EXPECTED)
    result = metrics.compute()
    # IoU = TP / (TP + FP + FN): class 0: 2/(2+1+1); class 1: 2/(2+2+1); class 2: 3/(3+0+1)
    expected_iou = [0.5, 0.4, 0.75]
    assert result.iou.tolist() == pytest.approx(expected_iou)
    assert result.mean_iou == pytest.approx(sum(expected_iou) / 3)
    # Dice = 2TP / (2TP + FP + FN)
    assert result.dice.tolist() == pytest.approx([4 / 6, 4 / 7, 6 / 7])
    assert result.pixel_accuracy == pytest.approx(7 / 10)
    assert result.mean_class_accuracy == pytest.approx((2 / 3 + 2 / 3 + 3 / 4) / 3)


def test_scores_batches_and_reset():
    logits = torch.nn.functional.one_hot(PREDICTION, 3).permute(2, 0, 1).float()[None]  # [1, 3, H, W]
    metrics = ConfusionMatrix(3)
    metrics.update(logits, TARGET[None])
    metrics.update(torch.cat([PREDICTION[None]] * 2), torch.cat([TARGET[None]] * 2))
    assert torch.equal(metrics.matrix, 3 * EXPECTED)
    metrics.reset()
    assert metrics.matrix.sum() == 0


def test_absent_class_is_nan_and_left_out_of_the_mean():
    metrics = ConfusionMatrix(4)
    metrics.update(PREDICTION, TARGET)
    result = metrics.compute()
    assert math.isnan(result.iou[3])
    assert result.mean_iou == pytest.approx((0.5 + 0.4 + 0.75) / 3)
    assert result.as_dict()["per_class"]["3"] == {"IoU": None, "Dice": None}


def test_out_of_range_labels_are_clear_errors():
    metrics = ConfusionMatrix(2)
    with pytest.raises(ValueError, match="target holds class 2"):
        metrics.update(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 2], [1, 255]]))
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.update(torch.zeros(3, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))


@pytest.mark.gpu
def test_accumulates_on_cuda():
    metrics = ConfusionMatrix(3, device="cuda")
    metrics.update(PREDICTION[None].cuda(), TARGET[None].cuda())
    assert metrics.matrix.device.type == "cuda"
    assert torch.equal(metrics.matrix.cpu(), EXPECTED)
