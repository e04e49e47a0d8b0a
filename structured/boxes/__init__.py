"""The box module shared by every head: forms, encoding, IoU, NMS, anchors and matching."""

from structured.boxes.formats import (
    BOX_FORMATS,
    box_area,
    box_convert,
    boxes_to_corners,
    check_boxes,
    clip_boxes,
    corners_to_boxes,
    denormalize_boxes,
    normalize_boxes,
    remove_small_boxes,
)

__all__ = [
    "BOX_FORMATS",
    "box_area",
    "box_convert",
    "boxes_to_corners",
    "check_boxes",
    "clip_boxes",
    "corners_to_boxes",
    "denormalize_boxes",
    "normalize_boxes",
    "remove_small_boxes",
]
