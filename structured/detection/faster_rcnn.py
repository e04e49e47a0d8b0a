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
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from structured.backbones import FPN, Backbone, FrozenBatchNorm2d
from structured.boxes.anchors import AnchorGenerator
from structured.detection.roi_heads import (
    BoxPredictor,
    ConvFCHead,
    MultiLevelRoIAlign,
    RoIHeads,
    TwoMLPHead,
    VGGBoxHead,
)
from structured.detection.rpn import ProposalSettings, RegionProposalNetwork, RPNHead
from structured.detection.transform import DetectionTransform
from structured.registry import BACKBONES, MODELS, NECKS
from structured.types import Prediction, Target, select_instances


def _is_foldable_norm(module: nn.Module) -> bool:
    """A frozen batch norm, or a batch norm in eval mode with running statistics (an affine map either way)."""
    if isinstance(module, FrozenBatchNorm2d):
        return True
    return (isinstance(module, nn.BatchNorm2d) and not module.training and module.track_running_stats
            and module.affine)


def _fold_into_conv(conv: nn.Conv2d, norm: nn.Module) -> None:
    scale = norm.weight.detach() * (norm.running_var + norm.eps).rsqrt()
    shift = norm.bias.detach() - norm.running_mean * scale
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(shift)
    with torch.no_grad():
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(bias * scale + shift, requires_grad=conv.weight.requires_grad)


def _conv_norm_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Names of (conv, foldable norm) children where the norm directly follows the conv in ``module``."""
    children = dict(module.named_children())
    names = list(children)
    if isinstance(module, nn.Sequential):
        candidates = list(itertools.pairwise(names))
    else:
        candidates = [
            (name, "bn" + name[4:])
            for name in names
            if name.startswith("conv") and "bn" + name[4:] in children
        ]
    return [
        (conv, norm)
        for conv, norm in candidates
        if isinstance(children[conv], nn.Conv2d) and _is_foldable_norm(children[norm])
    ]


def fold_frozen_batch_norms(model: nn.Module) -> int:
    """Fold every frozen (or eval-mode) batch norm that directly follows a convolution into it; returns the count.

    A convolution followed by a frozen batch norm, or by a batch norm in eval mode (its running statistics
    in use), is an affine map of the convolution's output, so the norm's
    scale and shift go into the convolution's weight and bias and the norm becomes ``nn.Identity``. The
    outputs are unchanged up to float rounding, with one pass over each activation less. Pairs are children
    of an ``nn.Sequential`` in a row, or ``convK``/``bnK`` attributes of one module (torchvision's ResNet
    blocks). The model's state dict changes (norm entries go, conv biases come): fold for inference only,
    after loading weights.
    """
    folded = 0
    for module in list(model.modules()):
        for conv_name, norm_name in _conv_norm_pairs(module):
            _fold_into_conv(getattr(module, conv_name), getattr(module, norm_name))
            setattr(module, norm_name, nn.Identity())
            folded += 1
    return folded


def _without_crowd(target: Target) -> Target:
    if "iscrowd" not in target:
        return target
    return select_instances(target, target["iscrowd"] == 0)


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


class FasterRCNN(nn.Module):
    """Two-stage detector.

    Args:
        backbone: image ``[B, 3, H, W]`` -> ``OrderedDict`` of named feature maps.
        neck: optional module mapping the backbone's dict to another dict (an FPN), or ``None``.
        rpn: the region proposal network.
        roi_heads: the box branch.
        transform: resize / normalise / batch inside the model.
        rpn_features: names of the feature maps the RPN sees, one per anchor level.
        roi_features: names of the feature maps RoIAlign pools from, finest first.
    """

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
        self.channels_last = False

    def optimize_for_inference(self, channels_last: bool = True) -> FasterRCNN:
        """Eval mode, batch norms folded into convolutions, optionally channels-last layout; returns ``self``.

        Outputs equal the unoptimised model's up to float rounding (see ``fold_frozen_batch_norms``); the
        state dict changes and trainable batch norms are gone, so call this after loading weights, for
        inference only, and do not save the result as a checkpoint.
        """
        self.eval()
        fold_frozen_batch_norms(self)
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)
        return self

    def extract_features(self, images: Tensor) -> OrderedDict[str, Tensor]:
        """Named feature maps of a padded batch (after the neck when there is one)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.backbone(images)
        return self.neck(features) if self.neck is not None else features

    def _select(self, features: OrderedDict[str, Tensor], names: list[str]) -> list[Tensor]:
        missing = [name for name in names if name not in features]
        if missing:
            raise KeyError(f"feature maps {missing} not produced; available: {list(features)}")
        return [features[name] for name in names]

    def forward(
        self, images: list[Tensor], targets: list[Target] | None = None
    ) -> dict[str, Tensor] | list[Prediction]:
        """Losses (dict of named scalars) when ``targets`` are given, else one prediction per image.

        Inference is ``postprocess(raw_outputs(images))``: the split lets a speed measurement time the
        network and the post-processing apart.
        """
        if targets is None:
            return self.postprocess(self.raw_outputs(images))
        targets = [_without_crowd(target) for target in targets]
        batch, targets = self.transform(images, targets)
        features = self.extract_features(batch.tensors)
        proposals, rpn_losses = self.rpn(batch, self._select(features, self.rpn_features), targets)
        return {**rpn_losses, **self.head_losses(features, proposals, targets)}

    def head_losses(
        self, features: OrderedDict[str, Tensor], proposals: list[Tensor], targets: list[Target]
    ) -> dict[str, Tensor]:
        """The second stage's losses on a balanced sample of ``proposals`` (resized frame)."""
        sample = self.roi_heads.sample(proposals, targets)
        return self.roi_heads.loss(self._select(features, self.roi_features), sample)

    def raw_outputs(self, images: list[Tensor]) -> RawDetections:
        """The network's part of inference: resize and batch, features, proposals, the box head's outputs."""
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        batch, _ = self.transform(images, None)
        features = self.extract_features(batch.tensors)
        proposals, _ = self.rpn(batch, self._select(features, self.rpn_features), None)
        logits, deltas = self.roi_heads.box_outputs(self._select(features, self.roi_features), proposals)
        return RawDetections(logits, deltas, proposals, batch.image_sizes, original_sizes)

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


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FPN_ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))
ASPECT_RATIOS = (0.5, 1.0, 2.0)
BOX_HEADS = ("two_mlp", "conv_fc", "vgg")


