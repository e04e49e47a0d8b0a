"""PNG figures of evaluation results: precision-recall curves per class, speed vs accuracy.

Contract: each function draws with matplotlib's object API on its own ``Figure`` (:func:`new_figure`: an
Agg canvas, no pyplot, no global backend change, so a user's backend stays as it was), writes the PNG
atomically (:func:`save_figure`: temporary file + ``os.replace``) and returns its path. matplotlib is
imported inside :func:`new_figure`, when something is drawn, not when this module is imported; other
plotting code (the run folder's curves in ``structured.engine.records``) uses the same two functions.
Curves are ``name -> (recall, precision)`` arrays: :func:`coco_pr_curves` builds them from a COCO result
(101 sampled recall points), ``VocEvalResult.curves`` holds them per ranked detection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from structured.evaluation.coco import CocoEvalResult
from structured.io import atomic_output

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    """An empty ``Figure`` of ``width`` x ``height`` inches on its own Agg canvas (matplotlib imported here)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``figure`` as a PNG to ``path`` atomically, cropped to its content; returns the path."""
    with atomic_output(path) as temporary_path:
        figure.savefig(temporary_path, format="png", dpi=dpi, bbox_inches="tight")
    return Path(path)


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
    figure = new_figure(7, 5.5)
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
    return save_figure(figure, path)


def plot_speed_accuracy(
    points: Sequence[SpeedAccuracyPoint],
    path: str | Path,
    accuracy_name: str = "AP",
    title: str = "Speed vs accuracy",
) -> Path:
    """Scatter of accuracy against FPS (log scale), one labelled point per model."""
    if not points:
        raise ValueError("no models to plot")
    figure = new_figure(7, 5)
    axes = figure.add_subplot()
    for point in points:
        axes.scatter(point.fps, point.accuracy, s=40)
        axes.annotate(
            point.name, (point.fps, point.accuracy), textcoords="offset points", xytext=(5, 4), fontsize=8
        )
    axes.set_xscale("log")
    axes.set(xlabel="images per second (log scale)", ylabel=accuracy_name, title=title)
    axes.grid(alpha=0.3, which="both")
    return save_figure(figure, path)
