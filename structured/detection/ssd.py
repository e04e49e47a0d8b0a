"""SSD: a one-stage detector — backbone maps plus extra layers, one box and class prediction per default box.

``SSD`` follows the detector contract of docs/architecture.md, like ``FasterRCNN``: ``forward(images,
targets=None)`` takes a list of float ``[3, H, W]`` images in [0, 1]; with targets it returns the named
scalar losses ``loss_localization`` and ``loss_confidence`` (the paper's L_loc and L_conf), without targets a
list of predictions in each input image's pixels — in train or eval mode alike; ``loss`` / ``predict`` are
aliases, ``raw_outputs`` / ``postprocess`` split inference, ``optimize_for_inference()`` prepares it.

The network (Liu et al. 2016): every image is resized to ``size x size`` (``FixedSizeTransform``); the
backbone's maps named in ``head.features`` (VGG16's conv4_3 and fc7: ``c3`` and ``c4`` of ``vgg16_ssd``;
MobileNetV3's ``c4_expansion`` and ``c5``; any registered backbone's levels), those in ``head.l2_normalized`` rescaled by
an L2 norm with a learnable per-channel scale (initialised to 20), then ``head.extras`` layers that each
halve the last map (``[mid, out, kernel, stride, padding]``: a 1x1 convolution to ``mid`` channels, then a
``kernel`` convolution to ``out``). On each map a 3x3 convolution predicts, for each of its ``A`` default
boxes per cell, ``num_classes + 1`` logits and 4 box deltas. ``head.style`` ``ssd`` uses plain convolutions
with ReLU (Xavier init); ``ssdlite`` (Sandler et al. 2018) uses depthwise-separable ones — extras 1x1 /
3x3 depthwise / 1x1, predictors 3x3 depthwise + 1x1, with batch norm and ReLU6 (normal init, std 0.03).

Training: ``DefaultBoxMatcher`` assigns each ground-truth box its best default box and every default box
with IoU >= ``loss.iou_threshold`` its best ground truth; positives regress their box coded with
``BoxCoder.from_variances(default_boxes.variances)`` (smooth L1); the classification loss is the
cross-entropy of the positives plus the ``loss.negative_ratio`` times as many hardest negatives per image
(hard negative mining); both are summed and divided by the number of positives in the batch.

Inference: softmax scores, boxes decoded and clipped to the resized image, per class the
``postprocess.topk_candidates`` best scores above ``postprocess.score_thresh``, then one
``structured.boxes.batched_nms`` call per image (classes kept apart) and the ``detections_per_img`` best.

``build_ssd`` takes one section per part (``backbone``, ``neck``, ``head``, ``default_boxes``, ``loss``,
``postprocess``, ``transform``); ``RECIPES`` are the registered ones (``configs/ssd/``). torchvision's
``ssd300_vgg16`` and ``ssdlite320_mobilenet_v3_large`` checkpoints load through
``structured.convert.torchvision`` and give its detections.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structured.boxes import (
    BoxCoder,
    DefaultBoxGenerator,
    DefaultBoxMatcher,
    batched_nms,
    box_iou,
    clip_boxes,
)
from structured.config import Recipe, settings_from
from structured.detection.parts import (
    BackboneSection,
    InferenceModel,
    NeckSection,
    build_backbone_and_neck,
    check_counts,
    check_fractions,
    check_part_section,
    extract_features,
    original_sizes_of,
    select_features,
    without_crowd,
)
from structured.detection.transform import FixedSizeTransform, FixedSizeTransformSettings
from structured.registry import MODELS
from structured.types import Prediction, Target

HEAD_STYLES = ("ssd", "ssdlite")
L2_SCALE = 20.0
LITE_NORM_EPS, LITE_NORM_MOMENTUM = 1e-3, 0.03
LITE_INIT_STD = 0.03
EXTRA_FIELDS = ("mid", "out", "kernel", "stride", "padding")


@dataclass(frozen=True)
class SSDHeadSettings:
    """The maps the head predicts on and its layers: a recipe's ``model.head``.

    Attributes:
        features: the backbone's (or neck's) maps the head takes, finest first.
        l2_normalized: those of ``features`` rescaled by an L2 norm with a learnable scale (VGG's conv4_3).
        extras: one ``[mid, out, kernel, stride, padding]`` per extra map, each computed from the previous one.
        style: ``ssd`` (plain convolutions, ReLU) or ``ssdlite`` (depthwise-separable, batch norm, ReLU6).
    """

    features: Sequence[str] = ("c3", "c4")
    l2_normalized: Sequence[str] = ("c3",)
    extras: Sequence[Sequence[int]] = ((256, 512, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 1, 0),
                                       (128, 256, 3, 1, 0))
    style: str = "ssd"


@dataclass(frozen=True)
class DefaultBoxSettings:
    """The default boxes and their box coding: a recipe's ``model.default_boxes`` (SSD300's by default).

    Attributes:
        aspect_ratios: per map, the ratios ``a`` beyond 1 (each adds a box ``a`` and ``1 / a``).
        min_scale, max_scale: ``s_min`` and ``s_max`` of the linear scales, used when ``scales`` is empty.
        scales: one scale per map plus one (the last sizes the last map's extra box), or empty.
        steps: per map, the distance between cell centres in input pixels, or empty (input / map size).
        clip: clip the normalised box sizes to [0, 1].
        variances: the coder's ``(centre, size)`` variances.
    """

    aspect_ratios: Sequence[Sequence[float]] = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
    min_scale: float = 0.2
    max_scale: float = 0.9
    scales: Sequence[float] = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
    steps: Sequence[float] = (8, 16, 32, 64, 100, 300)
    clip: bool = True
    variances: Sequence[float] = (0.1, 0.2)


@dataclass(frozen=True)
class SSDLossSettings:
    """Matching and the loss: a recipe's ``model.loss``.

    Attributes:
        iou_threshold: IoU at which a default box becomes a positive of its best ground-truth box.
        negative_ratio: hard negatives kept per positive, per image.
    """

    iou_threshold: float = 0.5
    negative_ratio: float = 3.0


@dataclass(frozen=True)
class SSDPostprocessSettings:
    """Turning scores and deltas into detections: a recipe's ``model.postprocess`` (torchvision's SSD300).

    Attributes:
        score_thresh: class probability a detection must exceed, in [0, 1].
        topk_candidates: best scores kept per class before NMS, at least 1.
        nms_thresh: IoU above which NMS suppresses a box of the same class, in [0, 1].
        detections_per_img: detections kept per image after NMS, at least 1.
    """

    score_thresh: float = 0.01
    topk_candidates: int = 400
    nms_thresh: float = 0.45
    detections_per_img: int = 200

    def __post_init__(self) -> None:
        check_fractions(self, "score_thresh", "nms_thresh")
        check_counts(self, "topk_candidates", "detections_per_img")


def _xavier_init(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def _normal_init(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, std=LITE_INIT_STD)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def _conv_bn_relu6(in_channels: int, out_channels: int, kernel: int, stride: int = 1, padding: int | None = None,
                   groups: int = 1) -> nn.Sequential:
    padding = (kernel - 1) // 2 if padding is None else padding
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels, eps=LITE_NORM_EPS, momentum=LITE_NORM_MOMENTUM),
        nn.ReLU6(inplace=True),
    )


def extra_block(in_channels: int, extra: Sequence[int], style: str) -> nn.Sequential:
    """One extra map's layers from ``[mid, out, kernel, stride, padding]`` in ``style`` (see the module docstring)."""
    mid, out, kernel, stride, padding = extra
    if style == "ssd":
        return nn.Sequential(nn.Conv2d(in_channels, mid, 1), nn.ReLU(inplace=True),
                             nn.Conv2d(mid, out, kernel, stride, padding), nn.ReLU(inplace=True))
    return nn.Sequential(_conv_bn_relu6(in_channels, mid, 1), _conv_bn_relu6(mid, mid, kernel, stride, padding, mid),
                         _conv_bn_relu6(mid, out, 1))


