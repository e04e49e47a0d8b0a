"""Plots are written as non-empty PNG files."""

from __future__ import annotations

import pytest

from structured.evaluation.coco import evaluate_coco
from structured.evaluation.plots import (
    SpeedAccuracyPoint,
    coco_pr_curves,
    plot_pr_curves,
    plot_speed_accuracy,
    speed_accuracy_figure,
)
from tests.evaluation.coco_cases import random_bbox_case

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_pr_curves_png(tmp_path):
    result = evaluate_coco(*random_bbox_case(0))
    curves = coco_pr_curves(result)
    assert len(curves) == 4  # the category without ground truth is left out
    ap50 = dict(zip(result.category_names, result.class_ap(0.5).values(), strict=True))
    path = plot_pr_curves(curves, tmp_path / "out" / "pr.png", average_precision=ap50)
    assert path.read_bytes().startswith(PNG_SIGNATURE) and path.stat().st_size > 1000
    assert [p.name for p in path.parent.iterdir()] == ["pr.png"]  # no temporary file left


def test_speed_accuracy_png(tmp_path):
    points = [SpeedAccuracyPoint("ssd", 22.0, 0.25), SpeedAccuracyPoint("faster-rcnn", 125.0, 0.37)]
    path = plot_speed_accuracy(points, tmp_path / "speed.png")
    assert path.read_bytes().startswith(PNG_SIGNATURE) and path.stat().st_size > 1000


def test_speed_accuracy_has_a_log_time_panel_per_metric_and_labelled_points():
    points = [SpeedAccuracyPoint("ssd", 22.0, 0.25), SpeedAccuracyPoint("unet", 9.0, 0.6, "mIoU"),
              SpeedAccuracyPoint("faster-rcnn", 125.0, 0.37)]
    figure = speed_accuracy_figure(points, time_label="CPU ms")
    detection, semantic = figure.axes
    assert [axes.get_ylabel() for axes in figure.axes] == ["AP", "mIoU"]
    assert detection.get_xscale() == "log" and detection.get_xlabel() == "CPU ms"
    assert [text.get_text() for text in detection.texts] == ["ssd", "faster-rcnn"]
    assert [text.get_text() for text in semantic.texts] == ["unet"]
    assert [tuple(collection.get_offsets()[0]) for collection in detection.collections] == [(22.0, 0.25), (125.0, 0.37)]


def test_empty_inputs_are_errors(tmp_path):
    with pytest.raises(ValueError, match="no precision-recall"):
        plot_pr_curves({}, tmp_path / "pr.png")
    with pytest.raises(ValueError, match="no models"):
        plot_speed_accuracy([], tmp_path / "speed.png")
