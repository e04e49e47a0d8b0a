"""The run folder's records: ``log.jsonl``, ``metrics.csv`` and the loss and validation curves.

``log.jsonl`` holds one JSON object per line with a ``kind``:

- ``"train"``: every ``log_every`` optimizer steps: ``epoch``, ``iteration``, ``lr``, ``loss`` (the total,
  averaged over the steps since the previous line and over ranks), each loss term, ``it_per_s``;
- ``"epoch"``: at the end of each epoch: ``epoch``, ``iteration``, ``lr``, mean ``loss`` and terms of the
  epoch, and, when the epoch was evaluated, the task's metrics (detection: the 12 COCO stats ``AP``,
  ``AP50``, ...; semantic: ``mIoU``, ``fg_IoU``, ``Dice``, ..., ``IoU_<class>``); a run that
  ``train.time_limit`` ends inside an epoch adds one with the fraction of epochs done (``epoch`` 4.25);
- ``"event"``: ``message`` (start, resume, stop, time limit reached).

Each line is appended with one ``write`` call; ``metrics.csv`` (one row per ``epoch`` line),
``loss.png`` and the validation curves are rewritten atomically from the log after each epoch. Which
metrics are plotted, and in which file, is the task's ``ValidationCurves`` (``structured.evaluation.plots``):
``map.png`` (AP, AP50, AP75) for detectors, ``miou.png`` (mIoU, fg_IoU, Dice) for semantic models. The curves are drawn
on their own ``Figure`` (``structured.evaluation.plots.new_figure``): matplotlib is imported only then,
and the user's backend is left as it is. On resume the log is cut back to the checkpoint's iteration, so
it never holds steps that are trained again. Only rank 0 creates a ``RunRecords``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from structured.evaluation.plots import MAP_CURVES, ValidationCurves, new_figure, save_figure
from structured.io import write_text

LOG_NAME = "log.jsonl"
METRICS_NAME = "metrics.csv"
LOSS_PLOT_NAME = "loss.png"


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The entries of a ``log.jsonl`` file (a final line cut short by a kill is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


class RunRecords:
    """Appends log entries and keeps ``metrics.csv`` and the curve plots of one run folder up to date;
    ``curves`` names the validation metrics plotted."""

    def __init__(self, run_dir: str | os.PathLike[str], curves: ValidationCurves = MAP_CURVES) -> None:
        self.run_dir = Path(run_dir)
        self.curves = curves
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.run_dir / LOG_NAME
        self.entries: list[dict[str, Any]] = []

    def start(self, resume_iteration: int | None) -> None:
        """Begin a fresh log, or keep the existing one up to ``resume_iteration`` when resuming."""
        if resume_iteration is None:
            self.entries = []
        else:
            self.entries = [entry for entry in read_log(self.log_path)
                            if entry.get("iteration", 0) <= resume_iteration]
        write_text("".join(json.dumps(entry) + "\n" for entry in self.entries), self.log_path)

    def log(self, entry: Mapping[str, Any]) -> None:
        """Append one entry to ``log.jsonl`` (one write call) and keep it for the summaries."""
        entry = dict(entry)
        self.entries.append(entry)
        line = (json.dumps(entry) + "\n").encode("utf-8")
        descriptor = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, line)
        finally:
            os.close(descriptor)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """Logged entries of one ``kind``."""
        return [entry for entry in self.entries if entry.get("kind") == kind]

    def write_summaries(self) -> None:
        """Rewrite ``metrics.csv``, ``loss.png`` and the validation curves from the log."""
        epochs = self.of_kind("epoch")
        self._write_metrics_csv(epochs)
        self._plot_loss(self.of_kind("train"))
        self._plot_validation(epochs)

    def _write_metrics_csv(self, epochs: list[dict[str, Any]]) -> None:
        columns: list[str] = []
        for entry in epochs:
            columns += [key for key in entry if key != "kind" and key not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        for entry in epochs:
            writer.writerow({key: value for key, value in entry.items() if key != "kind"})
        write_text(buffer.getvalue(), self.run_dir / METRICS_NAME)

    def _plot_loss(self, steps: list[dict[str, Any]]) -> None:
        figure = new_figure(7, 4)
        axes = figure.add_subplot()
        if steps:
            iterations = [entry["iteration"] for entry in steps]
            for key in [key for key in steps[-1] if key == "loss" or key.startswith("loss_")]:
                axes.plot(iterations, [entry.get(key, float("nan")) for entry in steps], label=key,
                          linewidth=2 if key == "loss" else 1)
            axes.legend(fontsize=8)
        axes.set(xlabel="iteration", ylabel="training loss", title="Training loss")
        axes.grid(alpha=0.3)
        save_figure(figure, self.run_dir / LOSS_PLOT_NAME, dpi=100)

    def _plot_validation(self, epochs: list[dict[str, Any]]) -> None:
        figure = new_figure(7, 4)
        axes = figure.add_subplot()
        names = self.curves.names
        evaluated = [entry for entry in epochs if names[0] in entry]
        for key in names:
            if evaluated:
                axes.plot([entry["epoch"] for entry in evaluated],
                          [entry.get(key, float("nan")) for entry in evaluated], marker="o", label=key)
        if evaluated:
            axes.legend(fontsize=8)
        axes.set(xlabel="epoch", ylabel=self.curves.label, title=f"Validation {self.curves.label}", ylim=(0, 1))
        axes.grid(alpha=0.3)
        save_figure(figure, self.run_dir / self.curves.file_name, dpi=100)
