"""Mask R-CNN: Faster R-CNN plus a mask branch that predicts an instance mask for every detection.

``MaskRCNN`` is a :class:`FasterRCNN` (same backbone, neck, RPN and box branch, same state-dict keys)
with a ``MaskBranch``: multi-level RoIAlign to 14x14 over the RoI features, four 3x3 convolutions (256
channels, ReLU; normalised in the v2 layout), a 2x2 stride-2 transposed convolution and a 1x1 predictor
of ``num_classes + 1`` mask logits at 28x28 — torchvision's ``maskrcnn_resnet50_fpn`` (``_v2``) layout.

Training adds ``loss_mask``: for each positive sampled proposal, the mask of the ground-truth instance it
was matched to, cropped to the proposal and resized to 28x28 with RoIAlign (torchvision's
``project_masks_on_boxes``), against the logits of the instance's class, by binary cross-entropy.
Inference: the box branch's detections (resized frame) are pooled again, the mask of the detected class
goes through a sigmoid, and the ``[K, 28, 28]`` maps are pasted into the input image's frame as float
probabilities ``masks [K, H, W]`` (``structured.detection.masks.paste_masks``), the Prediction contract.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from structured.config import Recipe, settings_from
from structured.detection.faster_rcnn import (
    DEFAULT_ROI_HEADS,
    DEFAULT_RPN,
    DEFAULT_TRANSFORM,
    FLAT_RECIPE_KEYS,
    FasterRCNN,
    build_faster_rcnn,
)
from structured.detection.faster_rcnn import RECIPES as FASTER_RECIPES
from structured.detection.masks import paste_masks
from structured.detection.parts import BackboneSection, NeckSection, original_sizes_of
from structured.detection.roi_heads import (
    HEAD_NORMS,
    MultiLevelRoIAlign,
    RoIHeads,
    RoIHeadSettings,
    RoISample,
    conv_norm_relu,
)
from structured.detection.rpn import RegionProposalNetwork, RPNSettings
from structured.detection.transform import DetectionTransform, TransformSettings
from structured.registry import MODELS
from structured.types import Prediction, Target


class MaskPredictor(nn.Module):
    """``[K, C, S, S]`` mask features -> ``[K, num_classes + 1, 2S, 2S]`` mask logits."""

    def __init__(self, in_channels: int, hidden_channels: int, num_classes: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, hidden_channels, 2, stride=2)
        self.logits = nn.Conv2d(hidden_channels, num_classes + 1, 1)
        for layer in (self.upsample, self.logits):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """``[K, 2S, 2S]`` logits of the mask of class ``labels[k]`` for each RoI ``k``.

        Only the wanted class's map is computed (a per-RoI dot product over the hidden channels), not all
        ``num_classes + 1`` maps of the 1x1 convolution; the values are the same up to float rounding.
        """
        hidden = F.relu(self.upsample(features), inplace=True)  # no second [K, C, 2S, 2S] map (80 MB at K = 100)
        weights = self.logits.weight.flatten(1)[labels]
        return torch.einsum("kchw,kc->khw", hidden, weights) + self.logits.bias[labels].view(-1, 1, 1)


class MaskBranch(nn.Module):
    """Pooler, convolutional head and predictor of the mask branch, with its loss and inference.

    Args:
        pooler: a ``MultiLevelRoIAlign`` (14x14 in the paper's and torchvision's models).
        in_channels: channels of the pooled features.
        num_classes: object classes without the background.
        conv_channels: output channels of each 3x3 convolution of the head.
        norm_layer: ``None`` (v1), ``"bn"`` or ``"gn"`` after each convolution (``"bn"``: torchvision's v2).
    """

    def __init__(
        self, pooler: MultiLevelRoIAlign, in_channels: int, num_classes: int,
        conv_channels: Sequence[int] = (256, 256, 256, 256), norm_layer: str | None = None,
    ) -> None:
        super().__init__()
        if norm_layer is not None and norm_layer not in HEAD_NORMS:
            raise ValueError(f"mask head norm_layer must be None or one of {HEAD_NORMS}, got {norm_layer!r}")
        if not conv_channels:
            raise ValueError("the mask head needs at least one convolution (conv_channels)")
        self.pooler = pooler
        channels = [in_channels, *conv_channels]
        self.head = nn.Sequential(*(conv_norm_relu(a, b, norm_layer) for a, b in itertools.pairwise(channels)))
        self.predictor = MaskPredictor(channels[-1], channels[-1], num_classes)

    @property
    def resolution(self) -> int:
        """Side of the predicted masks (twice the pooled side)."""
        return 2 * self.pooler.output_size

    def logits(self, features: list[Tensor], boxes: list[Tensor], labels: Tensor) -> Tensor:
        """``[K, M, M]`` logits of the class-``labels[k]`` mask of box ``k`` of all images (resized frame)."""
        return self.predictor(self.head(self.pooler(features, boxes)), labels)

    def loss(self, features: list[Tensor], sample: RoISample, targets: list[Target]) -> Tensor:
        """Binary cross-entropy of the positive proposals' class masks against their projected instances."""
        proposals, matched, labels = sample.positives()
        logits = self.logits(features, proposals, labels)
        wanted = torch.cat([
            project_masks(target["masks"], boxes, indices, self.resolution)
            for target, boxes, indices in zip(targets, proposals, matched, strict=True)
        ])
        if wanted.numel() == 0:
            return logits.sum() * 0
        return F.binary_cross_entropy_with_logits(logits, wanted)

    def probabilities(self, features: list[Tensor], detections: list[Prediction]) -> list[Tensor]:
        """Per image ``[K_i, M, M]``: the sigmoid of each detection's own class mask."""
        boxes = [detection["boxes"] for detection in detections]
        labels = torch.cat([detection["labels"] for detection in detections])
        chosen = self.logits(features, boxes, labels).sigmoid()
        return list(chosen.split([b.shape[0] for b in boxes]))  # shapes, not len(): traced graphs follow them


def project_masks(masks: Tensor, boxes: Tensor, indices: Tensor, resolution: int) -> Tensor:
    """``[P, M, M]`` training targets: instance ``indices[p]`` of ``masks [N, H, W]`` cropped to ``boxes[p]``.

    RoIAlign (one sample grid per bin, ``aligned=False``) of the 0/1 mask, as torchvision's
    ``project_masks_on_boxes``; ``masks`` and ``boxes`` are in the same (resized) frame.
    """
    if len(boxes) == 0:
        return boxes.new_zeros((0, resolution, resolution))
    rois = torch.cat((indices[:, None].to(boxes.dtype), boxes), dim=1)
    return roi_align(masks[:, None].to(boxes.dtype), rois, (resolution, resolution), 1.0)[:, 0]


@dataclass
class RawMaskDetections:
    """What the network computes before the rescaling and pasting: detections and mask probabilities.

    ``detections`` per image in the resized frame (boxes, scores, labels); ``masks`` per image
    ``[K_i, M, M]`` probabilities in each box's frame; the resized and original image sizes.
    """

    detections: list[Prediction]
    masks: list[Tensor]
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]


