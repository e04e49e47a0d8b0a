"""The box module shared by every head: forms, encoding, IoU, NMS, anchors and matching."""

from structured.boxes.anchors import AnchorGenerator, DefaultBoxGenerator
from structured.boxes.coder import BoxCoder
from structured.boxes.formats import (
    BOX_FORMATS,
    box_area,
    box_convert,
    boxes_to_corners,
    check_boxes,
    clip_boxes,
    corners_to_boxes,
    denormalize_boxes,
    has_nan,
    normalize_boxes,
    remove_small_boxes,
)
from structured.boxes.iou import (
    box_iou,
    complete_box_iou,
    distance_box_iou,
    elementwise_box_iou,
    elementwise_generalized_box_iou,
    generalized_box_iou,
    mask_iou,
    polygon_iou,
    rle_iou,
)
from structured.boxes.matcher import (
    BELOW_LOW_THRESHOLD,
    BETWEEN_THRESHOLDS,
    BalancedSampler,
    DefaultBoxMatcher,
    IoUMatcher,
)
from structured.boxes.nms import batched_nms, nms, register_nms_kernel

__all__ = [
    "BELOW_LOW_THRESHOLD",
    "BETWEEN_THRESHOLDS",
    "BOX_FORMATS",
    "AnchorGenerator",
    "BalancedSampler",
    "BoxCoder",
    "DefaultBoxGenerator",
    "DefaultBoxMatcher",
    "IoUMatcher",
    "batched_nms",
    "box_area",
    "box_convert",
    "box_iou",
    "boxes_to_corners",
    "check_boxes",
    "clip_boxes",
    "complete_box_iou",
    "corners_to_boxes",
    "denormalize_boxes",
    "distance_box_iou",
    "elementwise_box_iou",
    "elementwise_generalized_box_iou",
    "generalized_box_iou",
    "has_nan",
    "mask_iou",
    "nms",
    "normalize_boxes",
    "polygon_iou",
    "register_nms_kernel",
    "remove_small_boxes",
    "rle_iou",
]
