"""Grad-CAM (Selvaraju et al. 2017): where in an image one output of a model comes from.

For an output ``y`` (a scalar the model computes) and a feature map ``A`` ``[C, h, w]`` of one level, the
class activation map is ``ReLU(sum_k alpha_k A_k)`` with ``alpha_k`` the mean over the map's positions of
``dy / dA_k`` (``class_activation``). The same mechanism serves every model: a forward hook keeps the
chosen level from the dict of named maps a model computes — its backbone's (``c<k>``) or its neck's
(``p<k>``), the modules ``InferenceModel.feature_modules()`` names — while the model's own inference path
(``raw_outputs`` then ``postprocess``) runs with gradients, and ``torch.autograd.grad`` takes ``dy / dA``.
The outputs explained:

- a detection (``explain_detections``): its score ``scores[K]`` (a gather from the class probabilities),
  or its box (``box``: the sum of its four coordinates; ``x1``, ``y1``, ``x2``, ``y2``: one of them);
- a class of a segmenter (``explain_classes``): the sum of the class's probability over the pixels
  predicted as that class (over every pixel when none is);
- a class of a classification backbone (``explain_backbone``, one built with ``classifier=True``): its
  logit; the level is taken from the trunk sub-module that emits it.

The map lives on the model's resized and padded input batch; ``to_image_frame`` scales it to the batch,
crops the part covering the resized image and resizes that to the input image (bilinear), then divides by
its maximum, so a heatmap is ``[H, W]`` in [0, 1] in the input image's frame. A map that is zero
everywhere stays zero: no position raises the output, or its gradient there is zero (an FPN level ``p<k>``
the box head did not pool this detection's RoI from; the backbone's ``c<k>`` feed every level). An output
that does not depend on the level at all (no gradient reaches it: ``p6``, which only the RPN reads, and
its proposals carry no gradient) is a ``ValueError`` naming the level and the others available. The
default level is the backbone's deepest, which every output depends on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structured.types import Prediction
from structured.visualize import ArrayLike, draw_detections, draw_heatmap, save_image, side_by_side

SHEET_COLUMNS = 4
DETECTION_OUTPUTS = ("score", "box", "x1", "y1", "x2", "y2")
"""What of a detection can be explained: its score, the sum of its box coordinates, or one coordinate."""


@dataclass(repr=False)
class Explanation:
    """One Grad-CAM: ``heatmap`` ``[H, W]`` in [0, 1] in the input image's frame, ``activation`` ``[h, w]``
    the map before resizing and normalising, the ``level`` it was taken at, the explained output's
    ``value``, ``target`` (the detection's index or the class index), a ``title`` saying what was explained,
    a ``name`` for its file (``detection3``, ``class2``), and for a detection its ``box`` (xyxy, input image
    pixels), ``label`` and ``score``."""

    heatmap: Tensor
    activation: Tensor
    level: str
    value: float
    target: int
    title: str = ""
    name: str = ""
    box: Tensor | None = None
    label: int | None = None
    score: float | None = None

    def __repr__(self) -> str:
        return f"Explanation({self.title!r}, level={self.level!r}, value={self.value:.4g})"

    def plot(self, image: ArrayLike, class_names: Sequence[str] | None = None, alpha: float = 0.5) -> np.ndarray:
        """``image`` with the heatmap blended over it in a colour map and the detection's box drawn, RGB uint8."""
        canvas = draw_heatmap(image, self.heatmap, alpha)
        if self.box is None:
            return canvas
        return draw_detections(canvas, self.box[None], torch.tensor([self.label]), torch.tensor([self.score]),
                               class_names)


def class_activation(level_map: Tensor, output: Tensor, level: str, available: Sequence[str] = (),
                     retain_graph: bool = False) -> Tensor:
    """Grad-CAM ``[h, w]`` of the scalar ``output`` at ``level_map`` ``[1, C, h, w]``: ``ReLU(sum_k alpha_k A_k)``,
    ``alpha_k`` the mean over positions of ``d output / d A_k``. ``ValueError`` (naming ``level`` and the
    ``available`` ones) when the output does not depend on the map; ``retain_graph`` keeps the graph for
    another output."""
    gradient = None
    if output.requires_grad:
        (gradient,) = torch.autograd.grad(output, level_map, retain_graph=retain_graph, allow_unused=True)
    if gradient is None:
        raise ValueError(f"the explained output does not depend on level {level!r} (no gradient reaches it); "
                         f"choose another of: {', '.join(available)}")
    weights = gradient[0].mean(dim=(1, 2))  # [C]
    return F.relu(torch.einsum("c,chw->hw", weights, level_map[0])).detach()


def to_image_frame(activation: Tensor, batch_size: tuple[int, int], resized_size: tuple[int, int],
                   image_size: tuple[int, int]) -> Tensor:
    """The ``[h, w]`` activation of a map over a padded batch of ``batch_size`` as an ``[H, W]`` heatmap of the
    input image (``image_size``), which fills ``resized_size`` at the batch's top left; scaled to [0, 1]
    (an all-zero map stays zero)."""
    over_batch = F.interpolate(activation[None, None].float(), size=batch_size, mode="bilinear",
                               align_corners=False)
    over_image = over_batch[..., : resized_size[0], : resized_size[1]]
    heatmap = F.interpolate(over_image, size=image_size, mode="bilinear", align_corners=False)[0, 0]
    peak = heatmap.max()
    return heatmap / peak if peak > 0 else heatmap


def feature_levels(model: nn.Module) -> list[str]:
    """The levels a model's Grad-CAM can be taken at: its feature modules' maps, backbone first."""
    return [name for module in model.feature_modules() for name in module.out_channels]


@dataclass
class CapturedLevel:
    """What a forward pass left in the hooks: the chosen ``level``'s map and the size of the input batch."""

    level: str
    level_map: Tensor | None = None
    batch_size: tuple[int, int] | None = None


def _keep_level(captured: CapturedLevel, name: str | None) -> Callable:
    """A forward hook storing ``captured.level`` from a module's output (a dict of named maps, or the map
    called ``name``), made to require gradient (a frozen trunk's maps do not)."""

    def hook(module: nn.Module, inputs: tuple, output: Tensor | dict[str, Tensor]) -> None:
        maps = output if name is None else {name: output}
        level_map = maps.get(captured.level)
        if level_map is not None:
            captured.level_map = level_map if level_map.requires_grad else level_map.requires_grad_()

    return hook


def _keep_batch_size(captured: CapturedLevel) -> Callable:
    def hook(module: nn.Module, inputs: tuple) -> None:
        captured.batch_size = (int(inputs[0].shape[-2]), int(inputs[0].shape[-1]))

    return hook


@contextmanager
def capturing(modules: Sequence[tuple[nn.Module, str | None]], input_module: nn.Module, level: str,
              available: Sequence[str]) -> Iterator[CapturedLevel]:
    """Within the block, gradients are on, a forward pass through ``modules`` (each returning a dict of named
    maps, or the one map it names) stores ``level``'s map and ``input_module``'s input sets the batch size.
    ``ValueError`` listing ``available`` for an unknown level."""
    if level not in available:
        raise ValueError(f"unknown level {level!r}; the model's levels: {', '.join(available)}")
    captured = CapturedLevel(level)
    handles = [module.register_forward_hook(_keep_level(captured, name)) for module, name in modules]
    handles.append(input_module.register_forward_pre_hook(_keep_batch_size(captured)))
    try:
        with torch.enable_grad():
            yield captured
    finally:
        for handle in handles:
            handle.remove()


def explain_outputs(model: nn.Module, image: Tensor, level: str | None,
                    outputs: Callable[[Prediction], list[tuple[int, Tensor]]]) -> tuple[Prediction, list[Explanation]]:
    """Grad-CAMs of outputs of a model's prediction for ``image`` ``[3, H, W]``.

    The model runs its own inference path (``raw_outputs``, ``postprocess``) with gradients;
    ``outputs(prediction)`` gives ``(target, scalar output)`` pairs, one Grad-CAM each (titles left empty).
    ``level`` defaults to the backbone's deepest. Returns the prediction (detached) and the explanations.
    """
    modules = model.feature_modules()
    available = feature_levels(model)
    level = level or list(modules[0].out_channels)[-1]
    with capturing([(module, None) for module in modules], modules[0], level, available) as captured:
        raw = model.raw_outputs([image])
        prediction = model.postprocess(raw)[0]
        chosen = outputs(prediction)
        image_size = (int(image.shape[-2]), int(image.shape[-1]))
        explanations = []
        for number, (target, output) in enumerate(chosen):
            activation = class_activation(captured.level_map, output, level, available, number + 1 < len(chosen))
            heatmap = to_image_frame(activation, captured.batch_size, raw.image_sizes[0], image_size)
            explanations.append(Explanation(heatmap, activation, level, float(output.detach()), target))
    return {key: value.detach() for key, value in prediction.items()}, explanations


def detection_output(prediction: Prediction, index: int, output: str) -> Tensor:
    """The scalar ``output`` (one of ``DETECTION_OUTPUTS``) of detection ``index`` of ``prediction``."""
    if output == "score":
        return prediction["scores"][index]
    box = prediction["boxes"][index]
    return box.sum() if output == "box" else box[DETECTION_OUTPUTS.index(output) - 2]


def check_detections(prediction: Prediction, detections: Sequence[int]) -> None:
    """``ValueError`` saying how many detections there are unless every index of ``detections`` is one of them."""
    count = len(prediction["scores"])
    outside = [index for index in detections if not 0 <= index < count]
    if outside:
        indices = f"0..{count - 1}" if count else "none"
        raise ValueError(f"detection {outside[0]} does not exist: the image has {count} detections (indices {indices})")


def explain_detections(model: nn.Module, image: Tensor, level: str | None = None,
                       detections: Sequence[int] | Callable[[Prediction], Sequence[int]] | None = None,
                       output: str = "score", class_names: Sequence[str] | None = None
                       ) -> tuple[Prediction, list[Explanation]]:
    """Grad-CAMs of detections of a detector (Faster R-CNN, Mask R-CNN, SSD) on ``image`` ``[3, H, W]``.

    ``detections``: indices into the model's prediction (ordered by score), a function choosing them from
    the prediction, or ``None`` for all. ``output``: what of each detection (``DETECTION_OUTPUTS``).
    ``class_names`` name the classes in the titles. Returns the prediction and one explanation per detection.
    """
    if output not in DETECTION_OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(DETECTION_OUTPUTS)}, got {output!r}")

    def outputs(prediction: Prediction) -> list[tuple[int, Tensor]]:
        chosen = detections(prediction) if callable(detections) else detections
        chosen = range(len(prediction["scores"])) if chosen is None else list(chosen)
        check_detections(prediction, chosen)
        return [(index, detection_output(prediction, index, output)) for index in chosen]

    prediction, explanations = explain_outputs(model, image, level, outputs)
    for explanation in explanations:
        index = explanation.target
        explanation.box, explanation.label = prediction["boxes"][index], int(prediction["labels"][index])
        explanation.score = float(prediction["scores"][index])
        name = class_names[explanation.label] if class_names else str(explanation.label)
        explanation.title = f"detection {index}: {name} {explanation.score:.2f}"
        explanation.name = f"detection{index}"
    return prediction, explanations


