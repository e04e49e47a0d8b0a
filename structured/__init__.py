"""structured: object detection and segmentation for PyTorch.

The public API: ``load_config`` and ``build_model`` for recipes, ``list_models`` for what is
registered. The parts live in sub-packages: ``structured.boxes`` (box forms, coding, IoU, NMS),
``structured.backbones``, ``structured.detection``, ``structured.data``, ``structured.evaluation``.
"""

from structured.config import build_model, load_config
from structured.registry import list_models

__all__ = ["build_model", "list_models", "load_config"]
__version__ = "0.1.0"
