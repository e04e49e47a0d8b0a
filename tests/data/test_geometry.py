"""Mask polygons and YOLO-seg lines: polygons traced from masks fill back to (nearly) the same masks."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from structured.data.convert import yolo_segment_text
from structured.data.geometry import masks_to_polygons
from structured.data.synthetic import iter_samples


def rasterise(rings: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """The pixels whose centres lie inside ``rings`` (boundary included), as uint8 ``[H, W]``."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(canvas, [np.round(ring - 0.5).astype(np.int32) for ring in rings], 1)
    return canvas


@pytest.mark.parametrize("seed", range(3))
def test_polygons_of_synthetic_masks_fill_back_to_the_masks(seed):
    for sample in iter_samples(3, seed=seed, image_size=128, min_objects=2, max_objects=4):
        polygons = masks_to_polygons(sample.masks)
        assert len(polygons) == len(sample.masks)
        for mask, rings in zip(sample.masks, polygons, strict=True):
            if mask.sum() < 20:
                continue
            filled = rasterise(rings, *mask.shape)
            iou = (filled & mask).sum() / (filled | mask).sum()
            assert iou > 0.9, iou
            areas = [abs(cv2.contourArea(ring)) for ring in rings]
            assert areas == sorted(areas, reverse=True)


def test_an_empty_mask_has_no_polygon_and_no_yolo_line():
    masks = np.zeros((2, 20, 30), dtype=np.uint8)
    masks[1, 5:15, 10:20] = 1
    polygons = masks_to_polygons(masks)
    assert polygons[0] == []
    text = yolo_segment_text(polygons, np.array([3, 2]), (20, 30))
    lines = text.splitlines()
    assert len(lines) == 1 and lines[0].split()[0] == "1"
    coordinates = np.array(lines[0].split()[1:], dtype=float).reshape(-1, 2)
    assert coordinates.min() >= 0 and coordinates.max() <= 1
    np.testing.assert_allclose(coordinates.min(0), [10.5 / 30, 5.5 / 20], atol=1e-6)
    np.testing.assert_allclose(coordinates.max(0), [19.5 / 30, 14.5 / 20], atol=1e-6)


def test_probabilities_and_a_single_mask_give_the_polygons_of_the_binary_mask():
    binary = np.zeros((1, 20, 30), dtype=np.uint8)
    binary[0, 5:15, 10:20] = 1
    expected = masks_to_polygons(binary)
    assert len(expected[0]) == 1
    probabilities = np.where(binary, 0.7, 0.3).astype(np.float32)
    for masks in (probabilities, binary[0], binary.astype(bool), binary.astype(np.uint16) * 256):
        polygons = masks_to_polygons(masks)
        assert len(polygons) == 1 and len(polygons[0]) == 1
        np.testing.assert_array_equal(polygons[0][0], expected[0][0])


@pytest.mark.parametrize("shape", [(2, 1, 20, 30), (30,), ()])
def test_masks_of_another_shape_are_refused_in_one_sentence(shape):
    with pytest.raises(ValueError, match=r"masks must be \[N, H, W\] \(or one \[H, W\] mask\), got shape "
                                         + re.escape(str(list(shape)))):
        masks_to_polygons(np.zeros(shape, dtype=np.uint8))
