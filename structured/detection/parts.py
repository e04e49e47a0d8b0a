"""Pieces every detector shares: its backbone and neck built from recipe sections, targets without crowd
boxes, the input sizes, and the preparation for inference (batch norms folded, channels-last).

``BackboneSection`` / ``NeckSection`` are the annotations a detector builder gives its ``backbone`` and
``neck`` parameters (registered parts, validated against their builders by ``structured.config``);
``build_backbone_and_neck`` builds them. ``prepare_for_inference`` is what each detector's
``optimize_for_inference()`` does: eval mode, every frozen or eval-mode batch norm that follows a
convolution folded into it (``fold_frozen_batch_norms``), and optionally the channels-last memory layout.

``check_fractions`` / ``check_counts`` are the range checks of the parts' settings dataclasses (their
``__post_init__``): a ``ValueError`` whose message starts with the field's name, which
``structured.config.settings_from`` puts under the part's name (``roi_heads.score_thresh must be in [0, 1]``).

``InferenceModel`` is the base of every model family: ``optimize_for_inference()`` and what
``structured.export`` traces (``export_outputs``, ``EXPORT_OUTPUTS``, ``export_dynamic_axes``), which a family
overrides where its exported graph differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import torch
from torch import Tensor, nn

from structured.backbones import Backbone
from structured.backbones.folding import fold_frozen_batch_norms
from structured.config import RegisteredPart
from structured.registry import BACKBONES, NECKS
from structured.types import Target, select_instances

BackboneSection = Annotated[Mapping[str, Any], RegisteredPart(BACKBONES, filled_by_model=("classifier", "num_classes"))]
"""A registered backbone's section, ``{name: resnet50, out_levels: [c2, c3, c4, c5], frozen_stages: 2, ...}``."""
NeckSection = Annotated[Mapping[str, Any] | None, RegisteredPart(NECKS, filled_by_model=("in_channels", "in_strides"))]
"""A registered neck's section, ``{name: fpn, out_channels: 256, ...}`` (its inputs come from the backbone), or
``None`` for none."""


def check_part_section(section: Mapping[str, Any], part: str) -> None:
    """Raise ``ValueError`` unless ``section`` is a mapping with a registered part's ``name``."""
    if not isinstance(section, Mapping) or not isinstance(section.get("name"), str):
        raise ValueError(f"{part} must be a mapping with a registered 'name' and its options, got {section!r}")


def check_fractions(settings: Any, *fields: str) -> None:
    """``ValueError`` naming the first of ``fields`` of ``settings`` that is not in [0, 1] (a score or an IoU)."""
    for field in fields:
        value = getattr(settings, field)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{field} must be in [0, 1], got {value!r}")


def check_counts(settings: Any, *fields: str) -> None:
    """``ValueError`` naming the first of ``fields`` of ``settings`` below 1 (a number kept, a size in pixels)."""
    for field in fields:
        value = getattr(settings, field)
        if value < 1:
            raise ValueError(f"{field} must be >= 1, got {value!r}")


def build_backbone_and_neck(
    backbone: Mapping[str, Any], neck: Mapping[str, Any] | None
) -> tuple[Backbone, nn.Module | None, dict[str, int], dict[str, int]]:
    """The backbone and optional neck of two sections, and the channels and strides of the features they give."""
    backbone_options = {key: value for key, value in backbone.items() if key != "name"}
    trunk = BACKBONES.build(backbone["name"], **backbone_options, classifier=False)
    if neck is None:
        return trunk, None, trunk.out_channels, trunk.strides
    neck_options = {key: value for key, value in neck.items() if key != "name"}
    built = NECKS.build(neck["name"], in_channels=trunk.out_channels, in_strides=trunk.strides, **neck_options)
    return trunk, built, built.out_channels, built.strides


def extract_features(backbone: nn.Module, neck: nn.Module | None, images: Tensor,
                     channels_last: bool) -> dict[str, Tensor]:
    """Named feature maps of a padded batch ``[B, 3, H, W]``: the backbone's, through the neck when there is one
    (the batch laid out channels-last first when the model was prepared that way)."""
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    features = backbone(images)
    return neck(features) if neck is not None else features


