"""Faster R-CNN: backbone (+ FPN) -> region proposal network -> RoI heads, with its registered recipes.

``FasterRCNN`` follows the detector contract of docs/architecture.md: ``forward(images, targets=None)``
takes a list of float ``[3, H, W]`` images in [0, 1]; with targets it returns a dict of named scalar losses
(``loss_objectness``, ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``), without targets a list
of predictions (``boxes`` ``[K, 4]`` xyxy in the input image's pixels, ``scores``, ``labels`` in 1..C) —
in train or eval mode alike. ``loss`` and ``predict`` are aliases. Crowd boxes (``iscrowd`` = 1) take no
part in training.

``num_classes`` counts object classes without the background (the predictor has ``num_classes + 1``
outputs); torchvision's COCO models have 90 (+1) and their checkpoints load through
``structured.convert.torchvision``.

``build_faster_rcnn`` takes one section per part — ``backbone`` and ``neck`` (registered parts, by name),
``rpn`` / ``roi_heads`` / ``transform`` (``RPNSettings``, ``RoIHeadSettings``, ``TransformSettings``) — as a
recipe's ``model:`` section groups them::

    model:
      name: faster_rcnn_r18_fpn
      backbone: {name: resnet18, frozen_stages: 0}
      neck: {name: fpn, out_channels: 64}
      rpn: {post_nms_top_n_test: 100}
      roi_heads: {head: conv_fc}

The registered recipes (``RECIPES``) give defaults per part; what a YAML recipe or ``--set
model.rpn.nms_thresh=0.6`` names inside a part replaces only those keys (the merge rule of
``structured.config``). An old flat recipe (``rpn_post_nms_top_n_test: 100``) is an error naming each key's
new place (``FLAT_RECIPE_KEYS``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from structured.config import Recipe, settings_from
from structured.detection.parts import (
    BackboneSection,
    InferenceModel,
    NeckSection,
    build_backbone_and_neck,
    check_part_section,
    extract_features,
    original_sizes_of,
    select_features,
    without_crowd,
)
from structured.detection.roi_heads import RoIHeads, RoIHeadSettings, RoISample, build_roi_heads
from structured.detection.rpn import ASPECT_RATIOS, RegionProposalNetwork, RPNSettings, build_rpn
from structured.detection.transform import DetectionTransform, TransformSettings
from structured.registry import MODELS
from structured.types import Prediction, Target

BLOCKED_TRANSPOSE_MIN_ELEMENTS = 1 << 22
"""Feature maps from this size are made contiguous by ``_contiguous_from_channels_last``'s blocked copy."""


@dataclass
class RawDetections:
    """What the network computes for a batch before post-processing (see ``FasterRCNN.raw_outputs``).

    ``logits [K, C+1]`` and ``deltas [K, (C+1)*4]`` of the ``K`` proposals of all images, the proposals per
    image (resized frame), the resized and the original image sizes.
    """

    logits: Tensor
    deltas: Tensor
    proposals: list[Tensor]
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]


