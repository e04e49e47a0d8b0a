"""The Python API: load a detector or a segmenter, predict on images, look at and export the results.

    detector = Detector.from_checkpoint("runs/shapes/best.pt")
    result = detector.predict("image.jpg")           # a path, a PIL image, an RGB array or a [3, H, W] tensor
    result.boxes, result.scores, result.labels, result.class_names
    result.masks, result.binary(), result.polygons()   # instance models: [K, H, W] probabilities
    result.save("annotated.jpg"); result.to_coco(image_id=1)

    segmenter = Segmenter.from_checkpoint("runs/unet_nuclei/best.pt")
    result = segmenter.predict("image.png")
    result.mask, result.probabilities, result.areas   # [H, W] class indices, [C + 1, H, W], pixels per class
    result.save("overlay.jpg"); result.save_png("classes.png")

    predictor = structured.load("best.pt")            # a Detector or a Segmenter, by the checkpoint's task

``predict`` on a list returns a list. Results are in the input image's pixel frame (Prediction
contract of docs/architecture.md); ``score_threshold`` and ``classes`` filter them. ``Detector`` and
``Segmenter`` are both a :class:`Predictor`, which holds the loading code. Both result kinds know how to
draw themselves (``plot`` / ``save``) and write their machine-readable outputs (``write_outputs``), which
is all ``structured.inference`` needs of them.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor, nn

from structured.config import Config, a_task_model, build_model, load_config, model_task
from structured.data.base import BACKGROUND, numbered_class_names
from structured.data.convert import yolo_label_text, yolo_segment_text
from structured.data.geometry import masks_to_polygons
from structured.data.loading import image_to_tensor, read_image, write_palette_png
from structured.engine.checkpoint import CheckpointError, apply_weights, load_checkpoint, model_state_from
from structured.engine.distributed import resolve_device
from structured.evaluation.coco import predictions_to_coco_results
from structured.evaluation.detector import coco_categories
from structured.evaluation.profiling import classes_of
from structured.explain import Explanation, explain_classes, explain_detections
from structured.io import write_text
from structured.visualize import draw_class_map, draw_detections, save_image, to_rgb_uint8

ImageInput = str | os.PathLike[str] | Image.Image | np.ndarray | Tensor
"""A path (decoded by ``read_image``), a PIL image (any mode, converted to RGB; EXIF orientation applied
as for a path; 16-bit grayscale scaled to 8 bits), or an array / tensor as ``visualize.to_rgb_uint8`` takes
it: ``[H, W, C]`` or ``[C, H, W]``, uint8 0-255, 16-bit 0-65535 or floats in [0, 1] (clipped there within
``FLOAT_OVERSHOOT``). Booleans, floats far outside [0, 1] (0-255 or standardised floats) and non-finite floats
are refused: they have no unambiguous picture."""

ClassSelection = str | int | Sequence[str | int]
"""Classes by name or index ``1..C``: one, or a sequence of them."""

FLOAT_OVERSHOOT = 0.5
"""How far float pixels may stray outside [0, 1] and be clipped (a resize's ringing); beyond it they are refused:
0-255 floats would turn white, standardised (mean-subtracted) ones dark."""

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
"""PIL modes of 16-bit grayscale (``I`` is 32-bit, as PIL opens some 16-bit files)."""


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
        return f"DetectionResult({self.source}: {self.describe()}: {summary})"

    @property
    def names(self) -> list[str]:
        """The class name of each detection."""
        return [self.class_names[label] for label in self.labels.tolist()]

    def filter(self, score_threshold: float = 0.0, classes: ClassSelection | None = None) -> DetectionResult:
        """The detections scoring at least ``score_threshold`` whose class (name or index) is in ``classes``;
        ``ValueError`` for a threshold outside [0, 1] or a class the model does not detect."""
        keep = self.scores >= check_score_threshold(score_threshold)
        if classes is not None:
            wanted = set(class_indices(self.class_names, classes))
            keep &= torch.tensor([label in wanted for label in self.labels.tolist()], dtype=torch.bool)
        return DetectionResult(
            self.boxes[keep], self.scores[keep], self.labels[keep], self.class_names, self.image,
            None if self.masks is None else self.masks[keep], self.source, self.category_ids,
        )

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

    def _polygons_or_boxes(self) -> list[list[np.ndarray]]:
        """``polygons()``, with its box's four corners for a detection whose mask has no contour (empty or a
        speck), so that every detection has its YOLO-seg line."""
        corners = self.boxes.numpy()[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 4, 2)  # [K, 4, 2] (x, y)
        return [rings or [ring] for rings, ring in zip(self.polygons(), corners, strict=True)]

    def plot(self) -> np.ndarray:
        """The image with boxes, class names, scores (and masks) drawn on it, RGB ``uint8``."""
        return draw_detections(self.image, self.boxes, self.labels, self.scores, self.class_names, self.masks)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the annotated image to ``path`` (format by extension)."""
        return save_image(self.plot(), path)

    def describe(self) -> str:
        """What was found, for a progress line: ``3 detections`` (``1 detection``)."""
        return _counted(len(self), "detection")

    def save_txt(self, path: str | os.PathLike[str]) -> Path:
        """Write YOLO labels: segments (YOLO-seg polygons) for a model with masks, else boxes (a detection whose
        mask has no contour gets its box as the polygon)."""
        size = self.image.shape[:2]
        if self.masks is not None:
            text = yolo_segment_text(self._polygons_or_boxes(), self.labels.numpy(), size)
        else:
            text = yolo_label_text(self.boxes.numpy(), self.labels.numpy(), size)
        return write_text(text, path)

    def write_outputs(self, out_dir: Path, stem: str, image_id: int, save_txt: bool = False) -> list[dict[str, Any]]:
        """The machine-readable outputs of one image of a batch run: with ``save_txt`` the YOLO label file
        ``out_dir/labels/<stem>.txt``; returns its entries of ``predictions.json`` (COCO results)."""
        if save_txt:
            self.save_txt(out_dir / "labels" / f"{stem}.txt")
        return self.to_coco(image_id)

    def to_coco(self, image_id: int, label_to_category_id: Mapping[int, int] | None = None) -> list[dict[str, Any]]:
        """COCO results entries (xywh boxes, category ids, RLE masks when present) for this image.

        ``label_to_category_id`` maps labels to category ids; by default the training data's own ids
        (``category_ids``, kept in the checkpoint), or the label itself when they are unknown.
        """
        if isinstance(image_id, bool) or not isinstance(image_id, numbers.Integral):
            raise ValueError(f"image_id must be an integer (the COCO image id), got {image_id!r}")
        prediction = {"boxes": self.boxes, "scores": self.scores, "labels": self.labels}
        if self.masks is not None:
            prediction["masks"] = self.masks
        if label_to_category_id is None and self.category_ids is not None:
            label_to_category_id = dict(enumerate(self.category_ids, start=1))
        return predictions_to_coco_results([prediction], [image_id], label_to_category_id)