def prediction_layer(in_channels: int, out_channels: int, style: str) -> nn.Module:
    """A map's 3x3 predictor: a convolution (``ssd``) or depthwise 3x3 + BN + ReLU6 then 1x1 (``ssdlite``)."""
    if style == "ssd":
        return nn.Conv2d(in_channels, out_channels, 3, padding=1)
    return nn.Sequential(_conv_bn_relu6(in_channels, in_channels, 3, groups=in_channels),
                         nn.Conv2d(in_channels, out_channels, 1))


class L2Norm(nn.Module):
    """Each position's channel vector scaled to unit L2 norm, then by a learnable per-channel ``scale``."""

    def __init__(self, channels: int, scale: float = L2_SCALE) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), scale))

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[B, C, H, W]`` normalised over ``C`` and rescaled."""
        return self.scale.view(1, -1, 1, 1) * F.normalize(x, dim=1)


class SSDHead(nn.Module):
    """Per map, class logits and box deltas for its ``A`` default boxes per cell, flattened over all maps.

    Outputs are ``[B, sum H*W*A, num_classes + 1]`` and ``[B, sum H*W*A, 4]``, ordered by map, row, column,
    default box — ``DefaultBoxGenerator``'s order.
    """

    def __init__(self, in_channels: Sequence[int], boxes_per_cell: Sequence[int], num_classes: int,
                 style: str) -> None:
        super().__init__()
        self.num_columns = num_classes + 1
        self.classification = nn.ModuleList(
            prediction_layer(c, a * self.num_columns, style) for c, a in zip(in_channels, boxes_per_cell, strict=True))
        self.regression = nn.ModuleList(
            prediction_layer(c, a * 4, style) for c, a in zip(in_channels, boxes_per_cell, strict=True))
        (_xavier_init if style == "ssd" else _normal_init)(self)
        # State-dict prefixes (inside the head) of the layers whose outputs are per default box and class.
        last = "" if style == "ssd" else "1."
        self.class_specific_prefixes = [f"classification.{index}.{last}" for index in range(len(self.classification))]

    @staticmethod
    def _flatten(outputs: Tensor, columns: int) -> Tensor:
        batch, _, height, width = outputs.shape
        outputs = outputs.view(batch, -1, columns, height, width)  # [B, A, K, H, W]
        return outputs.permute(0, 3, 4, 1, 2).reshape(batch, -1, columns)  # [B, H*W*A, K]

    def forward(self, maps: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``(logits, deltas)`` for the feature ``maps``."""
        logits = [self._flatten(layer(x), self.num_columns) for layer, x in zip(self.classification, maps, strict=True)]
        deltas = [self._flatten(layer(x), 4) for layer, x in zip(self.regression, maps, strict=True)]
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


