"""Boxes derived from instance geometry: tight boxes of binary masks and of polygon rings.

A pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)`` in continuous coordinates, so the tight
box of a mask is ``(min col, min row, max col + 1, max row + 1)``. An empty mask or an instance without
rings has the degenerate box ``(0, 0, 0, 0)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """float32 ``[N, 4]`` xyxy tight boxes of uint8/bool ``[N, H, W]`` masks (zeros for empty masks)."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for index, mask in enumerate(masks):
        columns = np.flatnonzero(mask.any(axis=0))
        rows = np.flatnonzero(mask.any(axis=1))
        if len(columns):
            boxes[index] = (columns[0], rows[0], columns[-1] + 1, rows[-1] + 1)
    return boxes


def rings_to_box(rings: Sequence[np.ndarray]) -> np.ndarray:
    """float32 ``[4]`` xyxy bounds of ``[K, 2]`` rings (zeros when there are none)."""
    if not rings:
        return np.zeros(4, dtype=np.float32)
    points = np.concatenate(rings, axis=0)
    return np.concatenate((points.min(axis=0), points.max(axis=0))).astype(np.float32)