@dataclass(repr=False)
class SegmentationResult:
    """A class map of one image: ``mask`` int64 ``[H, W]`` in ``0..C`` (0 = background), ``probabilities``
    float ``[C + 1, H, W]`` (or None), ``class_names`` of ``0..C``."""

    mask: Tensor
    probabilities: Tensor | None
    class_names: Sequence[str]
    image: np.ndarray = field(repr=False)
    source: str = "<array>"

    def __len__(self) -> int:
        """The number of classes besides the background present in the map."""
        return sum(1 for name, pixels in self.areas.items() if pixels and name != self.class_names[0])

    def __repr__(self) -> str:
        return f"SegmentationResult({self.source}: {self.describe()})"

    @property
    def areas(self) -> dict[str, int]:
        """Pixels of each class ``0..C`` by name (the background included)."""
        counts = torch.bincount(self.mask.flatten(), minlength=len(self.class_names))[:len(self.class_names)]
        return dict(zip(self.class_names, counts.tolist(), strict=True))

    def describe(self) -> str:
        """What was found, for a progress line: ``2 classes (circle 12.1%, star 3.0%)``."""
        total = max(self.mask.numel(), 1)
        found = [f"{name} {100 * pixels / total:.1f}%" for name, pixels in self.areas.items()
                 if pixels and name != self.class_names[0]]
        return _counted(len(found), "class", "classes") + (f" ({', '.join(found)})" if found else "")

    def plot(self, alpha: float = 0.5) -> np.ndarray:
        """The image with each class blended in its colour and outlined, RGB ``uint8``."""
        return draw_class_map(self.image, self.mask, alpha)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the colour overlay to ``path`` (format by extension)."""
        return save_image(self.plot(), path)

    def save_png(self, path: str | os.PathLike[str]) -> Path:
        """Write the class map as a palette PNG of class indices (VOC colours; ``read_index_png`` reads it)."""
        return write_palette_png(path, self.mask.numpy())

    def write_outputs(self, out_dir: Path, stem: str, image_id: int, save_txt: bool = False) -> list[dict[str, Any]]:
        """The machine-readable outputs of one image of a batch run: the class-index PNG
        ``out_dir/masks/<stem>.png`` (always; ``save_txt`` concerns detectors); returns its entry of
        ``predictions.json`` (the PNG's path in ``out_dir`` and the pixels of each class)."""
        self.save_png(out_dir / "masks" / f"{stem}.png")
        return [{"image_id": image_id, "mask_file": f"masks/{stem}.png", "areas": self.areas}]


class Predictor:
    """A model in eval mode with its class names, on a device: what ``Detector`` and ``Segmenter`` share.

    With ``optimize`` (the default) the model is prepared for inference by its ``optimize_for_inference()``
    (batch norms folded into convolutions, channels-last layout): the same outputs up to float rounding,
    faster. Pass ``optimize=False`` to keep the model as built (e.g. to train it further).
    ``category_ids`` are the training data's ids of labels ``1..C`` (COCO's original ids). ``tasks`` are
    the model tasks (``structured.config.TASKS``) a subclass serves; ``writes_label_files`` whether its results'
    ``write_outputs(..., save_txt=True)`` write YOLO label files.
    """

    writes_label_files = False

    tasks: tuple[str, ...] = ()

    def __init__(
        self, model: nn.Module, class_names: Sequence[str], device: str | torch.device = "cpu",
        config: Config | None = None, category_ids: Sequence[int] | None = None, optimize: bool = True,
    ) -> None:
        self.device = resolve_device(device)
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
    ):
        """Build the recipe's model (optionally loading ``weights``, a checkpoint or a state dict).

        The classes are ``class_names`` when given, else those recorded in a ``weights`` checkpoint (with its
        category ids), else numbered ``class1 .. classC``.
        """
        config = config if isinstance(config, Config) else load_config(config, overrides)
        cls._check_task(model_task(config), config.source)
        if weights is None:
            return cls._built(config, None, config.source, class_names, device, optimize)
        return cls._built(config, load_checkpoint(weights), str(weights), class_names, device, optimize)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu",
                        optimize: bool = True):
        """The model saved in a training checkpoint (``best.pt`` / ``last.pt``): recipe, weights, classes."""
        checkpoint, config, task = _read_checkpoint(path)
        cls._check_task(task, str(path))
        return cls._from_checkpoint(checkpoint, config, path, device, optimize)

    @classmethod
    def _from_checkpoint(cls, checkpoint: dict[str, Any], config: Config, path: str | os.PathLike[str],
                         device: str | torch.device, optimize: bool):
        return cls._built(config, checkpoint, str(path), None, device, optimize)

    @classmethod
    def _built(cls, config: Config, checkpoint: dict[str, Any] | None, source: str,
               class_names: Sequence[str] | None, device: str | torch.device, optimize: bool):
        """The recipe's model with the weights of ``checkpoint`` (read from ``source``; None: as initialised);
        its classes ``class_names`` when given, else the checkpoint's (and its category ids), else numbered."""
        model = build_model(config)
        if checkpoint is not None:
            apply_weights(model, model_state_from(checkpoint), source)
        if class_names is not None:
            names, category_ids, where = list(class_names), None, ""
        else:
            saved = checkpoint or {}
            names, category_ids, where = saved.get("class_names"), saved.get("category_ids"), f"{source}: "
        num_classes = classes_of(config)
        names = names or numbered_class_names(num_classes)
        _check_class_names(names, category_ids, num_classes, where)
        return cls(model, names, device, config, category_ids, optimize)

    @classmethod
    def _check_task(cls, task: str, source: str) -> None:
        if task not in cls.tasks:
            raise ValueError(f"{source}: holds {a_task_model(task)}, which {cls.__name__} does not serve; load it with "
                             f"{PREDICTORS[task].__name__} or structured.load")

    def check_request(self, score_threshold: float | Tensor,
                      classes: ClassSelection | None) -> tuple[float, list[int] | None]:
        """``(score_threshold as a float, the indices of classes (None: all))`` after checking both
        (``ValueError`` naming the bad value): what ``predict`` does first, before running the model."""
        threshold = check_score_threshold(score_threshold)
        return threshold, None if classes is None else class_indices(self.class_names, classes)

    def _tensors(self, inputs: ImageInput | Sequence[ImageInput]) -> tuple[bool, list, list[np.ndarray], list[Tensor]]:
        """``(single, items, RGB images, tensors on the device)`` of one input or a list of them."""
        single = not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        images = [_load_image(item, "the image" if single else f"image {index} of the list")
                  for index, item in enumerate(items)]
        return single, items, images, [image_to_tensor(image).to(self.device) for image in images]

    def _predictions(self, tensors: list[Tensor]) -> list[dict[str, Tensor]]:
        """The model's predictions of ``tensors``; none for an empty list (the model needs at least one)."""
        return self.model(tensors) if tensors else []


