"""Checks on annotations and images; every problem names the file or image id and what is wrong.

Documented outcomes, shared by every loader:

- zero-area, inverted (``x2 < x1`` / ``y2 < y1``) or non-finite boxes: dropped, counted as a warning;
- boxes reaching outside the image: clipped to it, counted;
- an unknown category id or class name: ``ValueError`` listing the known ones;
- a missing or undecodable image, or one whose decoded size is not the size its annotation declares (a
  resized file, or an EXIF rotation the labels were not made with): ``ValueError`` naming the file when
  the sample is loaded, or skipped and reported when the dataset is built with ``skip_bad=True``
  (``DetectionDataset.drop_unreadable``);
- malformed JSON or XML: ``ValueError`` with the file and the line / column;
- an image without objects: valid (a negative), not a problem.

Counted problems are collected in a ``ValidationReport``; loaders emit one ``warnings.warn`` summary per
dataset rather than one warning per box. ``notes`` record how a loader read an export that is fine but
unusual (a COCO placeholder supercategory left out of the classes); they are shown, not counted as
problems.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

MAX_LISTED_PROBLEMS = 20


@dataclass
class ValidationReport:
    """Problems found in a dataset: a count per kind and one message per occurrence; plus notes."""

    counts: Counter = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, kind: str, message: str) -> None:
        """Record one problem of ``kind`` (for example ``"clipped_box"``) described by ``message``."""
        self.counts[kind] += 1
        self.messages.append(message)

    def note(self, message: str) -> None:
        """Record how the data was read where it is worth knowing (not a problem)."""
        self.notes.append(message)

    def __bool__(self) -> bool:
        return bool(self.messages)

    def summary(self, source: str) -> str:
        """A short text: counts per kind, then the first ``MAX_LISTED_PROBLEMS`` messages, then the notes."""
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(self.counts.items())) or "no problems"
        listed = self.messages[:MAX_LISTED_PROBLEMS]
        more = len(self.messages) - len(listed)
        lines = [f"{source}: {kinds}", *(f"  {message}" for message in listed)]
        if more > 0:
            lines.append(f"  ... and {more} more")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def warn(self, source: str) -> None:
        """Emit the summary as one ``UserWarning`` when anything was found or noted."""
        if self or self.notes:
            warnings.warn(self.summary(source), UserWarning, stacklevel=3)


def sanitize_boxes(boxes: np.ndarray, image_size: tuple[int, int] | None, where: str,
                   report: ValidationReport) -> tuple[np.ndarray, np.ndarray]:
    """Clip ``[N, 4]`` xyxy boxes to ``image_size`` (``(H, W)``, or None when unknown) and drop bad ones.

    Returns ``(clipped boxes, keep)`` where ``keep`` is a bool ``[N]`` mask of the boxes kept. Every
    clipped or dropped box is added to ``report`` with ``where`` (file name or image id) in the message.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    keep = np.isfinite(boxes).all(axis=1)
    for index in np.flatnonzero(~keep):
        report.add("non_finite_box", f"{where}: box {index} has non-finite coordinates {boxes[index].tolist()}; dropped")
    if image_size is not None:
        boxes = _clip_and_count(boxes, keep, image_size, where, report)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    for index in np.flatnonzero(keep & ~valid):
        report.add("degenerate_box",
                   f"{where}: box {index} {boxes[index].tolist()} has zero area or x2 < x1 / y2 < y1; dropped")
    return boxes, keep & valid


def _clip_and_count(boxes: np.ndarray, finite: np.ndarray, image_size: tuple[int, int], where: str,
                    report: ValidationReport) -> np.ndarray:
    height, width = image_size
    limits = np.array([width, height, width, height], dtype=np.float32)
    clipped = np.clip(np.nan_to_num(boxes), 0, limits)
    changed = finite & (np.abs(clipped - np.nan_to_num(boxes)) > 1e-3).any(axis=1)
    for index in np.flatnonzero(changed):
        report.add("clipped_box",
                   f"{where}: box {index} {boxes[index].tolist()} extends outside the {width}x{height} image; clipped")
    return clipped


def unknown_class_error(name: object, known: Iterable[object], where: str, what: str = "class name") -> ValueError:
    """The error for an unknown class name / category id: names ``where`` and lists the known values."""
    return ValueError(f"{where}: unknown {what} {name!r}; known: {sorted(known)}")
