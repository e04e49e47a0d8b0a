"""Second stage of Faster R-CNN: pool each proposal's features, classify it and refine its box.

- ``MultiLevelRoIAlign`` pools ``[K, C, S, S]`` features per proposal with ``torchvision.ops.roi_align``
  from the feature level chosen by the FPN rule ``floor(4 + log2(sqrt(area) / 224))`` clamped to the
  available levels (a single level is used as is).
- ``TwoMLPHead`` (FPN models: fc6, fc7 of 1024), ``ConvFCHead`` (normalised 3x3 convolutions then one
  fully connected layer, torchvision's ``fasterrcnn_resnet50_fpn_v2`` head) and ``VGGBoxHead`` (the
  VGG16 fc6/fc7 of 4096 with dropout) turn pooled features into one vector per proposal.
- ``BoxPredictor`` gives ``C + 1`` class logits (0 is background) and class-specific deltas.
- ``RoIHeads`` ties them together. Training: ground-truth boxes join the proposals, proposals are matched
  at IoU 0.5 (no low-quality matches), a balanced sample is drawn, and the losses are ``loss_classifier``
  (cross-entropy) and ``loss_box_reg`` (smooth L1, beta 1/9, true class only, over positives, divided
  by the number of sampled proposals). Inference: softmax scores, decoded and clipped boxes per class,
  score threshold, boxes under 0.01 px dropped, NMS per class, the best ``detections_per_img`` kept.

``RoIHeadSettings`` is the box branch's part of a detector recipe (``model.roi_heads``) and
``build_roi_heads`` builds the branch from it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from structured.backbones.transfer import group_norm
from structured.boxes.coder import BoxCoder
from structured.boxes.formats import box_area, clip_boxes, remove_small_boxes
from structured.boxes.iou import box_iou
from structured.boxes.matcher import BELOW_LOW_THRESHOLD, BalancedSampler, IoUMatcher
from structured.boxes.nms import batched_nms
from structured.detection.parts import check_counts, check_fractions
from structured.types import Prediction, Target

CANONICAL_SIZE = 224
CANONICAL_LEVEL = 4
ROI_ALIGN_MIN_ROIS_PER_THREAD = 32
"""``threaded_roi_align`` gives each torch thread a chunk of at least this many RoIs (fewer: one call)."""
HEAD_NORMS = ("bn", "gn")
BOX_HEADS = ("two_mlp", "conv_fc", "vgg")


@dataclass(frozen=True)
class RoIHeadSettings:
    """The box branch's settings: a recipe's ``model.roi_heads`` section. Defaults are torchvision's.

    Attributes:
        features: names of the feature maps RoIAlign pools from, finest first (same channel count).
        head: ``"two_mlp"`` (``TwoMLPHead``, FPN models), ``"conv_fc"`` (``ConvFCHead``: ``conv_channels``
            convolutions normalised by ``head_norm`` ``"bn"`` or ``"gn"``, then one layer; torchvision's v2
            head) or ``"vgg"`` (``VGGBoxHead``).
        representation_size: width of the head's output vector.
        conv_channels, head_norm: the ``"conv_fc"`` head's convolutions and their norm.
        output_size, sampling_ratio: RoIAlign's output side and sampling points.
        fg_iou_thresh, bg_iou_thresh: proposal matching thresholds.
        batch_size_per_image, positive_fraction: the balanced sample of proposals per image.
        bbox_reg_weights: weights of the box coder.
        score_thresh, nms_thresh, detections_per_img: post-processing (the two thresholds in [0, 1], at least
            one detection per image).
    """

    features: Sequence[str] = ("p2", "p3", "p4", "p5")
    head: str = "two_mlp"
    representation_size: int = 1024
    conv_channels: Sequence[int] = (256, 256, 256, 256)
    head_norm: str = "bn"
    output_size: int = 7
    sampling_ratio: int = 2
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0)
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100

    def __post_init__(self) -> None:
        check_fractions(self, "score_thresh", "nms_thresh")
        check_counts(self, "detections_per_img")


def threaded_roi_align(feature: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
                       sampling_ratio: int) -> Tensor:
    """``torchvision.ops.roi_align(feature, rois, ...)`` (``aligned=False``), split over torch's threads on the CPU.

    torchvision's CPU kernel runs on one thread and releases the GIL, so for CPU inference (no gradient
    wanted) the ``[K, 5]`` RoIs are pooled in ``torch.get_num_threads()`` chunks by a thread pool: the same
    values (each RoI is computed alone), 2.2x faster on 2 threads (1,000 RoIs from a 256 x 200 x 272 map:
    181 against 406 ms). Anything else (autograd, other devices, tracing, few RoIs) is one plain call.
    """
    chunks = min(torch.get_num_threads(), rois.shape[0] // ROI_ALIGN_MIN_ROIS_PER_THREAD)
    wants_grad = torch.is_grad_enabled() and (feature.requires_grad or rois.requires_grad)
    if chunks < 2 or wants_grad or feature.device.type != "cpu" or torch.jit.is_tracing():
        return roi_align(feature, rois, output_size, spatial_scale, sampling_ratio)

    def pool_chunk(chunk: Tensor) -> Tensor:
        with torch.no_grad():
            return roi_align(feature, chunk, output_size, spatial_scale, sampling_ratio)

    return torch.cat(list(_thread_pool(chunks).map(pool_chunk, rois.chunk(chunks))))


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads for this process (a forked child makes its own: threads do not survive a fork)."""
    key = (os.getpid(), workers)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="roi_align")
    return _POOLS[key]


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign over feature levels of strides ``strides`` (powers of two), each box from its FPN level.

    Args:
        strides: stride of each pooled level, in the order the features are given.
        output_size: side ``S`` of the pooled ``[C, S, S]`` features.
        sampling_ratio: RoIAlign sampling points per bin side (0: adaptive).
    """

    def __init__(self, strides: Sequence[int], output_size: int = 7, sampling_ratio: int = 2) -> None:
        super().__init__()
        if not strides or any(s <= 0 or s & (s - 1) for s in strides):
            raise ValueError(f"strides must be powers of two, one per pooled level, got {list(strides)}")
        self.scales = [1.0 / s for s in strides]
        self.min_level = int(math.log2(strides[0]))
        self.max_level = int(math.log2(strides[-1]))
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio

    def extra_repr(self) -> str:
        strides = [round(1 / s) for s in self.scales]
        return f"strides={strides}, output_size={self.output_size}, sampling_ratio={self.sampling_ratio}"

    def assign_levels(self, boxes: Tensor) -> Tensor:
        """Index into the pooled levels of each ``[K, 4]`` box."""
        sides = box_area(boxes).sqrt()
        levels = torch.floor(CANONICAL_LEVEL + torch.log2(sides / CANONICAL_SIZE) + 1e-6)
        return levels.clamp(self.min_level, self.max_level).to(torch.int64) - self.min_level

    def forward(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """Pooled ``[sum K_i, C, S, S]`` features for the boxes ``[K_i, 4]`` of each image."""
        rois = torch.cat([torch.cat((b.new_full((b.shape[0], 1), i), b), dim=1) for i, b in enumerate(boxes)])
        size = (self.output_size, self.output_size)
        if len(features) == 1:
            return threaded_roi_align(features[0], rois, size, self.scales[0], self.sampling_ratio)
        levels = self.assign_levels(rois[:, 1:])
        pooled = features[0].new_empty((rois.shape[0], features[0].shape[1], *size))  # every row is written
        # index_copy_, not ``pooled[in_level] = ...``: traced for ONNX with one RoI on a level, the indexed write
        # baked that count into a Reshape and the graph failed on images with two there
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            in_level = torch.where(levels == level)[0]
            pooled.index_copy_(0, in_level, threaded_roi_align(feature, rois[in_level], size, scale,
                                                              self.sampling_ratio))
        return pooled


class TwoMLPHead(nn.Module):
    """Two fully connected layers with ReLU over flattened pooled features (FPN box head)."""

    def __init__(self, in_features: int, representation_size: int = 1024) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.out_features = representation_size

    def forward(self, pooled: Tensor) -> Tensor:
        """``[K, C, S, S]`` -> ``[K, representation_size]``."""
        return F.relu(self.fc7(F.relu(self.fc6(pooled.flatten(1)))))


class ConvFCHead(nn.Sequential):
    """3x3 convolutions (no bias, norm, ReLU) over pooled features, then one fully connected layer with ReLU.

    With ``conv_channels=(256,) * 4``, ``representation_size=1024`` and BatchNorm this is the layout of
    torchvision's ``fasterrcnn_resnet50_fpn_v2`` box head, module for module, so its state dict maps
    unchanged. Normalised convolutions learn much faster than ``TwoMLPHead`` from scratch.

    Args:
        in_channels: channels ``C`` of the pooled ``[K, C, S, S]`` features.
        pooled_size: their side ``S``.
        conv_channels: output channels of each convolution, in order.
        representation_size: width of the fully connected layer.
        norm_layer: ``"bn"`` (BatchNorm) or ``"gn"`` (GroupNorm, 32 groups or fewer).
    """

    def __init__(
        self,
        in_channels: int,
        pooled_size: int,
        conv_channels: Sequence[int] = (256, 256, 256, 256),
        representation_size: int = 1024,
        norm_layer: str = "bn",
    ) -> None:
        if norm_layer not in HEAD_NORMS:
            raise ValueError(f"norm_layer must be one of {HEAD_NORMS}, got {norm_layer!r}")
        if not conv_channels:
            raise ValueError("conv_channels must name at least one convolution")
        blocks: list[nn.Module] = []
        for out_channels in conv_channels:
            conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            blocks.append(nn.Sequential(conv, head_norm(norm_layer, out_channels), nn.ReLU(inplace=True)))
            in_channels = out_channels
        fc = nn.Linear(in_channels * pooled_size**2, representation_size)
        super().__init__(*blocks, nn.Flatten(), fc, nn.ReLU(inplace=True))
        self.out_features = representation_size


def head_norm(kind: str, channels: int) -> nn.Module:
    """``BatchNorm2d`` (``"bn"``) or GroupNorm (``"gn"``) of ``channels`` for a head's convolutions."""
    return group_norm(channels) if kind == "gn" else nn.BatchNorm2d(channels)