def _build_backbone_and_neck(
    backbone: str,
    backbone_levels: Sequence[str],
    frozen_stages: int,
    norm_layer: str,
    norm_eps: float | None,
    pretrained_backbone: str | None,
    fpn_channels: int | None,
    fpn_norm_layer: str | None,
) -> tuple[Backbone, FPN | None, dict[str, int], dict[str, int]]:
    trunk = BACKBONES.build(
        backbone,
        out_levels=list(backbone_levels),
        frozen_stages=frozen_stages,
        norm_layer=norm_layer,
        norm_eps=norm_eps,
        pretrained=pretrained_backbone,
        classifier=False,
    )
    if fpn_channels is None:
        return trunk, None, trunk.out_channels, trunk.strides
    neck = NECKS.build(
        "fpn",
        in_channels=trunk.out_channels,
        in_strides=trunk.strides,
        out_channels=fpn_channels,
        extra_levels="maxpool",
        norm_layer=fpn_norm_layer,
    )
    return trunk, neck, neck.out_channels, neck.strides


def _box_head(
    kind: str,
    in_channels: int,
    pooled_size: int,
    representation_size: int,
    conv_channels: Sequence[int],
    norm_layer: str,
) -> nn.Module:
    if kind not in BOX_HEADS:
        raise ValueError(f"box_head must be one of {BOX_HEADS}, got {kind!r}")
    if kind == "conv_fc":
        return ConvFCHead(in_channels, pooled_size, conv_channels, representation_size, norm_layer)
    if kind == "vgg":
        return VGGBoxHead(in_channels * pooled_size**2, representation_size)
    return TwoMLPHead(in_channels * pooled_size**2, representation_size)