def class_output(prediction: Prediction, class_index: int) -> Tensor:
    """A segmenter's output for class ``class_index``: its probability summed over the pixels predicted as that
    class, or over every pixel when there are none."""
    probability = prediction["probabilities"][class_index]
    region = prediction["mask"] == class_index
    return probability[region].sum() if bool(region.any()) else probability.sum()


def explain_classes(model: nn.Module, image: Tensor, level: str | None = None,
                    classes: Sequence[int] | Callable[[Prediction], Sequence[int]] | None = None,
                    class_names: Sequence[str] | None = None) -> tuple[Prediction, list[Explanation]]:
    """Grad-CAMs of classes of a semantic segmenter (UNet) on ``image`` ``[3, H, W]``: ``classes`` (indices
    ``0..C``, or a function choosing them from the prediction), by default those predicted somewhere other
    than the background. Returns the prediction and one explanation per class."""

    def outputs(prediction: Prediction) -> list[tuple[int, Tensor]]:
        count = prediction["probabilities"].shape[0]
        chosen = classes(prediction) if callable(classes) else classes
        chosen = [c for c in prediction["mask"].unique().tolist() if c != 0] if chosen is None else list(chosen)
        outside = [c for c in chosen if not 0 <= c < count]
        if outside:
            raise ValueError(f"class {outside[0]} does not exist: the model has classes 0..{count - 1}")
        return [(class_index, class_output(prediction, class_index)) for class_index in chosen]

    prediction, explanations = explain_outputs(model, image, level, outputs)
    for explanation in explanations:
        name = class_names[explanation.target] if class_names else str(explanation.target)
        explanation.title, explanation.name = f"class {name}", f"class{explanation.target}"
    return prediction, explanations