def conv_norm_relu(in_channels: int, out_channels: int, norm_layer: str | None) -> nn.Sequential:
    """3x3 convolution ('same' padding), ``head_norm(norm_layer)`` unless ``None`` (then a bias), ReLU."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=norm_layer is None)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    layers = [conv] if norm_layer is None else [conv, head_norm(norm_layer, out_channels)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True))


class VGGBoxHead(nn.Module):
    """VGG16's fc6/fc7 (4096, ReLU, dropout) over 7x7x512 pooled features, as in the Faster R-CNN paper."""

    def __init__(
        self, in_features: int = 512 * 7 * 7, representation_size: int = 4096, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.dropout = nn.Dropout(dropout)
        self.out_features = representation_size

    def forward(self, pooled: Tensor) -> Tensor:
        """``[K, C, S, S]`` -> ``[K, representation_size]``."""
        hidden = self.dropout(F.relu(self.fc6(pooled.flatten(1))))
        return self.dropout(F.relu(self.fc7(hidden)))


class BoxPredictor(nn.Module):
    """Class logits ``[K, C+1]`` and class-specific deltas ``[K, (C+1)*4]`` from box features."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, (num_classes + 1) * 4)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and deltas for ``[K, F]`` features."""
        return self.cls_score(features), self.bbox_pred(features)


@dataclass
class RoISample:
    """The proposals sampled for training and what each was matched to.

    ``proposals`` per image ``[S_i, 4]`` (resized frame); over all images, in that order: ``labels [S]``
    (``0`` background, else the matched ground truth's class) and ``matched_boxes [S, 4]``;
    ``matched_index`` per image ``[S_i]``: the index of the matched ground-truth instance in that image's
    target (``0`` for background proposals, whose match is not used), so instance masks can be looked up.
    """

    proposals: list[Tensor]
    labels: Tensor
    matched_boxes: Tensor
    matched_index: list[Tensor]

    def positives(self) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Per image the positive proposals and their matched indices, and their labels over all images."""
        counts = [len(p) for p in self.proposals]
        positive = [labels > 0 for labels in self.labels.split(counts)]
        proposals = [p[keep] for p, keep in zip(self.proposals, positive, strict=True)]
        indices = [i[keep] for i, keep in zip(self.matched_index, positive, strict=True)]
        return proposals, indices, self.labels[self.labels > 0]


class RoIHeads(nn.Module):
    """Box branch of Faster R-CNN: pooling, box head, predictor, sampling, loss and post-processing.

    Args:
        pooler: a ``MultiLevelRoIAlign``.
        box_head: ``TwoMLPHead``, ``ConvFCHead`` or ``VGGBoxHead``.
        predictor: a ``BoxPredictor``.
        fg_iou_thresh, bg_iou_thresh: proposal matching thresholds.
        batch_size_per_image, positive_fraction: the balanced sample of proposals per image.
        bbox_reg_weights: weights of the box coder.
        score_thresh, nms_thresh, detections_per_img: post-processing.
    """

    def __init__(
        self,
        pooler: MultiLevelRoIAlign,
        box_head: nn.Module,
        predictor: BoxPredictor,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        self.pooler = pooler
        self.box_head = box_head
        self.predictor = predictor
        self.matcher = IoUMatcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder(bbox_reg_weights)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img

    def box_outputs(self, features: list[Tensor], proposals: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Class logits ``[K, C+1]`` and box deltas ``[K, (C+1)*4]`` of the ``K`` proposals of all images."""
        return self.predictor(self.box_head(self.pooler(features, proposals)))

    def sample_proposals(self, proposals: Tensor, target: Target) -> RoISample:
        """One image's balanced sample of proposals (ground-truth boxes included) with their matches."""
        gt_boxes = target["boxes"].to(proposals.dtype)
        proposals = torch.cat((proposals, gt_boxes))
        matches = self.matcher(box_iou(gt_boxes, proposals))
        if gt_boxes.shape[0] == 0:
            labels = torch.zeros_like(matches)
            gt_boxes = proposals.new_zeros((1, 4))
        else:
            labels = target["labels"][matches.clamp(min=0)]
            labels = torch.where(matches >= 0, labels, torch.where(matches == BELOW_LOW_THRESHOLD, 0, -1))
        positive, negative = self.sampler.sample(labels)
        sampled = torch.cat((positive, negative))
        matched_index = matches[sampled].clamp(min=0)
        return RoISample([proposals[sampled]], labels[sampled], gt_boxes[matched_index], [matched_index])

    def sample(self, proposals: list[Tensor], targets: list[Target]) -> RoISample:
        """The balanced sample of every image, concatenated (see :class:`RoISample`)."""
        samples = [self.sample_proposals(p, t) for p, t in zip(proposals, targets, strict=True)]
        return RoISample(
            proposals=[s.proposals[0] for s in samples],
            labels=torch.cat([s.labels for s in samples]),
            matched_boxes=torch.cat([s.matched_boxes for s in samples]),
            matched_index=[s.matched_index[0] for s in samples],
        )

    def loss(self, features: list[Tensor], sample: RoISample) -> dict[str, Tensor]:
        """``loss_classifier`` and ``loss_box_reg`` on the sampled proposals (:meth:`sample`)."""
        logits, deltas = self.box_outputs(features, sample.proposals)
        labels = sample.labels
        positive = torch.where(labels > 0)[0]
        deltas = deltas.unflatten(1, (-1, 4))[positive, labels[positive]]  # [K, C+1, 4] -> [P, 4]
        box_targets = self.box_coder.encode(sample.matched_boxes[positive], torch.cat(sample.proposals)[positive])
        box_loss = F.smooth_l1_loss(deltas, box_targets, beta=1 / 9, reduction="sum") / max(labels.numel(), 1)
        return {"loss_classifier": F.cross_entropy(logits, labels), "loss_box_reg": box_loss}

    def predict(
        self, features: list[Tensor], proposals: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[Prediction]:
        """Detections per image in the resized frame: ``boxes``, ``scores``, ``labels`` (1..C)."""
        logits, deltas = self.box_outputs(features, proposals)
        return self.postprocess(logits, deltas, proposals, image_sizes)

    def postprocess(
        self, logits: Tensor, deltas: Tensor, proposals: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[Prediction]:
        """Detections per image from the head's outputs: decode, softmax, score threshold, per-class NMS."""
        boxes = self.box_coder.decode(deltas.unflatten(1, (-1, 4)), torch.cat(proposals)[:, None])
        scores = F.softmax(logits, dim=-1)
        counts = [p.shape[0] for p in proposals]
        return [
            self._detections(image_boxes, image_scores, size)
            for image_boxes, image_scores, size in zip(
                boxes.split(counts), scores.split(counts), image_sizes, strict=True
            )
        ]

    def _detections(self, boxes: Tensor, scores: Tensor, image_size: tuple[int, int]) -> Prediction:
        num_classes = scores.shape[1]
        boxes = clip_boxes(boxes[:, 1:], image_size).reshape(-1, 4)  # [K, C, 4] -> [K*C, 4]
        labels = torch.arange(1, num_classes, device=scores.device).repeat(scores.shape[0])
        scores = scores[:, 1:].reshape(-1)
        keep = torch.where(scores > self.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, 1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def build_box_head(settings: RoIHeadSettings, in_channels: int) -> nn.Module:
    """The box head ``settings.head`` over pooled features of ``in_channels`` channels."""
    if settings.head not in BOX_HEADS:
        raise ValueError(f"roi_heads.head must be one of {BOX_HEADS}, got {settings.head!r}")
    pooled_size = settings.output_size
    if settings.head == "conv_fc":
        return ConvFCHead(in_channels, pooled_size, settings.conv_channels, settings.representation_size,
                          settings.head_norm)
    if settings.head == "vgg":
        return VGGBoxHead(in_channels * pooled_size**2, settings.representation_size)
    return TwoMLPHead(in_channels * pooled_size**2, settings.representation_size)


def build_roi_heads(settings: RoIHeadSettings, channels: Mapping[str, int], strides: Mapping[str, int],
                    num_classes: int) -> RoIHeads:
    """The box branch of ``settings`` for ``num_classes`` object classes over features of these channels and strides."""
    pooler = MultiLevelRoIAlign([strides[name] for name in settings.features], settings.output_size,
                                settings.sampling_ratio)
    return RoIHeads(
        pooler,
        build_box_head(settings, channels[settings.features[0]]),
        BoxPredictor(settings.representation_size, num_classes),
        fg_iou_thresh=settings.fg_iou_thresh,
        bg_iou_thresh=settings.bg_iou_thresh,
        batch_size_per_image=settings.batch_size_per_image,
        positive_fraction=settings.positive_fraction,
        bbox_reg_weights=settings.bbox_reg_weights,
        score_thresh=settings.score_thresh,
        nms_thresh=settings.nms_thresh,
        detections_per_img=settings.detections_per_img,
    )