@dataclass
class RawSSDOutputs:
    """What the network computes for a batch before post-processing (see ``SSD.raw_outputs``).

    ``logits [B, D, C+1]`` and ``deltas [B, D, 4]`` for the ``D`` default boxes ``[D, 4]`` (xyxy in the resized
    frame), the resized and the original image sizes.
    """

    logits: Tensor
    deltas: Tensor
    default_boxes: Tensor
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]


class SSD(InferenceModel):
    """One-stage detector (see the module docstring).

    Args:
        backbone: image ``[B, 3, H, W]`` -> ``OrderedDict`` of named feature maps.
        neck: optional module mapping the backbone's dict to another dict, or ``None``.
        feature_names: the maps the head takes from the backbone (or neck), finest first.
        l2_norms: ``L2Norm`` per map name to rescale.
        extras: layers computing each extra map from the previous map.
        head: the class and box predictors.
        default_boxes: the default box generator (one entry per map: features, then extras).
        transform: the fixed-size resize and normalisation.
        loss_settings, postprocess_settings: matching and loss; detection thresholds.
        variances: the box coder's variances.
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module | None,
        feature_names: Sequence[str],
        l2_norms: Mapping[str, L2Norm],
        extras: Sequence[nn.Module],
        head: SSDHead,
        default_boxes: DefaultBoxGenerator,
        transform: FixedSizeTransform,
        loss_settings: SSDLossSettings,
        postprocess_settings: SSDPostprocessSettings,
        variances: Sequence[float],
    ) -> None:
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.neck = neck
        self.l2_norms = nn.ModuleDict(dict(l2_norms))
        self.extras = nn.ModuleList(extras)
        self.head = head
        # The class-specific tensors for fine-tuning on other classes (engine/transfer.py): each map's last
        # classification layer, whose outputs are laid out [default boxes per cell, num_classes + 1].
        self.CLASS_SPECIFIC_TENSORS = {f"head.{prefix}": 1 for prefix in head.class_specific_prefixes}
        self.default_boxes = default_boxes
        self.feature_names = list(feature_names)
        self.box_coder = BoxCoder.from_variances(variances)
        self.matcher = DefaultBoxMatcher(loss_settings.iou_threshold)
        self.negative_ratio = float(loss_settings.negative_ratio)
        self.score_thresh = float(postprocess_settings.score_thresh)
        self.topk_candidates = int(postprocess_settings.topk_candidates)
        self.nms_thresh = float(postprocess_settings.nms_thresh)
        self.detections_per_img = int(postprocess_settings.detections_per_img)

    def feature_maps(self, images: Tensor) -> list[Tensor]:
        """The head's maps for a batch ``[B, 3, size, size]``: the named features (L2-normalised where set), then the extras."""
        features = extract_features(self.backbone, self.neck, images, self.channels_last)
        selected = select_features(features, self.feature_names)
        maps = [self.l2_norms[name](feature) if name in self.l2_norms else feature
                for name, feature in zip(self.feature_names, selected, strict=True)]
        x = features[self.feature_names[-1]]
        for extra in self.extras:
            x = extra(x)
            maps.append(x)
        return maps

    def _network(self, images: list[Tensor], targets: list[Target] | None) -> tuple[Tensor, Tensor, Tensor, list, list]:
        batch, targets = self.transform(images, targets)
        maps = self.feature_maps(batch.tensors)
        logits, deltas = self.head(maps)
        boxes = self.default_boxes([tuple(x.shape[-2:]) for x in maps], tuple(batch.tensors.shape[-2:]),
                                   dtype=deltas.dtype, device=deltas.device)
        return logits, deltas, boxes, batch.image_sizes, targets

    def forward(
        self, images: list[Tensor], targets: list[Target] | None = None
    ) -> dict[str, Tensor] | list[Prediction]:
        """Losses (dict of named scalars) when ``targets`` are given, else one prediction per image.

        Inference is ``postprocess(raw_outputs(images))``.
        """
        if targets is None:
            return self.postprocess(self.raw_outputs(images))
        targets = [without_crowd(target) for target in targets]
        logits, deltas, boxes, _, targets = self._network(images, targets)
        return self.compute_loss(logits, deltas, boxes, targets)

    def match(self, default_boxes: Tensor, targets: list[Target]) -> list[Tensor]:
        """Per image, ``[D]`` matched ground-truth index of each default box, or -1 for background."""
        return [self.matcher(box_iou(target["boxes"], default_boxes)) for target in targets]

    def compute_loss(self, logits: Tensor, deltas: Tensor, default_boxes: Tensor,
                     targets: list[Target]) -> dict[str, Tensor]:
        """``loss_localization`` and ``loss_confidence`` of head outputs against ``targets`` (resized frame)."""
        matches = torch.stack(self.match(default_boxes, targets))  # [B, D]
        positive = matches >= 0
        labels = torch.zeros_like(matches)
        target_deltas = []
        for image, (target, image_matches) in enumerate(zip(targets, matches, strict=True)):
            image_positive = positive[image]
            matched = image_matches[image_positive]
            labels[image, image_positive] = target["labels"][matched]
            target_deltas.append(self.box_coder.encode(target["boxes"][matched], default_boxes[image_positive]))
        num_positive = max(1, int(positive.sum()))
        localization = F.smooth_l1_loss(deltas[positive], torch.cat(target_deltas), reduction="sum")
        cross_entropy = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
        negatives = hard_negatives(cross_entropy, positive, self.negative_ratio)
        confidence = cross_entropy[positive].sum() + cross_entropy[negatives].sum()
        return {"loss_localization": localization / num_positive, "loss_confidence": confidence / num_positive}

    def raw_outputs(self, images: list[Tensor]) -> RawSSDOutputs:
        """The network's part of inference: resize, feature maps, the head's outputs, the default boxes."""
        logits, deltas, boxes, image_sizes, _ = self._network(images, None)
        return RawSSDOutputs(logits, deltas, boxes, image_sizes, original_sizes_of(images))

    def postprocess(self, raw: RawSSDOutputs) -> list[Prediction]:
        """Prediction dicts from :meth:`raw_outputs`: decoding, thresholds, NMS, rescaling to each input."""
        scores = F.softmax(raw.logits, dim=-1)
        predictions = [
            self.detect(image_scores, self.box_coder.decode(image_deltas, raw.default_boxes), size)
            for image_scores, image_deltas, size in zip(scores, raw.deltas, raw.image_sizes, strict=True)
        ]
        return self.transform.rescale_predictions(predictions, raw.image_sizes, raw.original_sizes)

    def detect(self, scores: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Prediction:
        """One image's detections from ``scores [D, C+1]`` and decoded ``boxes [D, 4]`` (resized frame)."""
        boxes = clip_boxes(boxes, image_size)
        class_scores = scores[:, 1:].t()  # [C, D]
        top_scores, top_boxes = class_scores.topk(min(self.topk_candidates, class_scores.shape[1]), dim=1)
        labels = torch.arange(1, class_scores.shape[0] + 1, device=scores.device)[:, None].expand_as(top_boxes)
        kept = top_scores > self.score_thresh
        candidate_boxes, candidate_scores, candidate_labels = boxes[top_boxes[kept]], top_scores[kept], labels[kept]
        keep = batched_nms(candidate_boxes, candidate_scores, candidate_labels, self.nms_thresh)
        keep = keep[: self.detections_per_img]
        return {"boxes": candidate_boxes[keep], "scores": candidate_scores[keep], "labels": candidate_labels[keep]}

    def loss(self, images: list[Tensor], targets: list[Target]) -> dict[str, Tensor]:
        """Named scalar losses for ``images`` and their ``targets``."""
        return self(images, targets)

    @torch.no_grad()
    def predict(self, images: list[Tensor]) -> list[Prediction]:
        """Predictions for ``images`` in their own pixel frames (no gradient)."""
        return self(images)


def hard_negatives(cross_entropy: Tensor, positive: Tensor, negative_ratio: float) -> Tensor:
    """``[B, D]`` mask of each image's ``negative_ratio * positives`` highest-loss negatives (hard negative mining)."""
    negative_loss = cross_entropy.detach().masked_fill(positive, -math.inf)
    rank = negative_loss.argsort(dim=1, descending=True).argsort(dim=1)  # 0 for the hardest
    quota = negative_ratio * positive.sum(dim=1, keepdim=True)
    return (rank < quota) & ~positive


def _check_settings(head: SSDHeadSettings, boxes: DefaultBoxSettings, channels: dict[str, int]) -> None:
    if head.style not in HEAD_STYLES:
        raise ValueError(f"head.style must be one of {HEAD_STYLES}, got {head.style!r}")
    unknown = [name for name in (*head.features, *head.l2_normalized) if name not in channels]
    if isinstance(head.features, str) or not head.features or unknown:
        raise ValueError(f"head.features and head.l2_normalized must name feature maps among {list(channels)}, "
                         f"got {list(head.features)} and {list(head.l2_normalized)}")
    bad = [list(extra) for extra in head.extras if len(extra) != len(EXTRA_FIELDS) or min(extra) < 0]
    if bad:
        raise ValueError(f"head.extras entries must be [{', '.join(EXTRA_FIELDS)}] non-negative integers, got {bad}")
    num_maps = len(head.features) + len(head.extras)
    if len(boxes.aspect_ratios) != num_maps:
        raise ValueError(f"default_boxes.aspect_ratios must have one entry per map: {num_maps} ({len(head.features)} "
                         f"features + {len(head.extras)} extras), got {len(boxes.aspect_ratios)}")


def _build_extras(head: SSDHeadSettings, in_channels: int) -> tuple[list[nn.Sequential], list[int]]:
    extras, out_channels = [], []
    for extra in head.extras:
        extras.append(extra_block(in_channels, [int(value) for value in extra], head.style))
        in_channels = int(extra[1])
        out_channels.append(in_channels)
    for extra in extras:
        (_xavier_init if head.style == "ssd" else _normal_init)(extra)
    return extras, out_channels


DEFAULT_HEAD, DEFAULT_BOXES = SSDHeadSettings(), DefaultBoxSettings()
DEFAULT_LOSS, DEFAULT_POSTPROCESS = SSDLossSettings(), SSDPostprocessSettings()
DEFAULT_TRANSFORM = FixedSizeTransformSettings()


def build_ssd(
    *,
    num_classes: int,
    backbone: BackboneSection,
    neck: NeckSection = None,
    head: SSDHeadSettings | Mapping[str, Any] = DEFAULT_HEAD,
    default_boxes: DefaultBoxSettings | Mapping[str, Any] = DEFAULT_BOXES,
    loss: SSDLossSettings | Mapping[str, Any] = DEFAULT_LOSS,
    postprocess: SSDPostprocessSettings | Mapping[str, Any] = DEFAULT_POSTPROCESS,
    transform: FixedSizeTransformSettings | Mapping[str, Any] = DEFAULT_TRANSFORM,
) -> SSD:
    """SSD from one section per part.

    ``num_classes``: object classes without background. ``backbone`` / ``neck``: registered parts' sections
    (``neck: None`` for none). ``head``, ``default_boxes``, ``loss``, ``postprocess``, ``transform``:
    ``SSDHeadSettings``, ``DefaultBoxSettings``, ``SSDLossSettings``, ``SSDPostprocessSettings``,
    ``FixedSizeTransformSettings`` or mappings of their fields; a registered recipe (``RECIPES``) merges the
    sections it is given over its own defaults per part.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes counts object classes without background and must be >= 1, got {num_classes}")
    check_part_section(backbone, "backbone")
    if neck is not None:
        check_part_section(neck, "neck")
    head = settings_from(SSDHeadSettings, head, "head")
    default_boxes = settings_from(DefaultBoxSettings, default_boxes, "default_boxes")
    loss = settings_from(SSDLossSettings, loss, "loss")
    postprocess = settings_from(SSDPostprocessSettings, postprocess, "postprocess")
    transform = settings_from(FixedSizeTransformSettings, transform, "transform")
    trunk, built_neck, channels, _ = build_backbone_and_neck(backbone, neck)
    _check_settings(head, default_boxes, channels)
    extras, extra_channels = _build_extras(head, channels[head.features[-1]])
    generator = DefaultBoxGenerator(default_boxes.aspect_ratios, default_boxes.min_scale, default_boxes.max_scale,
                                    default_boxes.scales or None, default_boxes.steps or None, default_boxes.clip)
    in_channels = [channels[name] for name in head.features] + extra_channels
    return SSD(
        trunk,
        built_neck,
        head.features,
        {name: L2Norm(channels[name]) for name in head.l2_normalized},
        extras,
        SSDHead(in_channels, generator.num_anchors_per_location(), num_classes, head.style),
        generator,
        FixedSizeTransform(transform.size, transform.image_mean, transform.image_std),
        loss,
        postprocess,
        default_boxes.variances,
    )


VGG_MEAN, VGG_STD = (0.48235, 0.45882, 0.40784), (1 / 255, 1 / 255, 1 / 255)
"""torchvision's SSD VGG16 normalisation: the ImageNet mean pixel subtracted from 0..255 values."""
_VGG_BACKBONE = dict(name="vgg16_ssd", out_levels=("c3", "c4"), frozen_stages=1)
_LITE_EXTRAS = ((256, 512, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 2, 1), (64, 128, 3, 2, 1))
_LITE = dict(
    head=dict(l2_normalized=(), extras=_LITE_EXTRAS, style="ssdlite"),
    default_boxes=dict(aspect_ratios=((2, 3),) * 6, min_scale=0.2, max_scale=0.95, scales=(), steps=()),
    postprocess=dict(score_thresh=0.001, topk_candidates=300, nms_thresh=0.55, detections_per_img=300),
    transform=dict(size=320, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)),
)