def _check_levels(names: Sequence[str], available: dict[str, int], argument: str) -> None:
    unknown = [name for name in names if name not in available]
    if not names or unknown:
        raise ValueError(f"{argument} must name feature maps among {list(available)}, got {list(names)}")
    channels = {available[name] for name in names}
    if len(channels) != 1:
        raise ValueError(
            f"{argument} levels must have the same channel count, got { {n: available[n] for n in names} }"
        )


def build_faster_rcnn(
    *,
    num_classes: int,
    backbone: str,
    backbone_levels: Sequence[str],
    fpn_channels: int | None = 256,
    fpn_norm_layer: str | None = None,
    rpn_features: Sequence[str] = ("p2", "p3", "p4", "p5", "p6"),
    roi_features: Sequence[str] = ("p2", "p3", "p4", "p5"),
    frozen_stages: int = 2,
    backbone_norm_layer: str = "frozen_bn",
    backbone_norm_eps: float | None = None,
    pretrained_backbone: str | None = None,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    image_mean: Sequence[float] = IMAGENET_MEAN,
    image_std: Sequence[float] = IMAGENET_STD,
    anchor_sizes: Sequence[Sequence[float]] = FPN_ANCHOR_SIZES,
    aspect_ratios: Sequence[Sequence[float]] = (ASPECT_RATIOS,) * 5,
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_nms_thresh: float = 0.7,
    rpn_fg_iou_thresh: float = 0.7,
    rpn_bg_iou_thresh: float = 0.3,
    rpn_batch_size_per_image: int = 256,
    rpn_positive_fraction: float = 0.5,
    rpn_score_thresh: float = 0.0,
    box_head: str = "two_mlp",
    representation_size: int = 1024,
    box_head_conv_channels: Sequence[int] = (256, 256, 256, 256),
    box_head_norm: str = "bn",
    roi_output_size: int = 7,
    roi_sampling_ratio: int = 2,
    box_fg_iou_thresh: float = 0.5,
    box_bg_iou_thresh: float = 0.5,
    box_batch_size_per_image: int = 512,
    box_positive_fraction: float = 0.25,
    bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
    box_score_thresh: float = 0.05,
    box_nms_thresh: float = 0.5,
    box_detections_per_img: int = 100,
) -> FasterRCNN:
    """Faster R-CNN from a registered backbone, an optional FPN (``fpn_channels=None``: none) and settings.

    ``num_classes``: object classes without background. ``backbone_levels``: the backbone's levels fed to
    the FPN (or used directly without one). ``rpn_features``/``roi_features``: feature maps the RPN and
    RoIAlign use (one anchor level per RPN feature). The ``rpn_*``/``box_*`` settings are torchvision's
    ``FasterRCNN`` arguments of the same names. ``fpn_norm_layer``: ``None`` or ``"gn"`` after each FPN
    convolution. ``box_head``: ``"two_mlp"`` (FPN), ``"conv_fc"`` (``box_head_conv_channels`` normalised
    convolutions, ``box_head_norm`` ``"bn"`` or ``"gn"``, then one layer; torchvision's v2 head) or
    ``"vgg"``.
    """
    if num_classes < 1:
        raise ValueError(
            f"num_classes counts object classes without background and must be >= 1, got {num_classes}"
        )
    trunk, neck, channels, strides = _build_backbone_and_neck(
        backbone,
        backbone_levels,
        frozen_stages,
        backbone_norm_layer,
        backbone_norm_eps,
        pretrained_backbone,
        fpn_channels,
        fpn_norm_layer,
    )
    _check_levels(rpn_features, channels, "rpn_features")
    _check_levels(roi_features, channels, "roi_features")
    anchors = AnchorGenerator(anchor_sizes, aspect_ratios)
    if anchors.num_levels != len(rpn_features) or len(set(anchors.num_anchors_per_location())) != 1:
        raise ValueError(
            f"anchor_sizes/aspect_ratios need one entry per RPN feature ({len(rpn_features)}) and the same number "
            f"of anchors on every level, got {anchors.num_anchors_per_location()}"
        )
    in_channels = channels[rpn_features[0]]
    rpn = RegionProposalNetwork(
        anchors,
        RPNHead(in_channels, anchors.num_anchors_per_location()[0]),
        fg_iou_thresh=rpn_fg_iou_thresh,
        bg_iou_thresh=rpn_bg_iou_thresh,
        batch_size_per_image=rpn_batch_size_per_image,
        positive_fraction=rpn_positive_fraction,
        train_settings=ProposalSettings(rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train),
        test_settings=ProposalSettings(rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test),
        nms_thresh=rpn_nms_thresh,
        score_thresh=rpn_score_thresh,
    )
    head = _box_head(
        box_head,
        channels[roi_features[0]],
        roi_output_size,
        representation_size,
        box_head_conv_channels,
        box_head_norm,
    )
    roi_heads = RoIHeads(
        MultiLevelRoIAlign([strides[name] for name in roi_features], roi_output_size, roi_sampling_ratio),
        head,
        BoxPredictor(representation_size, num_classes),
        fg_iou_thresh=box_fg_iou_thresh,
        bg_iou_thresh=box_bg_iou_thresh,
        batch_size_per_image=box_batch_size_per_image,
        positive_fraction=box_positive_fraction,
        bbox_reg_weights=bbox_reg_weights,
        score_thresh=box_score_thresh,
        nms_thresh=box_nms_thresh,
        detections_per_img=box_detections_per_img,
    )
    transform = DetectionTransform(min_size, max_size, image_mean, image_std)
    return FasterRCNN(trunk, neck, rpn, roi_heads, transform, rpn_features, roi_features)