class FasterRCNN(InferenceModel):
    """Two-stage detector.

    Args:
        backbone: image ``[B, 3, H, W]`` -> ``OrderedDict`` of named feature maps.
        neck: optional module mapping the backbone's dict to another dict (an FPN), or ``None``.
        rpn: the region proposal network.
        roi_heads: the box branch.
        transform: resize / normalise / batch inside the model.
        rpn_features: names of the feature maps the RPN sees, one per anchor level.
        roi_features: names of the feature maps RoIAlign pools from, finest first.

    ``CLASS_SPECIFIC_TENSORS`` (the model contract of docs/architecture.md, "Checkpoints"): the box predictor's
    class logits (one row per class, background first) and class-specific deltas (four rows per class).
    """

    CLASS_SPECIFIC_TENSORS: ClassVar[dict[str, int]] = {
        "roi_heads.predictor.cls_score.": 1, "roi_heads.predictor.bbox_pred.": 4,
    }

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module | None,
        rpn: RegionProposalNetwork,
        roi_heads: RoIHeads,
        transform: DetectionTransform,
        rpn_features: Sequence[str],
        roi_features: Sequence[str],
    ) -> None:
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.neck = neck
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.rpn_features = list(rpn_features)
        self.roi_features = list(roi_features)

    def extract_features(self, images: Tensor) -> OrderedDict[str, Tensor]:
        """Named feature maps of a padded batch (after the neck when there is one)."""
        return extract_features(self.backbone, self.neck, images, self.channels_last)

    def forward(
        self, images: list[Tensor], targets: list[Target] | None = None
    ) -> dict[str, Tensor] | list[Prediction]:
        """Losses (dict of named scalars) when ``targets`` are given, else one prediction per image.

        Inference is ``postprocess(raw_outputs(images))``: the split lets a speed measurement time the
        network and the post-processing apart.
        """
        if targets is None:
            return self.postprocess(self.raw_outputs(images))
        targets = [without_crowd(target) for target in targets]
        batch, targets = self.transform(images, targets)
        features = self.extract_features(batch.tensors)
        proposals, rpn_losses = self.rpn(batch, select_features(features, self.rpn_features), targets)
        return {**rpn_losses, **self.head_losses(features, proposals, targets)}

    def head_losses(
        self, features: OrderedDict[str, Tensor], proposals: list[Tensor], targets: list[Target]
    ) -> dict[str, Tensor]:
        """The second stage's losses on a balanced sample of ``proposals`` (resized frame)."""
        sample = self.roi_heads.sample(proposals, targets)
        return self.sample_losses(select_features(features, self.roi_features), sample, targets)

    def sample_losses(self, roi_features: list[Tensor], sample: RoISample, targets: list[Target]) -> dict[str, Tensor]:
        """The losses of the heads that see the sampled proposals (the box branch here)."""
        return self.roi_heads.loss(roi_features, sample)

    def propose(self, images: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[tuple[int, int]]]:
        """Inference up to the second stage: the RoI feature maps, the proposals and the resized sizes."""
        batch, _ = self.transform(images, None)
        features = self.extract_features(batch.tensors)
        proposals, _ = self.rpn(batch, select_features(features, self.rpn_features), None)
        return self._roi_layout(select_features(features, self.roi_features)), proposals, batch.image_sizes

    def _roi_layout(self, roi_features: list[Tensor]) -> list[Tensor]:
        """The RoI feature maps in the layout ``roi_align`` reads (it copies channels-last input on every
        call): converted once here, however many poolers (box, mask) read them."""
        return [_contiguous_from_channels_last(f) for f in roi_features] if self.channels_last else roi_features

    def raw_outputs(self, images: list[Tensor]) -> RawDetections:
        """The network's part of inference: resize and batch, features, proposals, the box head's outputs."""
        roi_features, proposals, image_sizes = self.propose(images)
        logits, deltas = self.roi_heads.box_outputs(roi_features, proposals)
        return RawDetections(logits, deltas, proposals, image_sizes, original_sizes_of(images))

    def postprocess(self, raw: RawDetections) -> list[Prediction]:
        """Prediction dicts from :meth:`raw_outputs`: box decoding, thresholds, NMS, rescaling to each input."""
        predictions = self.roi_heads.postprocess(raw.logits, raw.deltas, raw.proposals, raw.image_sizes)
        return self.transform.rescale_predictions(predictions, raw.image_sizes, raw.original_sizes)

    def loss(self, images: list[Tensor], targets: list[Target]) -> dict[str, Tensor]:
        """Named scalar losses for ``images`` and their ``targets``."""
        return self(images, targets)

    @torch.no_grad()
    def predict(self, images: list[Tensor]) -> list[Prediction]:
        """Predictions for ``images`` in their own pixel frames (no gradient)."""
        return self(images)


def _contiguous_from_channels_last(feature: Tensor) -> Tensor:
    """``feature.contiguous()`` for a channels-last ``[N, C, H, W]`` map: the same values, faster when large.

    Read as ``N`` ``[H * W, C]`` matrices, the copy is a matrix transpose, which torch copies in cache-sized
    blocks; the generic strided copy of ``contiguous()`` does not. P2 of an 800 x 1088 input (256 x 200 x
    272): 70 against 117 ms (2 threads, AMD EPYC); P3 (a quarter of that, mostly in cache): 9.6 against
    8.4 ms, so smaller maps keep ``contiguous()``.
    """
    if (feature.dim() != 4 or feature.numel() < BLOCKED_TRANSPOSE_MIN_ELEMENTS or feature.is_contiguous()
            or not feature.is_contiguous(memory_format=torch.channels_last)):
        return feature.contiguous()
    n, c, h, w = feature.shape
    copied = feature.new_empty((n, c, h * w))
    for target, matrix in zip(copied, feature.permute(0, 2, 3, 1).reshape(n, h * w, c), strict=True):
        target.copy_(matrix.t())
    return copied.view(n, c, h, w)


