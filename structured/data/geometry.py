"""Instance geometry: tight boxes of binary masks and of polygon rings, and polygons of masks.

A pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)`` in continuous coordinates, so the tight
box of a mask is ``(min col, min row, max col + 1, max row + 1)``. An empty mask or an instance without
rings has the degenerate box ``(0, 0, 0, 0)``. Polygons of masks trace the outer boundary through the
centres of the boundary pixels (``col + 0.5, row + 0.5``).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
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


def masks_to_polygons(masks: np.ndarray) -> list[list[np.ndarray]]:
    """Per instance of ``[N, H, W]`` masks, its outer contours as float32 ``[K, 2]`` (x, y) rings.

    A mask's foreground is its non-zero pixels (bool / integer masks) or, for float masks (probabilities),
    its pixels above 0.5. One ``[H, W]`` mask is one instance (a list of one). Rings are largest first;
    parts smaller than 3 points (single pixels, thin lines) are left out, so an empty or speck-sized mask
    has no ring. Other shapes raise ``ValueError``.
    """
    polygons = []
    for mask in _binary_masks(masks):
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        rings = [contour.reshape(-1, 2).astype(np.float32) + 0.5 for contour in contours if len(contour) >= 3]
        polygons.append(sorted(rings, key=lambda ring: -abs(cv2.contourArea(ring))))
    return polygons


def _binary_masks(masks: np.ndarray) -> np.ndarray:
    """uint8 0/1 ``[N, H, W]`` of ``[N, H, W]`` or ``[H, W]`` masks: floats above 0.5, other values non-zero."""
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W] (or one [H, W] mask), got shape {list(masks.shape)}")
    foreground = masks > 0.5 if np.issubdtype(masks.dtype, np.floating) else masks != 0
    return foreground.astype(np.uint8)