class MaskRCNN(FasterRCNN):
    """Faster R-CNN with a mask branch (``mask_branch``); see the module docstring.

    Args: those of :class:`FasterRCNN`, plus ``mask_branch``, a :class:`MaskBranch` pooling from the same
    ``roi_features`` as the box branch. Targets for training need ``masks`` ``[N, H, W]`` (0/1). Class-specific
    tensors: Faster R-CNN's and the mask predictor's logits (one channel per class).
    """

    CLASS_SPECIFIC_TENSORS: ClassVar[dict[str, int]] = {
        **FasterRCNN.CLASS_SPECIFIC_TENSORS, "mask_branch.predictor.logits.": 1,
    }

    def __init__(
        self, backbone: nn.Module, neck: nn.Module | None, rpn: RegionProposalNetwork, roi_heads: RoIHeads,
        transform: DetectionTransform, rpn_features: Sequence[str], roi_features: Sequence[str],
        mask_branch: MaskBranch,
    ) -> None:
        super().__init__(backbone, neck, rpn, roi_heads, transform, rpn_features, roi_features)
        self.mask_branch = mask_branch

    def sample_losses(self, roi_features: list[Tensor], sample: RoISample, targets: list[Target]) -> dict[str, Tensor]:
        """The box branch's losses and ``loss_mask``, on the same sample of proposals."""
        missing = [index for index, target in enumerate(targets) if "masks" not in target]
        if missing:
            raise ValueError(f"Mask R-CNN needs instance 'masks' in every target; targets {missing} have none "
                             "(load the data with masks: data.with_masks=true)")
        return {**super().sample_losses(roi_features, sample, targets),
                "loss_mask": self.mask_branch.loss(roi_features, sample, targets)}

    def raw_outputs(self, images: list[Tensor]) -> RawMaskDetections:
        """The network's part of inference: boxes as Faster R-CNN finds them (resized frame), then masks.

        The mask branch needs the final boxes, so the box post-processing (NMS) runs here, in the network.
        """
        roi_features, proposals, image_sizes = self.propose(images)
        logits, deltas = self.roi_heads.box_outputs(roi_features, proposals)
        detections = self.roi_heads.postprocess(logits, deltas, proposals, image_sizes)
        masks = self.mask_branch.probabilities(roi_features, detections)
        return RawMaskDetections(detections, masks, image_sizes, original_sizes_of(images))

    def postprocess(self, raw: RawMaskDetections) -> list[Prediction]:  # type: ignore[override]
        """Boxes rescaled to each input image and masks pasted there: ``masks [K, H, W]`` probabilities."""
        predictions = self.transform.rescale_predictions(raw.detections, raw.image_sizes, raw.original_sizes)
        for prediction, masks, size in zip(predictions, raw.masks, raw.original_sizes, strict=True):
            prediction["masks"] = paste_masks(masks, prediction["boxes"], size)
        return predictions

    EXPORT_OUTPUTS = ("boxes", "scores", "labels", "masks")