def backbone_levels(backbone: nn.Module) -> dict[str, nn.Module]:
    """The trunk sub-module that emits each level of a backbone (``Backbone.steps``), by level name."""
    return {step.level: backbone.trunk.get_submodule(step.module) for step in backbone.steps if step.level}


def explain_backbone(backbone: nn.Module, images: Tensor, level: str, class_index: int) -> Explanation:
    """Grad-CAM of the class logit ``class_index`` of a classification backbone (built with ``classifier=True``)
    for a normalised batch of one image ``[1, 3, H, W]``, at ``level``; the heatmap is ``[H, W]``."""
    if images.ndim != 4 or images.shape[0] != 1:
        raise ValueError(f"images must be a batch of one image [1, 3, H, W], got {list(images.shape)}")
    emitters = backbone_levels(backbone)
    modules = [(module, name) for name, module in emitters.items()]
    with capturing(modules, backbone.trunk, level, list(emitters)) as captured:
        logits = backbone.classify(images)
        if not 0 <= class_index < logits.shape[1]:
            raise ValueError(f"class_index must be in 0..{logits.shape[1] - 1}, got {class_index}")
        output = logits[0, class_index]
        activation = class_activation(captured.level_map, output, level, list(emitters))
    size = captured.batch_size
    return Explanation(to_image_frame(activation, size, size, size), activation, level, float(output.detach()),
                       class_index, f"class {class_index}", f"class{class_index}")