class Detector(Predictor):
    """A detection (or instance segmentation) model, ready to ``predict`` boxes, scores, labels (and masks);
    ``category_ids`` are used by ``DetectionResult.to_coco``."""

    tasks = ("detection", "instance")
    writes_label_files = True

    def categories(self) -> list[dict[str, Any]]:
        """The COCO ``categories`` of the classes (the training data's category ids)."""
        return coco_categories(self.class_names, self.category_ids)

    @torch.inference_mode()
    def predict(
        self, inputs: ImageInput | Sequence[ImageInput], score_threshold: float = 0.0,
        classes: ClassSelection | None = None,
    ) -> DetectionResult | list[DetectionResult]:
        """Detections on one image (a path, an RGB ``uint8`` array, or a ``[3, H, W]`` float tensor) or a list
        (an empty list gives an empty list)."""
        score_threshold, wanted = self.check_request(score_threshold, classes)
        single, items, images, tensors = self._tensors(inputs)
        predictions = self._predictions(tensors)
        results = [
            DetectionResult(
                prediction["boxes"].cpu(), prediction["scores"].cpu(), prediction["labels"].cpu(),
                self.class_names, image, _masks_of(prediction), _describe(item), self.category_ids,
            ).filter(score_threshold, wanted)
            for item, image, prediction in zip(items, images, predictions, strict=True)
        ]
        return results[0] if single else results

    def explain(
        self, image: ImageInput | Sequence[ImageInput], level: str | None = None, detection: int | None = None,
        class_name: str | int | None = None, score_threshold: float = 0.0, limit: int = 8,
    ) -> list[Explanation] | list[list[Explanation]]:
        """Grad-CAMs of detections on one image (``structured.explain``; ``level`` a backbone ``c<k>`` or neck
        ``p<k>`` map, default the backbone's deepest): detection ``detection`` (an index into the model's
        detections, by score), or else the first ``limit`` scoring at least ``score_threshold`` (of class
        ``class_name`` when given). A list of images gives a list: the Grad-CAMs of each."""
        score_threshold, limit = _checked_explain_request(score_threshold, limit)
        wanted = None if class_name is None else class_indices(self.class_names, class_name)[0]
        single, _, _, tensors = self._tensors(image)

        def chosen(prediction: Mapping[str, Tensor]) -> list[int]:
            if detection is not None:
                return [detection]
            keep = prediction["scores"] >= score_threshold
            if wanted is not None:
                keep &= prediction["labels"] == wanted
            return torch.where(keep)[0].tolist()[:limit]

        explanations = [explain_detections(self.model, tensor, level, chosen, class_names=self.class_names)[1]
                        for tensor in tensors]
        return explanations[0] if single else explanations


