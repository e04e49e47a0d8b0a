"""Evaluation: COCO mAP (pycocotools semantics, vectorised), VOC mAP, segmentation metrics, speed, plots.

- ``coco``: :func:`evaluate_coco` (bbox / segm, the 12 stats, per-class AP), results JSON export;
- ``voc``: :func:`evaluate_voc` with the VOC2007 11-point and VOC2010+ all-point AP;
- ``segmentation``: :class:`ConfusionMatrix` for per-class IoU, mIoU, Dice, pixel accuracy;
- ``speed``: :func:`measure_speed` for latency / FPS / peak memory, stage by stage;
- ``plots``: precision-recall curves and the speed-vs-accuracy scatter as PNG.
"""

from structured.evaluation.coco import (
    STAT_NAMES,
    CocoEvalResult,
    evaluate_coco,
    evaluate_predictions,
    load_json,
    predictions_to_coco_results,
    save_json,
    write_coco_results,
)
from structured.evaluation.plots import (
    SpeedAccuracyPoint,
    coco_pr_curves,
    plot_pr_curves,
    plot_speed_accuracy,
)
from structured.evaluation.segmentation import ConfusionMatrix, SegmentationMetrics
from structured.evaluation.speed import SpeedResult, measure_speed
from structured.evaluation.voc import VocEvalResult, evaluate_voc, voc_ap

__all__ = [
    "STAT_NAMES",
    "CocoEvalResult",
    "ConfusionMatrix",
    "SegmentationMetrics",
    "SpeedAccuracyPoint",
    "SpeedResult",
    "VocEvalResult",
    "coco_pr_curves",
    "evaluate_coco",
    "evaluate_predictions",
    "evaluate_voc",
    "load_json",
    "measure_speed",
    "plot_pr_curves",
    "plot_speed_accuracy",
    "predictions_to_coco_results",
    "save_json",
    "voc_ap",
    "write_coco_results",
]
