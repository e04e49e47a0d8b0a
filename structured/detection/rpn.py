"""Region proposal network: objectness and box deltas per anchor, proposal selection, and its loss.

``RPNHead`` runs one shared 3x3 conv (+ReLU) and two 1x1 convs over every feature level and returns
the predictions of all anchors of all levels flattened in the anchor generator's order: objectness
logits ``[B, T]`` and deltas ``[B, T, 4]`` (``T`` = anchors over all levels).

``RegionProposalNetwork`` turns them into proposals per image: per level the ``pre_nms_top_n`` best
anchors, decoded with ``BoxCoder`` (weights 1), clipped to the image, boxes smaller than ``min_size``
dropped, scores (sigmoid) under ``score_thresh`` dropped, NMS per level at ``nms_thresh``, then the
``post_nms_top_n`` best overall. Training and test modes have their own top-n settings (chosen by
``self.training``). Given targets, ``loss`` matches anchors to ground truth by IoU (fg/bg thresholds,
low-quality matches allowed), samples a balanced mini-batch and returns ``loss_objectness`` (binary
cross-entropy) and ``loss_rpn_box_reg`` (smooth L1, beta 1/9, over positives, divided by the number of
sampled anchors). An image without ground-truth boxes contributes negatives only.

``RPNSettings`` is the RPN's part of a detector recipe (``model.rpn``) and ``build_rpn`` builds the network
from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structured.boxes.anchors import AnchorGenerator
from structured.boxes.coder import BoxCoder
from structured.boxes.formats import clip_boxes, remove_small_boxes
from structured.boxes.iou import box_iou
from structured.boxes.matcher import BalancedSampler, IoUMatcher
from structured.boxes.nms import batched_nms
from structured.detection.parts import check_counts, check_fractions
from structured.detection.transform import ImageBatch
from structured.types import Target


class RPNHead(nn.Module):
    """Shared conv head predicting ``A`` objectness logits and ``4A`` deltas per location.

    Args:
        in_channels: channels of every input level (the same for all levels).
        num_anchors: anchors per location ``A``.
        conv_depth: number of 3x3 conv + ReLU layers before the two predictors.
    """

    def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(conv_depth):
            layers += [nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.ReLU(inplace=True)]
        self.conv = nn.Sequential(*layers)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Objectness ``[B, T]`` and deltas ``[B, T, 4]`` over all anchors of all levels."""
        logits, deltas = [], []
        for feature in features:
            hidden = self.conv(feature)
            batch, _, height, width = feature.shape
            logits.append(
                self.objectness(hidden).permute(0, 2, 3, 1).reshape(batch, -1)
            )  # [B,A,H,W] -> [B,HWA]
            level_deltas = self.deltas(hidden).view(batch, -1, 4, height, width)  # [B, A, 4, H, W]
            deltas.append(level_deltas.permute(0, 3, 4, 1, 2).reshape(batch, -1, 4))  # -> [B, HWA, 4]
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


@dataclass(frozen=True)
class ProposalSettings:
    """How many proposals the RPN keeps in one mode: per level before NMS, in total after NMS."""

    pre_nms_top_n: int
    post_nms_top_n: int


FPN_ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))
ASPECT_RATIOS = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class RPNSettings:
    """The region proposal network's settings: a recipe's ``model.rpn`` section. Defaults are torchvision's.

    Attributes:
        features: names of the feature maps the RPN sees, one anchor level each (same channel count).
        anchor_sizes, aspect_ratios: the anchors of each level, one entry per feature (the same number of
            anchors on every level).
        pre_nms_top_n_train, pre_nms_top_n_test: proposals kept per level before NMS, in training / eval mode.
        post_nms_top_n_train, post_nms_top_n_test: proposals kept per image after NMS, in training / eval mode
            (each at least 1).
        nms_thresh: IoU threshold of the NMS applied per level, in [0, 1].
        fg_iou_thresh, bg_iou_thresh: anchors with IoU >= fg are positive, < bg negative, others ignored.
        batch_size_per_image, positive_fraction: the balanced sample of anchors per image for the loss.
        score_thresh: proposals with a lower objectness probability are dropped, in [0, 1].
        conv_depth: 3x3 convolutions (+ ReLU) of the head before its predictors (2 in torchvision's ``_v2``).
    """

    features: Sequence[str] = ("p2", "p3", "p4", "p5", "p6")
    anchor_sizes: Sequence[Sequence[float]] = FPN_ANCHOR_SIZES
    aspect_ratios: Sequence[Sequence[float]] = (ASPECT_RATIOS,) * 5
    pre_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 2000
    post_nms_top_n_test: int = 1000
    nms_thresh: float = 0.7
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    score_thresh: float = 0.0
    conv_depth: int = 1

    def __post_init__(self) -> None:
        check_fractions(self, "nms_thresh", "score_thresh")
        check_counts(self, "pre_nms_top_n_train", "pre_nms_top_n_test", "post_nms_top_n_train", "post_nms_top_n_test")


