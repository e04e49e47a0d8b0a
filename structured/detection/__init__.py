"""Detectors (backbone + neck + heads); importing this registers the detection recipes in ``MODELS``."""

from structured.detection import faster_rcnn, mask_rcnn, ssd
from structured.detection.faster_rcnn import FasterRCNN, build_faster_rcnn
from structured.detection.mask_rcnn import MaskRCNN, build_mask_rcnn
from structured.detection.ssd import SSD, build_ssd

__all__ = ["SSD", "FasterRCNN", "MaskRCNN", "build_faster_rcnn", "build_mask_rcnn", "build_ssd", "faster_rcnn",
           "mask_rcnn", "ssd"]