_MOBILENET_FPN = dict(
    num_classes=90,
    backbone="mobilenet_v3_large",
    backbone_levels=("c5_entry", "c5"),
    rpn_features=("p5_entry", "p5", "p6"),
    roi_features=("p5_entry", "p5"),
    frozen_stages=3,
    backbone_norm_eps=1e-5,
    anchor_sizes=((32, 64, 128, 256, 512),) * 3,
    aspect_ratios=(ASPECT_RATIOS,) * 3,
)

RECIPES: dict[str, dict] = {
    "faster_rcnn_r50_fpn": dict(
        num_classes=90,
        backbone="resnet50",
        backbone_levels=("c2", "c3", "c4", "c5"),
    ),
    "faster_rcnn_r18_fpn": dict(
        num_classes=90,
        backbone="resnet18",
        backbone_levels=("c2", "c3", "c4", "c5"),
        fpn_channels=128,
        representation_size=512,
        min_size=512,
        max_size=853,
    ),
    "faster_rcnn_mobilenet_v3_large_fpn": dict(_MOBILENET_FPN),
    "faster_rcnn_mobilenet_v3_large_320_fpn": dict(
        **_MOBILENET_FPN,
        min_size=320,
        max_size=640,
        rpn_pre_nms_top_n_test=150,
        rpn_post_nms_top_n_test=150,
        rpn_score_thresh=0.05,
    ),
    "faster_rcnn_vgg16": dict(
        num_classes=20,
        backbone="vgg16",
        backbone_levels=("c4",),
        fpn_channels=None,
        rpn_features=("c4",),
        roi_features=("c4",),
        backbone_norm_layer="bn",
        min_size=600,
        max_size=1000,
        anchor_sizes=((128, 256, 512),),
        aspect_ratios=(ASPECT_RATIOS,),
        rpn_pre_nms_top_n_train=12000,
        rpn_pre_nms_top_n_test=6000,
        rpn_post_nms_top_n_test=300,
        box_head="vgg",
        representation_size=4096,
        box_batch_size_per_image=128,
        box_nms_thresh=0.3,
    ),
}
"""Registered recipes: ``build_faster_rcnn`` with these defaults (every other argument keeps its default)."""

for _name, _defaults in RECIPES.items():
    MODELS.register(_name)(partial(build_faster_rcnn, **_defaults))