class RegionProposalNetwork(nn.Module):
    """Anchors + head + proposal selection + loss.

    Args:
        anchor_generator: anchors for the feature levels the head sees.
        head: an ``RPNHead`` (or any module with the same contract).
        fg_iou_thresh, bg_iou_thresh: anchors with IoU >= fg are positive, < bg negative, others ignored.
        batch_size_per_image, positive_fraction: the balanced sample of anchors per image for the loss.
        train_settings, test_settings: top-n before/after NMS in training and in eval mode.
        nms_thresh: IoU threshold of the NMS applied per level.
        score_thresh: proposals with a lower objectness probability are dropped.
        min_size: proposals narrower or lower than this (pixels) are dropped.
    """

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: nn.Module,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        train_settings: ProposalSettings = ProposalSettings(2000, 2000),
        test_settings: ProposalSettings = ProposalSettings(1000, 1000),
        nms_thresh: float = 0.7,
        score_thresh: float = 0.0,
        min_size: float = 1e-3,
    ) -> None:
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.matcher = IoUMatcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.train_settings = train_settings
        self.test_settings = test_settings
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = min_size

    @property
    def settings(self) -> ProposalSettings:
        """The top-n settings of the current mode."""
        return self.train_settings if self.training else self.test_settings

    def forward(
        self, images: ImageBatch, features: list[Tensor], targets: list[Target] | None = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Proposals ``[P_i, 4]`` per image, and the RPN losses when ``targets`` are given (else ``{}``)."""
        objectness, deltas = self.head(features)
        feature_sizes = [(f.shape[-2], f.shape[-1]) for f in features]
        anchors = self.anchor_generator(feature_sizes, images.tensors.shape[-2:], deltas.dtype, deltas.device)
        proposals = self.select_proposals(objectness.detach(), deltas.detach(), anchors, images.image_sizes)
        losses = {} if targets is None else self.loss(objectness, deltas, torch.cat(anchors), targets)
        return proposals, losses

    def _top_anchor_indices(self, objectness: Tensor, anchors_per_level: list[int]) -> Tensor:
        """``[B, K]`` indices of the best ``pre_nms_top_n`` anchors of each level, level after level."""
        chosen, offset = [], 0
        for level_scores in objectness.split(anchors_per_level, dim=1):
            count = top_n_of(level_scores.shape[1], self.settings.pre_nms_top_n)
            chosen.append(level_scores.topk(count, dim=1).indices + offset)
            offset += level_scores.shape[1]
        return torch.cat(chosen, dim=1)

    def select_proposals(
        self, objectness: Tensor, deltas: Tensor, anchors: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[Tensor]:
        """Decode the best anchors of each level and keep the NMS survivors, per image."""
        anchors_per_level = [level.shape[0] for level in anchors]
        levels = torch.cat([torch.full_like(level_anchors[:, 0], level, dtype=torch.int64)
                            for level, level_anchors in enumerate(anchors)])  # [T]: shapes follow a traced input
        top = self._top_anchor_indices(objectness, anchors_per_level)  # [B, K]
        scores = objectness.gather(1, top).sigmoid()
        top_deltas = deltas.gather(1, top[..., None].expand(-1, -1, 4))
        boxes = self.box_coder.decode(top_deltas, torch.cat(anchors)[top])  # [B, K, 4]
        return [
            self._filter_image(image_boxes, image_scores, levels[image_top], size)
            for image_boxes, image_scores, image_top, size in zip(
                boxes, scores, top, image_sizes, strict=True
            )
        ]

    def _filter_image(
        self, boxes: Tensor, scores: Tensor, levels: Tensor, image_size: tuple[int, int]
    ) -> Tensor:
        boxes = clip_boxes(boxes, image_size)
        keep = remove_small_boxes(boxes, self.min_size)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = torch.where(scores >= self.score_thresh)[0]
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms(boxes, scores, levels, self.nms_thresh)[: self.settings.post_nms_top_n]
        return boxes[keep]

    def loss(
        self, objectness: Tensor, deltas: Tensor, anchors: Tensor, targets: list[Target]
    ) -> dict[str, Tensor]:
        """``loss_objectness`` and ``loss_rpn_box_reg`` over a balanced sample of anchors per image."""
        sampled_logits, sampled_labels, positive_deltas, positive_targets = [], [], [], []
        for image_logits, image_deltas, target in zip(objectness, deltas, targets, strict=True):
            gt_boxes = target["boxes"].to(anchors.dtype)
            matches = self.matcher(box_iou(gt_boxes, anchors))
            positive, negative = self.sampler.sample(
                torch.where(matches >= 0, 1, torch.where(matches == -1, 0, -1))
            )
            sampled = torch.cat((positive, negative))
            sampled_logits.append(image_logits[sampled])
            sampled_labels.append(
                (torch.arange(sampled.numel(), device=sampled.device) < positive.numel()).to(anchors.dtype)
            )
            positive_deltas.append(image_deltas[positive])
            positive_targets.append(self.box_coder.encode(gt_boxes[matches[positive]], anchors[positive]))
        num_sampled = max(sum(labels.numel() for labels in sampled_labels), 1)
        box_loss = F.smooth_l1_loss(
            torch.cat(positive_deltas), torch.cat(positive_targets), beta=1 / 9, reduction="sum"
        )
        objectness_loss = F.binary_cross_entropy_with_logits(
            torch.cat(sampled_logits), torch.cat(sampled_labels)
        )
        return {"loss_objectness": objectness_loss, "loss_rpn_box_reg": box_loss / num_sampled}


def top_n_of(available: int, top_n: int) -> int:
    """``min(available, top_n)``; while tracing (``structured.export``) a tensor operation on the traced count, so
    the graph takes the best ``top_n`` of however many anchors a level of the input has."""
    if torch.jit.is_tracing():
        return torch.clamp(torch.as_tensor(available), max=top_n)
    return min(available, top_n)


def build_rpn(settings: RPNSettings, in_channels: int) -> RegionProposalNetwork:
    """The RPN of ``settings`` over feature maps of ``in_channels`` channels.

    Raises ``ValueError`` when the anchors do not give one level per feature with the same number of
    anchors on every level.
    """
    try:
        anchors = AnchorGenerator(settings.anchor_sizes, settings.aspect_ratios)
    except ValueError as error:
        raise ValueError(f"rpn.anchor_sizes / rpn.aspect_ratios: {error}") from None
    per_location = anchors.num_anchors_per_location()
    if anchors.num_levels != len(settings.features) or len(set(per_location)) != 1:
        raise ValueError(
            f"rpn.anchor_sizes/aspect_ratios need one entry per rpn.features level ({len(settings.features)}) and "
            f"the same number of anchors on every level, got {per_location}"
        )
    return RegionProposalNetwork(
        anchors,
        RPNHead(in_channels, per_location[0], settings.conv_depth),
        fg_iou_thresh=settings.fg_iou_thresh,
        bg_iou_thresh=settings.bg_iou_thresh,
        batch_size_per_image=settings.batch_size_per_image,
        positive_fraction=settings.positive_fraction,
        train_settings=ProposalSettings(settings.pre_nms_top_n_train, settings.post_nms_top_n_train),
        test_settings=ProposalSettings(settings.pre_nms_top_n_test, settings.post_nms_top_n_test),
        nms_thresh=settings.nms_thresh,
        score_thresh=settings.score_thresh,
    )
