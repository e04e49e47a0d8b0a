"""Faster R-CNN end to end: equivalence with torchvision's models, and training on generated images.

Equivalence: torchvision's ``fasterrcnn_resnet50_fpn`` / ``fasterrcnn_mobilenet_v3_large_fpn`` built with
seeded random weights (``weights=None, weights_backbone=None``; batch-norm statistics calibrated on random
images so activations keep a realistic scale; class and objectness layers widened so scores spread), its
state dict converted with ``structured.convert.torchvision`` into our recipe; both run in eval mode on the
same images. torchvision runs its detection backbones with ``FrozenBatchNorm2d`` whenever weights are
loaded, but with ``BatchNorm2d`` when built untrained; the two compute the same function with different
float rounding, and a random deep network amplifies that rounding, so the reference is switched to
torchvision's own ``FrozenBatchNorm2d`` (what it runs with a real checkpoint).
"""

from __future__ import annotations

import cv2
import pytest
import torch
from torch import nn
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn

from bench.detector_speed import freeze_batch_norms
from structured.backbones import FrozenBatchNorm2d
from structured.convert.torchvision import convert_faster_rcnn
from structured.detection import faster_rcnn as faster_rcnn_module
from structured.registry import MODELS

BOX_TOLERANCE = 1e-3
SCORE_TOLERANCE = 1e-4


@torch.no_grad()
def randomised_reference(builder, seed: int, trunk_only: bool = False, **options) -> nn.Module:
    """torchvision detector with seeded random weights and batch-norm statistics of random images.

    Its batch norms become ``FrozenBatchNorm2d`` everywhere, or with ``trunk_only`` in the trunk alone, as
    torchvision's ``_v2`` models run with a checkpoint (batch norms in the FPN and heads stay).
    """
    torch.manual_seed(seed)
    model = builder(weights=None, weights_backbone=None, **options)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.uniform_(0.5, 1.5)
            module.bias.normal_(0, 0.1)
            module.momentum = 1.0
    model.rpn.head.cls_logits.weight.normal_(0, 0.3)
    model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.02)
    model.train()
    model.backbone(torch.rand(2, 3, 224, 288))
    freeze_batch_norms(model.backbone.body if trunk_only else model)
    return model.eval()


def unmatched_detections(expected: dict, actual: dict) -> int:
    """Detections of ``actual`` without a distinct partner in ``expected`` (same label, close box and score)."""
    used: set[int] = set()
    missing = 0
    for box, score, label in zip(actual["boxes"], actual["scores"], actual["labels"], strict=True):
        close = (
            (expected["labels"] == label)
            & ((expected["boxes"] - box).abs().amax(dim=1) <= BOX_TOLERANCE)
            & ((expected["scores"] - score).abs() <= SCORE_TOLERANCE)
        )
        partners = [index for index in torch.where(close)[0].tolist() if index not in used]
        if partners:
            used.add(partners[0])
        else:
            missing += 1
    return missing


def assert_same_detections(expected: list[dict], actual: list[dict]) -> None:
    for index, (theirs, mine) in enumerate(zip(expected, actual, strict=True)):
        assert len(mine["boxes"]) == len(theirs["boxes"]), f"image {index}: detection counts differ"
        assert torch.equal(mine["labels"].sort().values, theirs["labels"].sort().values), (
            f"image {index}: labels"
        )
        assert unmatched_detections(theirs, mine) == 0, f"image {index}: detections differ"


def compare_with_torchvision(builder, recipe: str, images: list[torch.Tensor], transform: dict | None = None) -> int:
    """Run both models on ``images`` at score thresholds 0 and 0.05; returns the detections compared.

    ``transform``: ``min_size`` / ``max_size`` for both (torchvision's arguments, our ``model.transform`` part).
    """
    transform = transform or {}
    reference = randomised_reference(builder, 0, **transform)
    ours = MODELS.build(recipe, transform=transform).eval()
    ours.load_state_dict(convert_faster_rcnn(reference.state_dict(), recipe))
    compared = 0
    for score_thresh in (0.0, 0.05):
        reference.roi_heads.score_thresh = ours.roi_heads.score_thresh = score_thresh
        with torch.no_grad():
            expected, actual = reference(images), ours(images)
        assert_same_detections(expected, actual)
        compared += sum(len(p["boxes"]) for p in actual)
    return compared


def generated_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth random image with a few bright rectangles."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.nn.functional.interpolate(
        torch.rand(1, 3, height // 16, width // 16, generator=generator), (height, width)
    )[0]
    for _ in range(4):
        x, y = (torch.rand(2, generator=generator) * torch.tensor([width * 0.7, height * 0.7])).int().tolist()
        image[:, y : y + height // 4, x : x + width // 5] = torch.rand(3, 1, 1, generator=generator)
    return image


def raccoon_images(root) -> list[torch.Tensor]:
    """Two raccoon photos (one of them grayscale on disk) as RGB float tensors."""
    images = []
    for name in ("raccoon-1.jpg", "raccoon-12.jpg"):
        pixels = cv2.cvtColor(
            cv2.imread(str(root / "raccoon" / "images" / name), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
        )
        images.append(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    return images


def test_mobilenet_fpn_equals_torchvision_on_generated_images():
    images = [generated_image(300, 417)]
    assert (
        compare_with_torchvision(
            fasterrcnn_mobilenet_v3_large_fpn, "faster_rcnn_mobilenet_v3_large_fpn", images
        )
        > 0
    )


@pytest.mark.real_data
def test_mobilenet_fpn_equals_torchvision_on_raccoon_images(shared_data):
    images = raccoon_images(shared_data)
    assert (
        compare_with_torchvision(
            fasterrcnn_mobilenet_v3_large_fpn, "faster_rcnn_mobilenet_v3_large_fpn", images
        )
        > 0
    )


@pytest.mark.slow
@pytest.mark.real_data
def test_resnet50_fpn_equals_torchvision_on_raccoon_images(shared_data):
    images = raccoon_images(shared_data)[:1]
    transform = {"min_size": 512, "max_size": 683}
    assert compare_with_torchvision(fasterrcnn_resnet50_fpn, "faster_rcnn_r50_fpn", images, transform=transform) > 0


def test_optimize_for_inference_keeps_the_detections():
    torch.manual_seed(0)
    model = MODELS.build("faster_rcnn_mobilenet_v3_large_320_fpn", roi_heads={"score_thresh": 0.0}).eval()
    image = generated_image(240, 320)
    with torch.no_grad():
        expected = model([image])
        model.optimize_for_inference()
        actual = model([image])
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert len(expected[0]["boxes"]) > 0
    assert_same_detections(expected, actual)


@pytest.mark.parametrize("shape", [(1, 256, 200, 272), (2, 64, 256, 260), (1, 8, 5, 7)])
def test_channels_last_maps_are_made_contiguous_with_the_same_values(shape):
    """The blocked copy for large maps (from BLOCKED_TRANSPOSE_MIN_ELEMENTS), ``contiguous()`` below."""
    feature = torch.rand(*shape, generator=torch.Generator().manual_seed(0)).to(memory_format=torch.channels_last)
    copied = faster_rcnn_module._contiguous_from_channels_last(feature)
    assert copied.is_contiguous() and torch.equal(copied, feature)