def _check_levels(names: Sequence[str], available: dict[str, int], argument: str) -> None:
    unknown = [name for name in names if name not in available]
    if not names or unknown:
        raise ValueError(f"{argument} must name feature maps among {list(available)}, got {list(names)}")
    channels = {available[name] for name in names}
    if len(channels) != 1:
        raise ValueError(
            f"{argument} levels must have the same channel count, got { {n: available[n] for n in names} }"
        )


DEFAULT_RPN, DEFAULT_ROI_HEADS, DEFAULT_TRANSFORM = RPNSettings(), RoIHeadSettings(), TransformSettings()


def build_faster_rcnn(
    *,
    num_classes: int,
    backbone: BackboneSection,
    neck: NeckSection,
    rpn: RPNSettings | Mapping[str, Any] = DEFAULT_RPN,
    roi_heads: RoIHeadSettings | Mapping[str, Any] = DEFAULT_ROI_HEADS,
    transform: TransformSettings | Mapping[str, Any] = DEFAULT_TRANSFORM,
) -> FasterRCNN:
    """Faster R-CNN from one section per part.

    ``num_classes``: object classes without background. ``backbone``: a registered backbone's section (its
    builder's options; ``out_levels`` are the levels fed to the neck, or used directly without one).
    ``neck``: a registered neck's section (``{name: fpn, out_channels: 256}``; its ``in_channels`` /
    ``in_strides`` come from the backbone) or ``None``. ``rpn``, ``roi_heads``, ``transform``:
    ``RPNSettings``, ``RoIHeadSettings``, ``TransformSettings`` or mappings of their fields (missing fields
    keep the dataclass defaults, torchvision's). A registered recipe (``RECIPES``) merges the sections it is
    given over its own defaults per part (see ``structured.config.Recipe``).
    """
    if num_classes < 1:
        raise ValueError(
            f"num_classes counts object classes without background and must be >= 1, got {num_classes}"
        )
    check_part_section(backbone, "backbone")
    if neck is not None:
        check_part_section(neck, "neck")
    rpn = settings_from(RPNSettings, rpn, "rpn")
    roi_heads = settings_from(RoIHeadSettings, roi_heads, "roi_heads")
    transform = settings_from(TransformSettings, transform, "transform")
    trunk, built_neck, channels, strides = build_backbone_and_neck(backbone, neck)
    _check_levels(rpn.features, channels, "rpn.features")
    _check_levels(roi_heads.features, channels, "roi_heads.features")
    return FasterRCNN(
        trunk,
        built_neck,
        build_rpn(rpn, channels[rpn.features[0]]),
        build_roi_heads(roi_heads, channels, strides, num_classes),
        DetectionTransform(transform.min_size, transform.max_size, transform.image_mean, transform.image_std),
        rpn.features,
        roi_heads.features,
    )


C2_TO_C5 = ("c2", "c3", "c4", "c5")
FROZEN_RESNET = dict(out_levels=C2_TO_C5, frozen_stages=2, norm_layer="frozen_bn")
"""torchvision's detection ResNets: C2..C5 to the FPN, stem and first stage frozen, frozen batch norms."""
_MOBILENET_FPN = dict(
    num_classes=90,
    backbone=dict(name="mobilenet_v3_large", out_levels=("c5_entry", "c5"), frozen_stages=3,
                  norm_layer="frozen_bn", norm_eps=1e-5),
    neck=dict(name="fpn"),
    rpn=dict(features=("p5_entry", "p5", "p6"), anchor_sizes=((32, 64, 128, 256, 512),) * 3,
             aspect_ratios=(ASPECT_RATIOS,) * 3),
    roi_heads=dict(features=("p5_entry", "p5")),
)