RECIPES: dict[str, dict] = {
    "ssd300_vgg16": dict(
        num_classes=90,
        backbone=_VGG_BACKBONE,
        transform=dict(size=300, image_mean=VGG_MEAN, image_std=VGG_STD),
    ),
    "ssd512_vgg16": dict(
        num_classes=90,
        backbone=_VGG_BACKBONE,
        head=dict(extras=((256, 512, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 2, 1),
                          (128, 256, 4, 1, 1))),
        default_boxes=dict(aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,)),
                           scales=(0.04, 0.1, 0.26, 0.42, 0.58, 0.74, 0.9, 1.06),
                           steps=(8, 16, 32, 64, 128, 256, 512)),
        transform=dict(size=512, image_mean=VGG_MEAN, image_std=VGG_STD),
    ),
    "ssd300_resnet50": dict(
        num_classes=90,
        backbone=dict(name="resnet50", out_levels=("c3", "c4", "c5"), frozen_stages=1),
        head=dict(features=("c3", "c4", "c5"), l2_normalized=(),
                  extras=((256, 512, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 1, 0))),
        default_boxes=dict(steps=()),
    ),
    "ssdlite320_mobilenet_v3_large": {
        "num_classes": 90,
        "backbone": dict(name="mobilenet_v3_large_reduced", out_levels=("c4_expansion", "c5")),
        **_LITE,
        "head": dict(_LITE["head"], features=("c4_expansion", "c5")),
    },
    "ssdlite320_mobilenet_v2": {
        "num_classes": 90,
        "backbone": dict(name="mobilenet_v2", out_levels=("c4", "c5")),
        **_LITE,
        "head": dict(_LITE["head"], features=("c4", "c5")),
    },
}
"""Registered recipes: defaults per part for ``build_ssd`` (a part's fields not named keep the settings
dataclass's default, SSD300's; the backbone's options not named keep its builder's defaults)."""

for _name, _defaults in RECIPES.items():
    MODELS.register(_name)(Recipe(build_ssd, _defaults))