def explanation_sheet(overlays: Sequence[np.ndarray], titles: Sequence[str], columns: int = SHEET_COLUMNS) -> np.ndarray:
    """Overlays of one size in rows of ``columns`` (``side_by_side``, the last row filled with white), titled."""
    blank = np.full_like(overlays[0], 255)
    rows = []
    for start in range(0, len(overlays), columns):
        row, row_titles = list(overlays[start:start + columns]), list(titles[start:start + columns])
        if len(overlays) > columns:
            row, row_titles = row + [blank] * (columns - len(row)), row_titles + [""] * (columns - len(row_titles))
        rows.append(side_by_side(row, row_titles))
    return np.concatenate(rows, axis=0)


def save_explanations(image: ArrayLike, explanations: Sequence[Explanation], out_dir: str | os.PathLike[str],
                      stem: str, class_names: Sequence[str] | None = None) -> list[Path]:
    """Write one overlay per explanation (``<stem>_<name>.png``) and a sheet of them all
    (``<stem>_gradcam.png``) into ``out_dir``; returns the paths, the sheet last."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    overlays = [explanation.plot(image, class_names) for explanation in explanations]
    paths = [save_image(overlay, out_dir / f"{stem}_{explanation.name}.png")
             for overlay, explanation in zip(overlays, explanations, strict=True)]
    titles = [f"{explanation.title} @ {explanation.level}" for explanation in explanations]
    return [*paths, save_image(explanation_sheet(overlays, titles), out_dir / f"{stem}_gradcam.png")]
