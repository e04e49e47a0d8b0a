"""Map checkpoints of other libraries onto our models (``structured.convert.torchvision``)."""

from structured.convert.torchvision import TORCHVISION_MODELS, convert_faster_rcnn, num_classes_of

__all__ = ["TORCHVISION_MODELS", "convert_faster_rcnn", "num_classes_of"]