class Segmenter(Predictor):
    """A semantic segmentation model (UNet), ready to ``predict`` a class per pixel."""

    tasks = ("semantic",)

    def categories(self) -> list[dict[str, Any]]:
        """The classes ``1..C`` as ``{"id": class index, "name"}`` (index 0 is the background)."""
        return coco_categories(self.class_names)

    @torch.inference_mode()
    def predict(
        self, inputs: ImageInput | Sequence[ImageInput], score_threshold: float = 0.0,
        classes: ClassSelection | None = None,
    ) -> SegmentationResult | list[SegmentationResult]:
        """The class map of one image (a path, an RGB ``uint8`` array, or a ``[3, H, W]`` float tensor) or a list
        (an empty list gives an empty list).

        A pixel whose most probable class has a probability below ``score_threshold``, or whose class is
        not in ``classes`` (names or indices), becomes background.
        """
        score_threshold, wanted = self.check_request(score_threshold, classes)
        single, items, images, tensors = self._tensors(inputs)
        results = []
        for item, image, prediction in zip(items, images, self._predictions(tensors), strict=True):
            mask = prediction["mask"].cpu()
            probabilities = prediction.get("probabilities")
            probabilities = None if probabilities is None else probabilities.cpu()
            mask = confident_mask(mask, probabilities, score_threshold)
            if wanted is not None:
                mask = torch.where(torch.isin(mask, torch.tensor(wanted, dtype=mask.dtype)), mask, 0)
            results.append(SegmentationResult(mask, probabilities, self.class_names, image, _describe(item)))
        return results[0] if single else results

    def explain(
        self, image: ImageInput | Sequence[ImageInput], level: str | None = None, detection: int | None = None,
        class_name: str | int | None = None, score_threshold: float = 0.0, limit: int = 8,
    ) -> list[Explanation] | list[list[Explanation]]:
        """Grad-CAMs of classes on one image (``structured.explain``; ``level`` an encoder ``c<k>`` map, default
        the deepest): class ``class_name`` (name or index), or else the first ``limit`` classes other than the
        background that ``predict(image, score_threshold)`` finds. A segmenter has no ``detection``. A list of
        images gives a list: the Grad-CAMs of each."""
        if detection is not None:
            raise ValueError(f"a semantic segmenter has no detections to pick (detection {detection}); "
                             "choose a class by name instead")
        score_threshold, limit = _checked_explain_request(score_threshold, limit)
        wanted = None if class_name is None else [class_index(self.class_names, class_name)]

        def chosen(prediction: Mapping[str, Tensor]) -> list[int]:
            mask = confident_mask(prediction["mask"], prediction["probabilities"], score_threshold)
            return wanted or [index for index in mask.unique().tolist() if index][:limit]

        single, _, _, tensors = self._tensors(image)
        explanations = [explain_classes(self.model, tensor, level, chosen, self.class_names)[1] for tensor in tensors]
        return explanations[0] if single else explanations


