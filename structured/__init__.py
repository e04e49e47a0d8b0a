"""structured: object detection and segmentation for PyTorch.

The public API: ``load_config`` and ``build_model`` for recipes, ``list_models`` for what is
registered, ``Detector`` to load a trained model and predict. The parts live in sub-packages:
``structured.boxes`` (box forms, coding, IoU, NMS), ``structured.backbones``, ``structured.detection``,
``structured.data``, ``structured.evaluation``. Importing the package registers every backbone, neck
and model (plain imports below, no side effects to remember).
"""

from structured import backbones, detection
from structured.api import DetectionResult, Detector
from structured.config import build_model, load_config
from structured.registry import list_models

__all__ = ["DetectionResult", "Detector", "backbones", "build_model", "detection", "list_models", "load_config"]
__version__ = "0.1.0"