RECIPES: dict[str, dict] = {
    "faster_rcnn_r50_fpn": dict(
        num_classes=90,
        backbone=dict(name="resnet50", **FROZEN_RESNET),
        neck=dict(name="fpn"),
    ),
    "faster_rcnn_r50_fpn_v2": dict(
        num_classes=90,
        backbone=dict(name="resnet50", **FROZEN_RESNET),
        neck=dict(name="fpn", norm_layer="bn"),
        rpn=dict(conv_depth=2),
        roi_heads=dict(head="conv_fc", conv_channels=(256, 256, 256, 256), representation_size=1024, head_norm="bn"),
    ),
    "faster_rcnn_r18_fpn": dict(
        num_classes=90,
        backbone=dict(name="resnet18", **FROZEN_RESNET),
        neck=dict(name="fpn", out_channels=128),
        roi_heads=dict(representation_size=512),
        transform=dict(min_size=512, max_size=853),
    ),
    "faster_rcnn_mobilenet_v3_large_fpn": _MOBILENET_FPN,
    "faster_rcnn_mobilenet_v3_large_320_fpn": {
        **_MOBILENET_FPN,
        "rpn": dict(_MOBILENET_FPN["rpn"], pre_nms_top_n_test=150, post_nms_top_n_test=150, score_thresh=0.05),
        "transform": dict(min_size=320, max_size=640),
    },
    "faster_rcnn_vgg16": dict(
        num_classes=20,
        backbone=dict(name="vgg16", out_levels=("c4",), frozen_stages=2, norm_layer="bn"),
        neck=None,
        rpn=dict(features=("c4",), anchor_sizes=((128, 256, 512),), aspect_ratios=(ASPECT_RATIOS,),
                 pre_nms_top_n_train=12000, pre_nms_top_n_test=6000, post_nms_top_n_test=300),
        roi_heads=dict(features=("c4",), head="vgg", representation_size=4096, batch_size_per_image=128,
                       nms_thresh=0.3),
        transform=dict(min_size=600, max_size=1000),
    ),
}
"""Registered recipes: defaults per part for ``build_faster_rcnn`` (a part's fields not named keep the
settings dataclass's default; the backbone's and neck's options not named keep their builders' defaults)."""

FLAT_RECIPE_KEYS: dict[str, str] = {
    "backbone_levels": "backbone.out_levels",
    "frozen_stages": "backbone.frozen_stages",
    "backbone_norm_layer": "backbone.norm_layer",
    "backbone_norm_eps": "backbone.norm_eps",
    "pretrained_backbone": "backbone.pretrained",
    "fpn_channels": "neck.out_channels (neck: null for none)",
    "fpn_norm_layer": "neck.norm_layer",
    "rpn_features": "rpn.features",
    "anchor_sizes": "rpn.anchor_sizes",
    "aspect_ratios": "rpn.aspect_ratios",
    "rpn_pre_nms_top_n_train": "rpn.pre_nms_top_n_train",
    "rpn_pre_nms_top_n_test": "rpn.pre_nms_top_n_test",
    "rpn_post_nms_top_n_train": "rpn.post_nms_top_n_train",
    "rpn_post_nms_top_n_test": "rpn.post_nms_top_n_test",
    "rpn_nms_thresh": "rpn.nms_thresh",
    "rpn_fg_iou_thresh": "rpn.fg_iou_thresh",
    "rpn_bg_iou_thresh": "rpn.bg_iou_thresh",
    "rpn_batch_size_per_image": "rpn.batch_size_per_image",
    "rpn_positive_fraction": "rpn.positive_fraction",
    "rpn_score_thresh": "rpn.score_thresh",
    "roi_features": "roi_heads.features",
    "box_head": "roi_heads.head",
    "representation_size": "roi_heads.representation_size",
    "box_head_conv_channels": "roi_heads.conv_channels",
    "box_head_norm": "roi_heads.head_norm",
    "roi_output_size": "roi_heads.output_size",
    "roi_sampling_ratio": "roi_heads.sampling_ratio",
    "box_fg_iou_thresh": "roi_heads.fg_iou_thresh",
    "box_bg_iou_thresh": "roi_heads.bg_iou_thresh",
    "box_batch_size_per_image": "roi_heads.batch_size_per_image",
    "box_positive_fraction": "roi_heads.positive_fraction",
    "bbox_reg_weights": "roi_heads.bbox_reg_weights",
    "box_score_thresh": "roi_heads.score_thresh",
    "box_nms_thresh": "roi_heads.nms_thresh",
    "box_detections_per_img": "roi_heads.detections_per_img",
    "min_size": "transform.min_size",
    "max_size": "transform.max_size",
    "image_mean": "transform.image_mean",
    "image_std": "transform.image_std",
}
"""The keyword arguments of the old flat ``build_faster_rcnn`` -> their place in the grouped recipe."""

for _name, _defaults in RECIPES.items():
    MODELS.register(_name)(Recipe(build_faster_rcnn, _defaults, FLAT_RECIPE_KEYS))