PREDICTORS: dict[str, type[Predictor]] = {"detection": Detector, "instance": Detector, "semantic": Segmenter}
"""The predictor class of each model task."""


def load(path: str | os.PathLike[str], device: str | torch.device = "cpu", optimize: bool = True) -> Predictor:
    """The predictor of a training checkpoint chosen by its task: a ``Detector`` or a ``Segmenter``."""
    checkpoint, config, task = _read_checkpoint(path)
    return PREDICTORS[task]._from_checkpoint(checkpoint, config, path, device, optimize)


def _read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], Config, str]:
    """``(checkpoint, its recipe, its task)``; the task of a checkpoint that records none is its recipe's."""
    checkpoint = load_checkpoint(path)
    if "config" not in checkpoint:
        raise ValueError(f"{path}: the checkpoint holds no recipe ('config'); use Detector.from_config("
                         "recipe, weights=path) (or Segmenter.from_config) instead")
    config = Config(checkpoint["config"], str(path))
    task = checkpoint.get("task") or model_task(config)
    if not isinstance(task, str) or task not in PREDICTORS:
        raise CheckpointError(f"{path}: the checkpoint's task {task!r} is unknown; the known tasks are "
                              f"{', '.join(PREDICTORS)}")
    return checkpoint, config, task


def confident_mask(mask: Tensor, probabilities: Tensor | None, score_threshold: float) -> Tensor:
    """A class map with the pixels whose most probable class scores below ``score_threshold`` made background."""
    if score_threshold <= 0 or probabilities is None:
        return mask
    return torch.where(probabilities.max(dim=0).values >= score_threshold, mask, 0)


