"""PNG figures of evaluation results: precision-recall curves per class, confusion matrix, speed vs accuracy.

Contract: each function draws with matplotlib's object API on its own ``Figure`` (:func:`new_figure`: an
Agg canvas, no pyplot, no global backend change, so a user's backend stays as it was), writes the PNG
atomically (:func:`save_figure`: temporary file + ``os.replace``) and returns its path. matplotlib is
imported inside :func:`new_figure`, when something is drawn, not when this module is imported; other
plotting code (the run folder's curves in ``structured.engine.records``) uses the same two functions.
Curves are ``name -> (recall, precision)`` arrays: :func:`coco_pr_curves` builds them from a COCO result
(101 sampled recall points), ``VocEvalResult.curves`` holds them per ranked detection.
:class:`ValidationCurves` names which validation metrics a run folder plots, and in which file.
"""

from __future__ import annotations

import math
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
class ValidationCurves:
    """The validation metrics a run folder plots over the epochs (``names``), its file and y-axis label."""

    names: tuple[str, ...]
    file_name: str
    label: str


MAP_CURVES = ValidationCurves(("AP", "AP50", "AP75"), "map.png", "mAP")
MIOU_CURVES = ValidationCurves(("mIoU", "fg_IoU", "Dice"), "miou.png", "mIoU")


@dataclass(frozen=True)
class SpeedAccuracyPoint:
    """One model on the speed-accuracy plane: its time per image and its accuracy under ``metric``."""

    name: str
    latency_ms: float
    accuracy: float  # e.g. COCO AP or mIoU, in [0, 1]
    metric: str = "AP"


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


def speed_accuracy_figure(
    points: Sequence[SpeedAccuracyPoint],
    time_label: str = "time per image (ms, log scale)",
    title: str = "Speed vs accuracy",
) -> Figure:
    """Accuracy against time per image on a log axis, one labelled point per model, as in Huang et al. 2017's
    speed/accuracy figure; one panel per metric (detectors' AP beside segmenters' mIoU), in order of appearance."""
    from matplotlib.ticker import FuncFormatter

    if not points:
        raise ValueError("no models to plot")
    metrics = list(dict.fromkeys(point.metric for point in points))
    figure = new_figure(6.5 * len(metrics), 5)
    for index, metric in enumerate(metrics, start=1):
        axes = figure.add_subplot(1, len(metrics), index)
        shown = [point for point in points if point.metric == metric]
        for point in shown:
            axes.scatter(point.latency_ms, point.accuracy, s=40)
            axes.annotate(point.name, (point.latency_ms, point.accuracy), textcoords="offset points",
                          xytext=(5, 4), fontsize=8)
        times = [point.latency_ms for point in shown]
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(FuncFormatter(_time_tick))
        axes.xaxis.set_minor_formatter(FuncFormatter(_time_tick))
        axes.set_xlim(min(times) / 2, max(times) * 3)  # at least a factor 6 of time, room for the labels
        axes.set_ylim(0, min(1.0, 1.15 * max(point.accuracy for point in shown)) or 1.0)
        axes.set(xlabel=time_label, ylabel=metric, title=title if len(metrics) == 1 else f"{title}: {metric}")
        axes.grid(alpha=0.3, which="both")
    return figure


def _time_tick(value: float, _position: int) -> str:
    """A log-axis tick as a plain number, written only at 1, 2 and 5 times a power of ten."""
    leading = round(value / 10 ** math.floor(math.log10(value)))
    return f"{value:g}" if leading in (1, 2, 5) else ""


def plot_speed_accuracy(
    points: Sequence[SpeedAccuracyPoint],
    path: str | Path,
    time_label: str = "time per image (ms, log scale)",
    title: str = "Speed vs accuracy",
) -> Path:
    """Write :func:`speed_accuracy_figure` of ``points`` as a PNG at ``path``."""
    return save_figure(speed_accuracy_figure(points, time_label, title), path)


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str | Path,
                          title: str = "Confusion matrix (rows: truth, normalised)") -> Path:
    """A ``[C, C]`` pixel confusion matrix (rows: true class, columns: predicted) as a heat map, each row
    divided by its total (a class without pixels stays 0); the fractions are written in the cells up to 20
    classes."""
    counts = np.asarray(matrix, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(class_names):
        raise ValueError(f"confusion matrix must be [C, C] for {len(class_names)} classes, got {list(counts.shape)}")
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.45 * len(class_names)
    figure = new_figure(size + 1, size)
    axes = figure.add_subplot()
    image = axes.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046)
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, labels=class_names, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(ticks, labels=class_names, fontsize=8)
    axes.set(xlabel="predicted", ylabel="true", title=title)
    if len(class_names) <= 20:
        for row, column in np.ndindex(*fractions.shape):
            value = fractions[row, column]
            axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                      color="white" if value > 0.5 else "black")
    return save_figure(figure, path)
