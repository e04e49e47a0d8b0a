"""RPN and RoI heads against torchvision's RegionProposalNetwork and RoIHeads (test oracles).

Both sides get the same weights, features, proposals and targets; in eval mode the proposals and
detections must be identical, in train mode (same seed: both samplers draw positives then negatives
per image with ``torch.randperm``) the losses must be equal.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchors
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.faster_rcnn import TwoMLPHead as TorchvisionTwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads as TorchvisionRoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork as TorchvisionRPN
from torchvision.models.detection.rpn import RPNHead as TorchvisionRPNHead
from torchvision.ops import MultiScaleRoIAlign

from structured.boxes.anchors import AnchorGenerator
from structured.config import ConfigError, build_model
from structured.detection.roi_heads import (
    BoxPredictor,
    MultiLevelRoIAlign,
    RoIHeads,
    TwoMLPHead,
    threaded_roi_align,
)
from structured.detection.rpn import ProposalSettings, RegionProposalNetwork, RPNHead
from structured.detection.transform import ImageBatch

CHANNELS = 32
STRIDES = (4, 8, 16, 32, 64)
SIZES = ((32,), (64,), (128,), (256,), (512,))
RATIOS = ((0.5, 1.0, 2.0),) * 5
PADDED = (256, 320)
IMAGE_SIZES = [(250, 310), (200, 256)]
NUM_CLASSES = 6


def make_features(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(2, CHANNELS, -(-PADDED[0] // s), -(-PADDED[1] // s), generator=generator) for s in STRIDES
    ]


def make_targets(seed: int, empty_second: bool) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    targets = []
    for index, (height, width) in enumerate(IMAGE_SIZES):
        count = 0 if empty_second and index == 1 else 4
        corners = torch.rand(count, 2, generator=generator) * torch.tensor([width * 0.6, height * 0.6])
        sizes = torch.rand(count, 2, generator=generator) * 100 + 8
        boxes = torch.cat((corners, corners + sizes), 1)
        targets.append(
            {"boxes": boxes, "labels": torch.randint(1, NUM_CLASSES + 1, (count,), generator=generator)}
        )
    return targets


def rpn_pair(seed: int) -> tuple[TorchvisionRPN, RegionProposalNetwork]:
    torch.manual_seed(seed)
    reference_head = TorchvisionRPNHead(CHANNELS, 3)
    with torch.no_grad():
        reference_head.cls_logits.weight.normal_(0, 0.2)
        reference_head.bbox_pred.weight.normal_(0, 0.05)
    settings = {"training": 300, "testing": 200}
    reference = TorchvisionRPN(
        TorchvisionAnchors(SIZES, RATIOS), reference_head, 0.7, 0.3, 64, 0.5, settings, settings, 0.7
    )
    ours = RegionProposalNetwork(
        AnchorGenerator(SIZES, RATIOS),
        RPNHead(CHANNELS, 3),
        batch_size_per_image=64,
        train_settings=ProposalSettings(300, 300),
        test_settings=ProposalSettings(200, 200),
    )
    renamed = {
        key.replace("conv.0.0", "conv.0")
        .replace("cls_logits", "objectness")
        .replace("bbox_pred", "deltas"): value
        for key, value in reference_head.state_dict().items()
    }
    ours.head.load_state_dict(renamed)
    return reference, ours


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("training", [False, True])
def test_rpn_proposals_and_losses_equal_torchvision(seed, training):
    reference, ours = rpn_pair(seed)
    reference.train(training)
    ours.train(training)
    features = make_features(seed)
    targets = make_targets(seed, empty_second=seed == 1)
    padded = torch.zeros(2, 3, *PADDED)
    reference_features = OrderedDict((str(i), f) for i, f in enumerate(features))
    torch.manual_seed(seed)
    expected, expected_losses = reference(
        ImageList(padded, IMAGE_SIZES), reference_features, targets if training else None
    )
    torch.manual_seed(seed)
    proposals, losses = ours(ImageBatch(padded, IMAGE_SIZES), features, targets if training else None)
    for mine, theirs in zip(proposals, expected, strict=True):
        assert torch.equal(mine, theirs)
    if training:
        assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"}
        for name, value in expected_losses.items():
            torch.testing.assert_close(losses[name], value, rtol=1e-5, atol=1e-7)
    else:
        assert losses == {}


def roi_pair(seed: int, score_thresh: float) -> tuple[TorchvisionRoIHeads, RoIHeads]:
    torch.manual_seed(seed)
    box_head = TorchvisionTwoMLPHead(CHANNELS * 49, 64)
    predictor = FastRCNNPredictor(64, NUM_CLASSES + 1)
    with torch.no_grad():
        predictor.cls_score.weight.normal_(0, 0.5)
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    reference = TorchvisionRoIHeads(
        pooler, box_head, predictor, 0.5, 0.5, 32, 0.25, None, score_thresh, 0.5, 50
    )
    ours = RoIHeads(
        MultiLevelRoIAlign(STRIDES[:4]),
        TwoMLPHead(CHANNELS * 49, 64),
        BoxPredictor(64, NUM_CLASSES),
        batch_size_per_image=32,
        score_thresh=score_thresh,
        detections_per_img=50,
    )
    ours.box_head.load_state_dict(box_head.state_dict())
    ours.predictor.load_state_dict(predictor.state_dict())
    return reference, ours


def make_proposals(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed + 100)
    proposals = []
    for count, (height, width) in zip((120, 7), IMAGE_SIZES, strict=True):
        corners = torch.rand(count, 2, generator=generator) * torch.tensor([width * 0.8, height * 0.8])
        sizes = torch.rand(count, 2, generator=generator) * torch.tensor([width * 0.5, height * 0.5]) + 1
        proposals.append(torch.cat((corners, (corners + sizes).minimum(torch.tensor([width, height]))), 1))
    return proposals


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("score_thresh", [0.0, 0.05])
def test_roi_heads_detections_equal_torchvision(seed, score_thresh):
    reference, ours = roi_pair(seed, score_thresh)
    reference.eval()
    features = make_features(seed)[:4]
    proposals = make_proposals(seed)
    reference_features = OrderedDict((str(i), f) for i, f in enumerate(features))
    expected, _ = reference(reference_features, proposals, IMAGE_SIZES)
    detections = ours.predict(features, proposals, IMAGE_SIZES)
    assert sum(len(d["boxes"]) for d in detections) > 0
    for mine, theirs in zip(detections, expected, strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(mine[key], theirs[key]), key


def test_roi_heads_predict_images_without_proposals():
    _, ours = roi_pair(0, 0.0)
    features = make_features(0)[:4]
    proposals = make_proposals(0)
    no_proposals = torch.zeros(0, 4)
    alone = ours.predict(features, [proposals[0], no_proposals], IMAGE_SIZES)
    both_empty = ours.predict(features, [no_proposals, no_proposals], IMAGE_SIZES)
    assert len(alone[0]["boxes"]) > 0
    for detections in (alone[1], *both_empty):
        assert detections["boxes"].shape == (0, 4) and detections["scores"].shape == (0,)
        assert detections["labels"].shape == (0,)


@pytest.mark.parametrize("seed", [0, 1])
def test_roi_heads_losses_equal_torchvision(seed):
    reference, ours = roi_pair(seed, 0.05)
    reference.train()
    features = make_features(seed)[:4]
    proposals = make_proposals(seed)
    targets = make_targets(seed, empty_second=seed == 1)
    reference_features = OrderedDict((str(i), f) for i, f in enumerate(features))
    torch.manual_seed(seed)
    _, expected = reference(reference_features, [p.clone() for p in proposals], IMAGE_SIZES, targets)
    torch.manual_seed(seed)
    losses = ours.loss(features, ours.sample(proposals, targets))
    assert set(losses) == {"loss_classifier", "loss_box_reg"}
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value, rtol=1e-5, atol=1e-7)


def test_level_assignment_equals_torchvision_level_mapper():
    from torchvision.ops.poolers import LevelMapper

    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(500, 2, generator=generator) * 600
    boxes = torch.cat((corners, corners + torch.rand(500, 2, generator=generator) * 700 + 0.5), 1)
    expected = LevelMapper(2, 5)([boxes])
    assert torch.equal(MultiLevelRoIAlign((4, 8, 16, 32)).assign_levels(boxes), expected)


@pytest.mark.parametrize("count", [0, 1, 63, 64, 65, 1001])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threaded_roi_align_equals_one_torchvision_call(count: int, threads: int) -> None:
    from torchvision.ops import roi_align

    generator = torch.Generator().manual_seed(count)
    feature = torch.randn(2, 8, 40, 56, generator=generator)
    corners = torch.rand(count, 2, generator=generator) * 200 - 20  # some boxes outside the map
    rois = torch.cat((torch.randint(2, (count, 1), generator=generator).float(), corners,
                      corners + torch.rand(count, 2, generator=generator) * 120), 1)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            found = threaded_roi_align(feature, rois, (7, 7), 0.25, 2)
        expected = roi_align(feature, rois, (7, 7), 0.25, 2)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(found, expected)


def test_threaded_roi_align_keeps_the_gradient_path() -> None:
    generator = torch.Generator().manual_seed(0)
    feature = torch.randn(1, 4, 30, 30, generator=generator, requires_grad=True)
    corners = torch.rand(200, 2, generator=generator) * 80
    rois = torch.cat((torch.zeros(200, 1), corners, corners + 20), 1)
    threaded_roi_align(feature, rois, (7, 7), 0.25, 2).sum().backward()
    assert feature.grad is not None and float(feature.grad.abs().sum()) > 0


def test_pooler_rejects_strides_that_are_not_powers_of_two():
    with pytest.raises(ValueError, match="powers of two"):
        MultiLevelRoIAlign((4, 12))


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize(("conv_channels", "norm"), [((16, 24), "bn"), ((16,), "gn")])
def test_conv_fc_head_equals_torchvision_v2_head(conv_channels, norm, training):
    from functools import partial

    from torch import nn
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead

    from structured.detection.roi_heads import ConvFCHead

    norm_layer = nn.BatchNorm2d if norm == "bn" else partial(nn.GroupNorm, math.gcd(32, conv_channels[0]))
    torch.manual_seed(0)
    reference = FastRCNNConvFCHead((CHANNELS, 7, 7), list(conv_channels), [64], norm_layer=norm_layer)
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    ours = ConvFCHead(CHANNELS, 7, conv_channels, 64, norm)
    ours.load_state_dict(reference.state_dict())
    reference.train(training)
    ours.train(training)
    pooled = torch.randn(40, CHANNELS, 7, 7, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours(pooled), reference(pooled))
    assert ours.out_features == 64


def test_conv_fc_head_rejects_bad_settings():
    from structured.detection.roi_heads import ConvFCHead

    with pytest.raises(ValueError, match="norm_layer must be one of"):
        ConvFCHead(CHANNELS, 7, (16,), 64, "layer")
    with pytest.raises(ValueError, match="at least one convolution"):
        ConvFCHead(CHANNELS, 7, (), 64)


@pytest.mark.parametrize(("recipe", "part", "key", "value", "message"), [
    ("faster_rcnn_r18_fpn", "roi_heads", "score_thresh", 2, r"roi_heads.score_thresh must be in \[0, 1\], got 2"),
    ("faster_rcnn_r18_fpn", "roi_heads", "score_thresh", -1, r"roi_heads.score_thresh must be in \[0, 1\], got -1"),
    ("faster_rcnn_r18_fpn", "roi_heads", "nms_thresh", 5, r"roi_heads.nms_thresh must be in \[0, 1\], got 5"),
    ("faster_rcnn_r18_fpn", "roi_heads", "detections_per_img", 0, "roi_heads.detections_per_img must be >= 1, got 0"),
    ("faster_rcnn_r18_fpn", "roi_heads", "detections_per_img", -5, "roi_heads.detections_per_img must be >= 1"),
    ("faster_rcnn_r18_fpn", "rpn", "post_nms_top_n_test", 0, "rpn.post_nms_top_n_test must be >= 1, got 0"),
    ("faster_rcnn_r18_fpn", "rpn", "pre_nms_top_n_train", 0, "rpn.pre_nms_top_n_train must be >= 1, got 0"),
    ("faster_rcnn_r18_fpn", "rpn", "nms_thresh", 1.5, r"rpn.nms_thresh must be in \[0, 1\], got 1.5"),
    ("faster_rcnn_r18_fpn", "rpn", "score_thresh", -0.1, r"rpn.score_thresh must be in \[0, 1\], got -0.1"),
    ("faster_rcnn_r18_fpn", "transform", "min_size", 0, "transform.min_size must be >= 1"),
    ("faster_rcnn_r18_fpn", "transform", "min_size", [640, 0], "transform.min_size must be >= 1"),
    ("faster_rcnn_r18_fpn", "transform", "max_size", 0, "transform.max_size must be >= 1, got 0"),
    ("mask_rcnn_r18_fpn", "roi_heads", "score_thresh", 2, r"roi_heads.score_thresh must be in \[0, 1\], got 2"),
    ("ssd300_vgg16", "postprocess", "score_thresh", 2, r"postprocess.score_thresh must be in \[0, 1\], got 2"),
    ("ssd300_vgg16", "postprocess", "nms_thresh", 5, r"postprocess.nms_thresh must be in \[0, 1\], got 5"),
    ("ssd300_vgg16", "postprocess", "detections_per_img", 0, "postprocess.detections_per_img must be >= 1"),
    ("ssd300_vgg16", "postprocess", "topk_candidates", 0, "postprocess.topk_candidates must be >= 1"),
    ("ssd300_vgg16", "transform", "size", 0, "transform.size must be >= 1, got 0"),
])
def test_part_settings_out_of_range_name_the_part_and_key(recipe, part, key, value, message):
    """Checked when the model is built, before any prediction: NMS would refuse an IoU threshold only once
    it runs, and a zero count or an impossible score threshold would silently leave no detections."""
    with pytest.raises(ConfigError, match=message):
        build_model({"model": {"name": recipe, "num_classes": 2, part: {key: value}}})


def test_anchors_that_do_not_pair_up_name_the_rpn_keys() -> None:
    from structured.detection.rpn import RPNSettings, build_rpn

    settings = RPNSettings(anchor_sizes=((32,), (64,)), aspect_ratios=((0.5, 1.0, 2.0),) * 3)
    with pytest.raises(ValueError, match=r"^rpn\.anchor_sizes / rpn\.aspect_ratios: sizes and aspect_ratios must have"):
        build_rpn(settings, in_channels=8)