def class_index(class_names: Sequence[str], item: str | int) -> int:
    """The index of a class given by name or index; ``ValueError`` listing the classes for an unknown name or
    an index outside ``0 .. len(class_names) - 1``."""
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
        if not 0 <= item < len(class_names):
            raise ValueError(f"class index {item} is out of range: the classes are 1 to {len(class_names) - 1} "
                             f"({', '.join(class_names[1:])}), 0 the background")
        return int(item)
    if item not in class_names:
        raise ValueError(f"unknown class {item!r}; classes: {', '.join(class_names[1:])}")
    return list(class_names).index(item)


def class_indices(class_names: Sequence[str], classes: ClassSelection) -> list[int]:
    """The indices of ``classes`` (a name or index, or a sequence of them) to keep in predictions;
    ``ValueError`` for an unknown class (``class_index``) or the background, which predictions never hold."""
    items = [classes] if isinstance(classes, (str, int, np.integer)) else list(classes)
    indices = [class_index(class_names, item) for item in items]
    if 0 in indices:
        raise ValueError(f"classes: {class_names[0]!r} (index 0) is the background, which predictions do not "
                         f"hold; choose among the classes 1 to {len(class_names) - 1} ({', '.join(class_names[1:])})")
    return indices


def check_score_threshold(score_threshold: float | Tensor) -> float:
    """``score_threshold`` as a float; ``ValueError`` unless it is a real number (or a 0-d tensor of one) in
    [0, 1] (scores and probabilities are)."""
    value = score_threshold
    if isinstance(value, Tensor) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"score_threshold (--score-thr) must be a number in [0, 1], got {score_threshold!r}")
    return float(value)


def _checked_explain_request(score_threshold: float | Tensor, limit: int) -> tuple[float, int]:
    """``explain``'s ``score_threshold`` as a float and ``limit``, after checking them (``ValueError``)."""
    if isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1:
        raise ValueError(f"limit (--limit) must be an integer >= 1, got {limit!r}")
    return check_score_threshold(score_threshold), int(limit)


def _check_class_names(class_names: Sequence[str], category_ids: Sequence[int] | None, num_classes: int,
                       where: str) -> None:
    """``ValueError`` (``where`` its prefix) unless there is a name for the background and for each of the
    model's ``num_classes`` classes, and a category id (when there are any) for each class."""
    if len(class_names) != num_classes + 1:
        raise ValueError(f"{where}class_names has {_counted(len(class_names), 'name')} but the model has "
                         f"{_counted(num_classes, 'class', 'classes')} (model.num_classes); expected "
                         f"{num_classes + 1} names: the background ({BACKGROUND!r}) first, then one per class")
    if category_ids is not None and len(category_ids) != num_classes:
        raise ValueError(f"{where}category_ids has {_counted(len(category_ids), 'id')} but the model has "
                         f"{_counted(num_classes, 'class', 'classes')}; expected one id per class, none for the "
                         "background")


