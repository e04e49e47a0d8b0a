"""Detectors (backbone + neck + heads); importing this registers the detection recipes in ``MODELS``."""

from structured.detection import faster_rcnn
from structured.detection.faster_rcnn import FasterRCNN, build_faster_rcnn

__all__ = ["FasterRCNN", "build_faster_rcnn", "faster_rcnn"]
