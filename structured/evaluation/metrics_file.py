"""``metrics.json``, the file an evaluation (``tools/eval.py``) writes: which model was scored, and its metrics.

Contract: ``save_metrics(content, evaluated, out_dir)`` is the one writer, used by the detector and the
segmenter evaluation: ``{"model": EvaluatedModel fields or null, **content}``, where ``model`` records the
recipe's label (``recipe_label``), the registered model name, the recipe file, the checkpoint and the dataset.
``read_accuracy(path)`` reads one back as a ``RecordedAccuracy``: the recipe's label and the headline metrics
(detection: box ``AP``, ``AP50`` and, with masks, ``mask_AP``; semantic: ``mIoU``), in [0, 1].

A recipe's label is a registered recipe's name, or a recipe file's stem (``configs/demo/shapes_unet.yaml`` ->
``shapes_unet``; ``configs/faster_rcnn/faster_rcnn_r50_fpn.yaml`` -> the registered name it spells out), or the
run's folder name for a run folder's ``config.yaml`` (``runs/NAME/config.yaml`` -> ``NAME``). The model table
(``structured.evaluation.profiling``) puts a metrics file in the row with the same label.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from structured.io import load_json, save_json

METRICS_FILE = "metrics.json"
RUN_CONFIG_FILE = "config.yaml"


def recipe_label(source: str | os.PathLike[str]) -> str:
    """The label of a recipe given by registered name or by file (module docstring)."""
    path = Path(source)
    if path.suffix not in (".yaml", ".yml"):
        return str(source)
    return path.parent.name if path.name == RUN_CONFIG_FILE and path.parent.name else path.stem


@dataclass(frozen=True)
class EvaluatedModel:
    """What an evaluation scored: the recipe's label and registered model, recipe file, checkpoint, dataset."""

    recipe: str
    model: str
    config: str
    checkpoint: str
    dataset: str


@dataclass(frozen=True)
class RecordedAccuracy:
    """The headline metrics of one ``metrics.json`` (``name -> value`` in [0, 1]) and the recipe they belong to."""

    recipe: str
    metrics: dict[str, float]
    path: Path


def save_metrics(content: dict[str, Any], evaluated: EvaluatedModel | None, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``metrics.json`` in ``out_dir``: the evaluated model (``null`` when not known) and ``content``."""
    document = {"model": None if evaluated is None else asdict(evaluated), **content}
    return save_json(document, Path(out_dir) / METRICS_FILE, indent=2)


def read_accuracy(path: str | os.PathLike[str]) -> RecordedAccuracy:
    """The recipe label and headline metrics of a ``metrics.json``; ``ValueError`` naming the file when it holds
    no evaluated model or no detection / semantic metrics."""
    path = Path(path)
    document = load_json(path)
    model = document.get("model") if isinstance(document, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("recipe"), str):
        raise ValueError(f"{path}: no 'model' entry naming the evaluated recipe; expected a metrics.json written "
                         "by tools/eval.py (re-run it to record the recipe)")
    return RecordedAccuracy(model["recipe"], headline_metrics(document.get("metrics"), path), path)


def headline_metrics(metrics: Any, path: Path) -> dict[str, float]:
    """``AP``, ``AP50`` (and ``mask_AP``) of detection metrics, or ``mIoU`` of semantic ones, from ``metrics``."""
    if isinstance(metrics, dict) and isinstance(metrics.get("bbox"), dict):
        stats = metrics["bbox"].get("stats", {})
        headline = {"AP": stats.get("AP"), "AP50": stats.get("AP50")}
        if isinstance(metrics.get("segm"), dict):
            headline["mask_AP"] = metrics["segm"].get("stats", {}).get("AP")
    elif isinstance(metrics, dict) and "mIoU" in metrics:
        headline = {"mIoU": metrics["mIoU"]}
    else:
        raise ValueError(f"{path}: 'metrics' holds neither detection stats ('bbox') nor semantic ones ('mIoU')")
    missing = [name for name, value in headline.items() if not isinstance(value, int | float) or math.isnan(value)]
    if missing:
        raise ValueError(f"{path}: metrics {missing} are missing or not numbers")
    undefined = [name for name, value in headline.items() if value < 0]
    if undefined:
        raise ValueError(f"{path}: metrics {undefined} are -1, undefined: the evaluation data had no ground-truth "
                         "objects; evaluate on labelled data")
    return {name: float(value) for name, value in headline.items()}