def _load_image(item: ImageInput, where: str) -> np.ndarray:
    """The uint8 ``[H, W, 3]`` RGB picture of one input (``ImageInput``); ``ValueError`` starting with ``where``
    (``the image``, ``image 2 of the list``) for an input that has none."""
    if isinstance(item, (str, os.PathLike)):
        return read_image(item)
    if isinstance(item, Image.Image):
        return _pil_to_rgb(item, where)
    if isinstance(item, (np.ndarray, Tensor)):
        return _array_to_rgb(item, where)
    raise ValueError(f"{where} must be a path, a PIL image, a numpy array or a torch tensor, got {type(item).__name__}")


def _pil_to_rgb(image: Image.Image, where: str) -> np.ndarray:
    """A PIL image as uint8 RGB, EXIF orientation applied. 16-bit grayscale and 32-bit float images go through
    ``to_rgb_uint8`` (scaled from 0-65535; floats checked to be in [0, 1]): ``convert("RGB")`` clips them."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "F":
        return _array_to_rgb(np.asarray(image), where)
    if image.mode not in _SIXTEEN_BIT_MODES:
        return np.array(image.convert("RGB"))
    values = np.asarray(image)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"{where} is a PIL image of mode {image.mode} with values {values.min()} to "
                         f"{values.max()}; expected 16-bit values (0 to 65535)")
    return to_rgb_uint8(values.astype(np.uint16))


def _array_to_rgb(image: np.ndarray | Tensor, where: str) -> np.ndarray:
    """``to_rgb_uint8`` of an array (``[H, W, C]`` or ``[C, H, W]``) or tensor image, after refusing pixels it
    would misread: booleans, and floats that are not finite or outside [0, 1] (0-255 floats would turn white)."""
    values = _channels_last(image)
    if values.dtype == np.bool_:
        raise ValueError(f"{where} is a boolean array; expected uint8 (0-255) or floats in [0, 1]")
    if np.issubdtype(values.dtype, np.floating) and values.size:
        if not np.isfinite(values).all():
            raise ValueError(f"{where} has non-finite pixel values (NaN or infinity)")
        low, high = float(values.min()), float(values.max())
        if low < -FLOAT_OVERSHOOT or high > 1 + FLOAT_OVERSHOOT:
            raise ValueError(f"{where} has float values {low:.3g} to {high:.3g}; floats must be in [0, 1] (pass uint8 "
                             "for 0-255 values; normalise back what was standardised)")
    return to_rgb_uint8(values)


def _channels_last(image: np.ndarray | Tensor) -> np.ndarray:
    """An array or tensor image as one numpy array (float tensors as float32, copied to the host once), a
    channels-first ``[C, H, W]`` one as ``[H, W, C]`` (a tensor whenever C is 1, 3 or 4; an array when its last
    axis cannot be channels)."""
    if isinstance(image, Tensor):
        values = image.detach().cpu()
        values = (values.float() if values.is_floating_point() else values).numpy()
        return values.transpose(1, 2, 0) if values.ndim == 3 and values.shape[0] in (1, 3, 4) else values
    values = np.asarray(image)
    is_channels_first = values.ndim == 3 and values.shape[0] in (1, 3, 4) and values.shape[2] not in (1, 3, 4)
    return values.transpose(1, 2, 0) if is_channels_first else values


def _masks_of(prediction: Mapping[str, Tensor]) -> Tensor | None:
    masks = prediction.get("masks")
    if masks is None:
        return None
    return (masks[:, 0] if masks.ndim == 4 else masks).cpu()


def _describe(item: ImageInput) -> str:
    return str(item) if isinstance(item, (str, os.PathLike)) else f"<{type(item).__name__}>"


def _counted(count: int, singular: str, plural: str | None = None) -> str:
    """``1 detection``, ``3 detections``: the count with its noun in the right number."""
    return f"{count} {singular if count == 1 else plural or singular + 's'}"
