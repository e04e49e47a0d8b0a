"""PNG figures of evaluation results: precision-recall curves per class, speed vs accuracy.

Contract: each function draws with matplotlib's object API on its own ``Figure`` (Agg canvas, no pyplot,
no global backend change), writes the PNG atomically (temporary file + ``os.replace``) and returns its path.
Curves are ``name -> (recall, precision)`` arrays: :func:`coco_pr_curves` builds them from a COCO result
(101 sampled recall points), ``VocEvalResult.curves`` holds them per ranked detection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from structured.evaluation.coco import CocoEvalResult
from structured.io import atomic_output


@dataclass(frozen=True)
class SpeedAccuracyPoint:
    """One model on the speed-accuracy plane."""

    name: str
    fps: float
    accuracy: float  # e.g. COCO AP or VOC mAP, in [0, 1]


def coco_pr_curves(
    result: CocoEvalResult, iou_threshold: float = 0.5
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``name -> (recall, precision)`` at one IoU threshold (area all, 100 dets), classes with ground truth."""
    curves = {}
    for index, name in enumerate(result.category_names):
        recall, precision = result.pr_curve(index, iou_threshold)
        if (precision > -1).all():
            curves[name] = (recall, precision)
    return curves


def plot_pr_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    title: str = "Precision-recall",
    average_precision: Mapping[str, float] | None = None,
) -> Path:
    """One precision-recall line per class (``name -> (recall, precision)``), with its AP in the legend if given."""
    if not curves:
        raise ValueError("no precision-recall curves to plot (no class has ground truth)")
    figure = Figure(figsize=(7, 5.5))
    axes = figure.add_subplot()
    for name, (recall, precision) in curves.items():
        label = (
            f"{name} (AP {average_precision[name]:.3f})"
            if average_precision and name in average_precision
            else name
        )
        axes.plot(recall, precision, linewidth=1.2, label=label)
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="lower left", ncols=1 + len(curves) // 15)
    return _save(figure, path)


def plot_speed_accuracy(
    points: Sequence[SpeedAccuracyPoint],
    path: str | Path,
    accuracy_name: str = "AP",
    title: str = "Speed vs accuracy",
) -> Path:
    """Scatter of accuracy against FPS (log scale), one labelled point per model."""
    if not points:
        raise ValueError("no models to plot")
    figure = Figure(figsize=(7, 5))
    axes = figure.add_subplot()
    for point in points:
        axes.scatter(point.fps, point.accuracy, s=40)
        axes.annotate(
            point.name, (point.fps, point.accuracy), textcoords="offset points", xytext=(5, 4), fontsize=8
        )
    axes.set_xscale("log")
    axes.set(xlabel="images per second (log scale)", ylabel=accuracy_name, title=title)
    axes.grid(alpha=0.3, which="both")
    return _save(figure, path)


def _save(figure: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(figure)
    with atomic_output(path) as temp_path:
        figure.savefig(temp_path, format="png", dpi=120, bbox_inches="tight")
    return Path(path)
