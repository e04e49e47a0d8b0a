"""structured: object detection and segmentation for PyTorch.

The public API: ``load_config`` and ``build_model`` for recipes, ``list_models`` for what is
registered, ``Detector`` (with its ``DetectionResult``) and ``Segmenter`` (with its ``SegmentationResult``)
to load a trained model and predict, and ``load`` to get the right one from a checkpoint's task. The parts
live in sub-packages: ``structured.boxes`` (box forms, coding, IoU, NMS), ``structured.backbones``,
``structured.detection``, ``structured.data``, ``structured.evaluation``, ``structured.engine``,
``structured.convert``. The layers and contracts are described in docs/architecture.md.

Importing ``structured`` (or one of its sub-packages) is cheap: the names above are imported on first
use (``structured.lazy``), so ``from structured.boxes import nms`` loads the box module and nothing of
the training engine, evaluation or plotting. Registration does not depend on what was imported first:
a registry imports the packages that define its builders on its first lookup (``structured.registry``).
"""

from structured.lazy import lazy_attributes

__all__ = ["DetectionResult", "Detector", "SegmentationResult", "Segmenter", "build_model", "list_models", "load",
           "load_config"]
__version__ = "0.1.0"

__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "DetectionResult": "structured.api",
        "Detector": "structured.api",
        "SegmentationResult": "structured.api",
        "Segmenter": "structured.api",
        "load": "structured.api",
        "build_model": "structured.config",
        "load_config": "structured.config",
        "list_models": "structured.registry",
    },
    subpackages=("backbones", "boxes", "convert", "data", "detection", "engine", "evaluation", "segmentation"),
)