def as_mask_rcnn(model: FasterRCNN, mask_branch: MaskBranch) -> MaskRCNN:
    """A :class:`MaskRCNN` made of ``model``'s parts (shared, not copied) and ``mask_branch``."""
    return MaskRCNN(model.backbone, model.neck, model.rpn, model.roi_heads, model.transform, model.rpn_features,
                    model.roi_features, mask_branch)


@dataclass(frozen=True)
class MaskHeadSettings:
    """The mask branch's settings: a recipe's ``model.mask_head`` section. Defaults are torchvision's.

    Attributes:
        conv_channels: output channels of each 3x3 convolution of the head (four of 256).
        norm_layer: ``None`` (``maskrcnn_resnet50_fpn``), ``"bn"`` (``_v2``) or ``"gn"`` after each one.
        output_size: side of the RoIAlign-pooled features (masks are predicted at twice this side).
        sampling_ratio: RoIAlign sampling points per bin side.
    """

    conv_channels: Sequence[int] = (256, 256, 256, 256)
    norm_layer: str | None = None
    output_size: int = 14
    sampling_ratio: int = 2


DEFAULT_MASK_HEAD = MaskHeadSettings()


def build_mask_rcnn(
    *,
    num_classes: int,
    backbone: BackboneSection,
    neck: NeckSection,
    rpn: RPNSettings | Mapping[str, Any] = DEFAULT_RPN,
    roi_heads: RoIHeadSettings | Mapping[str, Any] = DEFAULT_ROI_HEADS,
    transform: TransformSettings | Mapping[str, Any] = DEFAULT_TRANSFORM,
    mask_head: MaskHeadSettings | Mapping[str, Any] = DEFAULT_MASK_HEAD,
) -> MaskRCNN:
    """Mask R-CNN: ``build_faster_rcnn``'s parts plus ``mask_head`` (``MaskHeadSettings`` or a mapping).

    The mask branch pools from the box branch's ``roi_heads.features``.
    """
    detector = build_faster_rcnn(num_classes=num_classes, backbone=backbone, neck=neck, rpn=rpn,
                                 roi_heads=roi_heads, transform=transform)
    settings = settings_from(MaskHeadSettings, mask_head, "mask_head")
    levels = detector.neck if detector.neck is not None else detector.backbone
    pooler = MultiLevelRoIAlign([levels.strides[name] for name in detector.roi_features], settings.output_size,
                                settings.sampling_ratio)
    branch = MaskBranch(pooler, levels.out_channels[detector.roi_features[0]], num_classes, settings.conv_channels,
                        settings.norm_layer)
    return as_mask_rcnn(detector, branch)


NUCLEI_ANCHORS = ((8,), (16,), (32,), (64,), (128,))
"""Anchor sizes for cell nuclei (DSB2018: most are 8 to 60 px across)."""

RECIPES: dict[str, dict] = {
    "mask_rcnn_r50_fpn": FASTER_RECIPES["faster_rcnn_r50_fpn"],
    "mask_rcnn_r50_fpn_v2": {**FASTER_RECIPES["faster_rcnn_r50_fpn_v2"], "mask_head": dict(norm_layer="bn")},
    "mask_rcnn_mobilenet_v3_large_fpn": FASTER_RECIPES["faster_rcnn_mobilenet_v3_large_fpn"],
    "mask_rcnn_r18_fpn": FASTER_RECIPES["faster_rcnn_r18_fpn"],
    "mask_rcnn_nuclei_r18_fpn": dict(
        num_classes=1,
        backbone=dict(name="resnet18", out_levels=("c2", "c3", "c4", "c5"), frozen_stages=0, norm_layer="bn"),
        neck=dict(name="fpn", out_channels=128, norm_layer="gn"),
        rpn=dict(anchor_sizes=NUCLEI_ANCHORS, pre_nms_top_n_test=2000, post_nms_top_n_test=1000),
        roi_heads=dict(head="conv_fc", conv_channels=(128, 128, 128, 128), representation_size=512,
                       batch_size_per_image=256, detections_per_img=400),
        transform=dict(min_size=512, max_size=853),
        mask_head=dict(conv_channels=(128, 128, 128, 128), norm_layer="gn"),
    ),
}
"""Registered recipes: defaults per part for ``build_mask_rcnn``. The first four are the Faster R-CNN
recipes of the same trunk with torchvision's mask head (``_v2``: batch-normed FPN, two-conv RPN head,
normalised conv box and mask heads; for converted or pretrained weights); the nuclei
recipe learns from scratch: trainable batch norms, GroupNorm FPN and heads, normalised conv box head."""

for _name, _defaults in RECIPES.items():
    MODELS.register(_name)(Recipe(build_mask_rcnn, _defaults, FLAT_RECIPE_KEYS, task="instance"))
