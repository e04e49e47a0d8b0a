"""Generic tester: every registered Faster R-CNN recipe honours the detector contract of docs/architecture.md.

Each recipe (and the demo's, configs/demo) is built small (short side 128) and checked for: predictions in both modes, losses in both
modes (named finite scalars that back-propagate), images of odd and different sizes in one batch,
images without objects, and deterministic eval predictions. Each recipe's YAML in configs/faster_rcnn
states exactly the registered builder's arguments and defaults.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
import yaml

from structured.detection.faster_rcnn import RECIPES
from structured.registry import MODELS

NUM_CLASSES = 3
LOSS_NAMES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
SMALL = {
    "num_classes": NUM_CLASSES,
    "min_size": 128,
    "max_size": 160,
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 64,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 32,
    "box_batch_size_per_image": 32,
}
IMAGE_SIZES = [(97, 131), (150, 61)]


DEMO_RECIPE = Path(__file__).resolve().parents[2] / "configs" / "demo" / "shapes_faster_rcnn_r18_fpn.yaml"


@pytest.fixture(scope="module", params=[*sorted(RECIPES), "demo recipe"])
def detector(request):
    torch.manual_seed(0)
    if request.param == "demo recipe":  # GroupNorm FPN and BatchNorm conv box head
        model = yaml.safe_load(DEMO_RECIPE.read_text())["model"]
        return MODELS.build(model.pop("name"), **{**model, **SMALL})
    return MODELS.build(request.param, **SMALL)


def make_images() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, h, w, generator=generator) for h, w in IMAGE_SIZES]


def make_targets(empty: bool = False) -> list[dict]:
    boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [40.0, 5.0, 90.0, 33.0]])
    first = {"boxes": boxes, "labels": torch.tensor([1, NUM_CLASSES])}
    second = {"boxes": torch.tensor([[5.0, 50.0, 55.0, 140.0]]), "labels": torch.tensor([2])}
    if empty:
        second = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    return [first, second]


def check_predictions(predictions: list[dict]) -> None:
    assert len(predictions) == len(IMAGE_SIZES)
    for prediction, (height, width) in zip(predictions, IMAGE_SIZES, strict=True):
        count = prediction["boxes"].shape[0]
        assert prediction["boxes"].shape == (count, 4) and prediction["boxes"].dtype == torch.float32
        assert prediction["scores"].shape == (count,) and prediction["labels"].dtype == torch.int64
        if count:
            assert int(prediction["labels"].min()) >= 1 and int(prediction["labels"].max()) <= NUM_CLASSES
            assert float(prediction["boxes"][:, 0::2].max()) <= width + 1e-3
            assert float(prediction["boxes"][:, 1::2].max()) <= height + 1e-3
            assert bool((prediction["scores"][:-1] >= prediction["scores"][1:]).all())


def check_losses(losses: dict) -> None:
    assert set(losses) == LOSS_NAMES
    for name, value in losses.items():
        assert value.ndim == 0 and math.isfinite(value.item()), name


@pytest.mark.parametrize("training", [False, True])
def test_predictions_in_both_modes(detector, training):
    detector.train(training)
    with torch.no_grad():
        check_predictions(detector(make_images()))


@pytest.mark.parametrize(("training", "empty"), [(True, False), (False, True)])
def test_losses_in_both_modes(detector, training, empty):
    detector.train(training)
    torch.manual_seed(0)
    losses = detector(make_images(), make_targets(empty))
    check_losses(losses)
    sum(losses.values()).backward()
    gradient = detector.roi_heads.predictor.cls_score.weight.grad
    assert gradient is not None and bool(torch.isfinite(gradient).all())
    detector.zero_grad()


def test_eval_is_deterministic_and_aliases_agree(detector):
    detector.eval()
    first = detector.predict(make_images())
    second = detector(make_images())
    for a, b in zip(first, second, strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key])
    torch.manual_seed(0)
    losses = detector.loss(make_images(), make_targets())
    check_losses(losses)


def test_single_tiny_image(detector):
    detector.eval()
    with torch.no_grad():
        prediction = detector([torch.rand(3, 1, 9)])[0]
    assert prediction["boxes"].shape[1] == 4


CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "faster_rcnn"


def plain(value):
    """YAML-comparable form of a default (tuples become lists)."""
    return [plain(item) for item in value] if isinstance(value, (tuple, list)) else value


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_yaml_recipe_matches_the_registered_builder(name):
    config = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())["model"]
    assert config.pop("name") == name
    parameters = inspect.signature(MODELS.get(name)).parameters
    assert set(config) == set(parameters)
    for key, value in config.items():
        assert value == plain(parameters[key].default), key
