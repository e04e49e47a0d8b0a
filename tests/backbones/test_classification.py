"""Classification mode: parameter counts against torchvision's published figures, logits shape."""

from __future__ import annotations

import pytest
import torch
import torchvision

from structured.backbones.profiling import count_parameters
from structured.registry import BACKBONES

# Parameter counts for 1000 classes, as published in torchvision's model tables (and the MobileNet v1 paper).
PUBLISHED_PARAMS = {
    "vgg16": 138_357_544,
    "resnet50": 25_557_032,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v1": 4_231_976,
    "resnet18": 11_689_512,
    "mobilenet_v3_small": 2_542_856,
    "efficientnet_b0": 5_288_548,
    "googlenet": 6_624_904,
    "alexnet": 61_100_840,
}
SLOW = {"vgg16", "alexnet"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in PUBLISHED_PARAMS]
)
def test_classification_parameter_count(name: str) -> None:
    model = BACKBONES.build(name, classifier=True)
    assert count_parameters(model) == PUBLISHED_PARAMS[name]


def test_inception_v3_without_auxiliary_head_matches_torchvision() -> None:
    ours = BACKBONES.build("inception_v3", classifier=True)
    theirs = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    assert count_parameters(ours) == count_parameters(theirs)


@pytest.mark.parametrize("name", ["mobilenet_v1", "fractalnet", "mobilenet_v3_small"])
def test_classify_gives_logits_for_the_requested_classes(name: str) -> None:
    options = {"channels": (8, 16, 16, 32, 32)} if name == "fractalnet" else {}
    model = BACKBONES.build(name, classifier=True, num_classes=7, **options).eval()
    with torch.no_grad():
        logits = model.classify(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


def test_backbone_without_classifier_has_no_head_parameters() -> None:
    with_head = BACKBONES.build("mobilenet_v1", classifier=True)
    without = BACKBONES.build("mobilenet_v1")
    assert count_parameters(with_head) - count_parameters(without) == 1024 * 1000 + 1000
