"""The Python API: load a detector, predict on images, look at and export the results.

    detector = Detector.from_checkpoint("runs/shapes/best.pt")
    result = detector.predict("image.jpg")           # a path, an RGB array or a [3, H, W] tensor
    result.boxes, result.scores, result.labels, result.class_names
    result.masks, result.binary(), result.polygons()   # instance models: [K, H, W] probabilities
    result.save("annotated.jpg"); result.to_coco(image_id=1)

``predict`` on a list returns a list. Results are in the input image's pixel frame (Prediction
contract of docs/architecture.md); ``score_threshold`` and ``classes`` filter them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from structured.config import Config, build_model, load_config
from structured.data.base import numbered_class_names
from structured.data.geometry import masks_to_polygons
from structured.data.loading import image_to_tensor, read_image
from structured.engine.checkpoint import apply_weights, load_checkpoint, load_weights, model_state_from
from structured.evaluation.coco import predictions_to_coco_results
from structured.visualize import draw_detections, save_image, to_rgb_uint8

ImageInput = str | os.PathLike[str] | np.ndarray | Tensor


@dataclass(repr=False)
class DetectionResult:
    """Detections on one image: ``boxes [K, 4]`` xyxy pixels, ``scores [K]``, ``labels [K]`` in 1..C."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    class_names: Sequence[str]
    image: np.ndarray = field(repr=False)
    masks: Tensor | None = field(default=None, repr=False)
    source: str = "<array>"
    category_ids: Sequence[int] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.boxes)

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for name in self.names:
            counts[name] = counts.get(name, 0) + 1
        summary = ", ".join(f"{count} {name}" for name, count in sorted(counts.items())) or "nothing"
        return f"DetectionResult({self.source}: {len(self)} detections: {summary})"

    @property
    def names(self) -> list[str]:
        """The class name of each detection."""
        return [self.class_names[label] for label in self.labels.tolist()]

    def filter(self, score_threshold: float = 0.0, classes: Sequence[str | int] | None = None) -> DetectionResult:
        """The detections scoring at least ``score_threshold`` whose class (name or index) is in ``classes``."""
        keep = self.scores >= score_threshold
        if classes is not None:
            wanted = {self._label_of(item) for item in classes}
            keep &= torch.tensor([label in wanted for label in self.labels.tolist()], dtype=torch.bool)
        return DetectionResult(
            self.boxes[keep], self.scores[keep], self.labels[keep], self.class_names, self.image,
            None if self.masks is None else self.masks[keep], self.source, self.category_ids,
        )

    def _label_of(self, item: str | int) -> int:
        if isinstance(item, int):
            return item
        if item not in self.class_names:
            raise ValueError(f"unknown class {item!r}; classes: {', '.join(self.class_names[1:])}")
        return list(self.class_names).index(item)

    def binary(self, threshold: float = 0.5) -> Tensor | None:
        """Boolean ``[K, H, W]`` masks, ``masks > threshold``; None for a model without masks."""
        return None if self.masks is None else self.masks > threshold

    def polygons(self, threshold: float = 0.5) -> list[list[np.ndarray]]:
        """Per detection its mask's outer contours as ``[K, 2]`` (x, y) pixel rings, largest first (``[]``
        for each detection of a model without masks)."""
        binary = self.binary(threshold)
        if binary is None:
            return [[] for _ in range(len(self))]
        return masks_to_polygons(binary.numpy())

    def plot(self) -> np.ndarray:
        """The image with boxes, class names, scores (and masks) drawn on it, RGB ``uint8``."""
        return draw_detections(self.image, self.boxes, self.labels, self.scores, self.class_names, self.masks)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the annotated image to ``path`` (format by extension)."""
        return save_image(self.plot(), path)

    def to_coco(self, image_id: int, label_to_category_id: Mapping[int, int] | None = None) -> list[dict[str, Any]]:
        """COCO results entries (xywh boxes, category ids, RLE masks when present) for this image.

        ``label_to_category_id`` maps labels to category ids; by default the training data's own ids
        (``category_ids``, kept in the checkpoint), or the label itself when they are unknown.
        """
        prediction = {"boxes": self.boxes, "scores": self.scores, "labels": self.labels}
        if self.masks is not None:
            prediction["masks"] = self.masks
        if label_to_category_id is None and self.category_ids is not None:
            label_to_category_id = dict(enumerate(self.category_ids, start=1))
        return predictions_to_coco_results([prediction], [image_id], label_to_category_id)


class Detector:
    """A detection model in eval mode with its class names, on a device, ready to ``predict``.

    With ``optimize`` (the default) the model is prepared for inference by its ``optimize_for_inference()``
    (batch norms folded into convolutions, channels-last layout): the same detections up to float
    rounding, faster. Pass ``optimize=False`` to keep the model as built (e.g. to train it further).
    ``category_ids`` are the training data's ids of labels ``1..C`` (COCO's original ids), used by
    ``DetectionResult.to_coco``.
    """

    def __init__(
        self, model: nn.Module, class_names: Sequence[str], device: str | torch.device = "cpu",
        config: Config | None = None, category_ids: Sequence[int] | None = None, optimize: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        if optimize:
            self.model.optimize_for_inference()
        self.class_names = list(class_names)
        self.config = config
        self.category_ids = None if category_ids is None else [int(category_id) for category_id in category_ids]

    @classmethod
    def from_config(
        cls, config: str | os.PathLike[str] | Mapping[str, Any] | Config,
        weights: str | os.PathLike[str] | None = None, class_names: Sequence[str] | None = None,
        device: str | torch.device = "cpu", overrides: Sequence[str] = (), optimize: bool = True,
    ) -> Detector:
        """Build the recipe's model (optionally loading ``weights``, a checkpoint or a state dict)."""
        config = config if isinstance(config, Config) else load_config(config, overrides)
        model = build_model(config)
        if weights is not None:
            load_weights(model, weights)
        names = class_names or _numbered_classes(config)
        return cls(model, names, device, config, optimize=optimize)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu",
                        optimize: bool = True) -> Detector:
        """The detector saved in a training checkpoint (``best.pt`` / ``last.pt``): recipe, weights, classes."""
        checkpoint = load_checkpoint(path)
        if "config" not in checkpoint:
            raise ValueError(f"{path}: the checkpoint holds no recipe ('config'); use Detector.from_config("
                             "recipe, weights=path) instead")
        config = Config(checkpoint["config"], str(path))
        model = build_model(config)
        apply_weights(model, model_state_from(checkpoint), str(path))
        names = checkpoint.get("class_names") or _numbered_classes(config)
        return cls(model, names, device, config, checkpoint.get("category_ids"), optimize)

    @torch.inference_mode()
    def predict(
        self, inputs: ImageInput | Sequence[ImageInput], score_threshold: float = 0.0,
        classes: Sequence[str | int] | None = None,
    ) -> DetectionResult | list[DetectionResult]:
        """Detections on one image (a path, an RGB ``uint8`` array, or a ``[3, H, W]`` float tensor) or a list."""
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        images = [_load_image(item) for item in items]
        tensors = [image_to_tensor(image).to(self.device) for image in images]
        predictions = self.model(tensors)
        results = [
            DetectionResult(
                prediction["boxes"].cpu(), prediction["scores"].cpu(), prediction["labels"].cpu(),
                self.class_names, image, _masks_of(prediction), _describe(item), self.category_ids,
            ).filter(score_threshold, classes)
            for item, image, prediction in zip(items, images, predictions, strict=True)
        ]
        return results[0] if single else results


def _numbered_classes(config: Config) -> list[str]:
    count = config.get("model.num_classes")
    if not isinstance(count, int):
        raise ValueError(f"{config.source}: no class names and no model.num_classes to number them")
    return numbered_class_names(count)


def _load_image(item: ImageInput) -> np.ndarray:
    if isinstance(item, (str, os.PathLike)):
        return read_image(item)
    return to_rgb_uint8(item)


def _masks_of(prediction: Mapping[str, Tensor]) -> Tensor | None:
    masks = prediction.get("masks")
    if masks is None:
        return None
    return (masks[:, 0] if masks.ndim == 4 else masks).cpu()


def _describe(item: ImageInput) -> str:
    return str(item) if isinstance(item, (str, os.PathLike)) else f"<{type(item).__name__}>"