def select_features(features: Mapping[str, Tensor], names: list[str]) -> list[Tensor]:
    """The maps ``names`` of ``features``, in that order; ``KeyError`` naming the missing ones and those available."""
    missing = [name for name in names if name not in features]
    if missing:
        raise KeyError(f"feature maps {missing} not produced; available: {list(features)}")
    return [features[name] for name in names]


def original_sizes_of(images: list[Tensor]) -> list[tuple[int, int]]:
    """``(height, width)`` of each input image (read from the shape, so a traced graph follows the input)."""
    return [(image.shape[-2], image.shape[-1]) for image in images]


def without_crowd(target: Target) -> Target:
    """``target`` without its crowd instances (``iscrowd`` = 1), which take no part in training."""
    if "iscrowd" not in target:
        return target
    return select_instances(target, target["iscrowd"] == 0)


def prepare_for_inference(model: nn.Module) -> None:
    """Put ``model`` in eval mode and fold its batch norms.

    Outputs equal the unprepared model's up to float rounding (see ``fold_frozen_batch_norms``); the state
    dict changes and trainable batch norms are gone, so prepare after loading weights, for inference only.
    """
    model.eval()
    fold_frozen_batch_norms(model)


class InferenceModel(nn.Module):
    """A model's ``optimize_for_inference()`` and ``feature_modules()``, shared by every family (the detectors
    and the UNet, each with a ``backbone`` and, the detectors, a ``neck``).

    ``channels_last`` says whether the model's weights are in that layout (``use_channels_last``), so it lays out
    its input batch the same way.
    """

    def __init__(self) -> None:
        super().__init__()
        self.channels_last = False

    def optimize_for_inference(self, channels_last: bool = True) -> InferenceModel:
        """Eval mode, batch norms folded into convolutions, optionally channels-last layout; returns ``self``.

        See ``prepare_for_inference``: outputs equal the unprepared model's up to float rounding; call this after
        loading weights, for inference only, and do not save the result as a checkpoint.
        """
        prepare_for_inference(self)
        return self.use_channels_last() if channels_last else self

    def use_channels_last(self) -> InferenceModel:
        """Lay out the weights, and from now on every input batch, channels-last (NHWC); returns ``self``.

        For training as well as inference (the recipe's ``train.channels_last``): outputs and gradients equal
        the default layout's up to float rounding, the state dict holds the same values, and oneDNN's
        convolutions are faster in this layout on some CPUs (docs/benchmarks.md, "The demo").
        """
        self.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    def feature_modules(self) -> list[nn.Module]:
        """The modules returning the model's dicts of named feature maps, in the order they run: the backbone
        (``c<k>``; it takes the model's padded input batch), then the neck when there is one (``p<k>``). Each
        has ``out_channels`` by map name; ``structured.explain`` hooks them."""
        return [module for module in (self.backbone, getattr(self, "neck", None)) if module is not None]

    EXPORT_OUTPUTS: ClassVar[tuple[str, ...]] = ("boxes", "scores", "labels")
    """The prediction keys an exported graph returns, in order (``export_outputs``)."""

    def export_outputs(self, images: Tensor) -> tuple[Tensor, ...]:
        """What an exported graph computes: the prediction of one image ``[1, 3, H, W]`` (float RGB in [0, 1]),
        its ``EXPORT_OUTPUTS`` in order; the model's own inference, which is traced (``structured.export``)."""
        if images.ndim != 4 or images.shape[0] != 1:
            raise ValueError(f"an exported {type(self).__name__} takes one image [1, 3, H, W], got {list(images.shape)}")
        prediction = self.postprocess(self.raw_outputs([images[0]]))[0]
        return tuple(prediction[name] for name in self.EXPORT_OUTPUTS)

    def export_dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The axes of the exported input (``image``) and outputs that vary from call to call, by name."""
        return {"image": {2: "height", 3: "width"}, **{name: {0: "detections"} for name in self.EXPORT_OUTPUTS}}
