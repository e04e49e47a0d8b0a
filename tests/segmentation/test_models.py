"""Generic tester: every registered UNet recipe honours the semantic model contract of docs/architecture.md.

Each recipe is built small (narrow encoder and decoder, its registered class count: one sigmoid channel for
the one-class recipes, C + 1 softmax channels for the others) and checked for: predictions in both modes
(``mask`` int64 and ``probabilities [C + 1, H, W]`` at each image's odd size), losses in both modes (named
finite scalars that back-propagate) with partly ignored, all-background and all-ignored targets, batches of
one, deterministic eval predictions, the aliases, ``optimize_for_inference`` keeping the predictions, and
the task the trainer reads. Each recipe's YAML in configs/unet states every part's setting exactly as the
registered recipe resolves it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from structured.config import load_config, model_task, validate_section
from structured.registry import MODELS
from structured.segmentation.unet import RECIPES
from structured.types import IGNORE_INDEX
from tests.detection.test_models import explicit_recipe

IMAGE_SIZES = [(97, 131), (50, 61)]
LOSS_NAMES = {"loss_ce", "loss_dice"}
CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs" / "unet"


def small_settings(name: str) -> dict:
    """Narrow channels with the recipe's own number of decoder blocks (and the original's depth)."""
    recipe = MODELS.get(name)
    blocks = len(recipe.defaults["decoder"]["channels"]) if "decoder" in recipe.defaults else 5
    settings = {"decoder": {"channels": [max(8, 64 >> k) for k in range(blocks)]}}
    if "encoder" in recipe.defaults:
        settings["encoder"] = {"width": 8}
    return settings


def build_small(name: str):
    torch.manual_seed(0)
    return MODELS.build(name, **small_settings(name))


@pytest.fixture(scope="module", params=sorted(RECIPES))
def built(request):
    """The recipe's name and its model built small under seed 0."""
    return request.param, build_small(request.param)


@pytest.fixture
def model(built):
    return built[1]


def make_images(sizes=IMAGE_SIZES) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, h, w, generator=generator) for h, w in sizes]


def make_targets(num_classes: int, kind: str = "partly ignored") -> list[dict]:
    """Class maps of ``IMAGE_SIZES``: random classes with an ignored band, or one image all background or
    all ignored, or both images all ignored."""
    generator = torch.Generator().manual_seed(2)
    maps = [torch.randint(0, num_classes + 1, size, generator=generator) for size in IMAGE_SIZES]
    maps[0][:, :10] = IGNORE_INDEX
    if kind == "background":
        maps[1].zero_()
    elif kind == "one ignored":
        maps[1].fill_(IGNORE_INDEX)
    elif kind == "all ignored":
        maps = [torch.full_like(semantic, IGNORE_INDEX) for semantic in maps]
    return [{"semantic": semantic, "image_id": index} for index, semantic in enumerate(maps)]


def check_predictions(predictions: list[dict], num_classes: int, sizes=IMAGE_SIZES) -> None:
    assert len(predictions) == len(sizes)
    for prediction, (height, width) in zip(predictions, sizes, strict=True):
        assert set(prediction) == {"mask", "probabilities"}
        mask, probabilities = prediction["mask"], prediction["probabilities"]
        assert mask.shape == (height, width) and mask.dtype == torch.int64
        assert probabilities.shape == (num_classes + 1, height, width) and probabilities.dtype == torch.float32
        assert int(mask.min()) >= 0 and int(mask.max()) <= num_classes
        torch.testing.assert_close(probabilities.sum(0), torch.ones(height, width))
        assert torch.equal(mask, probabilities.argmax(0))


def check_losses(losses: dict) -> None:
    assert set(losses) == LOSS_NAMES
    for name, value in losses.items():
        assert value.ndim == 0 and math.isfinite(value.item()), name


@pytest.mark.parametrize("training", [False, True])
def test_predictions_in_both_modes(model, training):
    model.train(training)
    with torch.no_grad():
        check_predictions(model(make_images()), model.num_classes)


@pytest.mark.parametrize(("training", "kind"), [(True, "partly ignored"), (True, "background"),
                                                (False, "one ignored")])
def test_losses_in_both_modes(model, training, kind):
    model.train(training)
    losses = model(make_images(), make_targets(model.num_classes, kind))
    check_losses(losses)
    sum(losses.values()).backward()
    gradient = model.head.weight.grad
    assert gradient is not None and bool(torch.isfinite(gradient).all()) and bool(gradient.abs().sum() > 0)
    model.zero_grad()


def test_all_ignored_targets_give_zero_losses(model):
    model.train()
    losses = model(make_images(), make_targets(model.num_classes, "all ignored"))
    check_losses(losses)
    assert all(value.item() == 0 for value in losses.values())
    sum(losses.values()).backward()
    assert torch.equal(model.head.weight.grad, torch.zeros_like(model.head.weight))
    model.zero_grad()


def test_batch_of_one(model):
    model.train()
    losses = model(make_images(IMAGE_SIZES[:1]), make_targets(model.num_classes)[:1])
    check_losses(losses)
    model.eval()
    check_predictions(model.predict([torch.rand(3, 1, 9)]), model.num_classes, [(1, 9)])


def test_eval_is_deterministic_and_aliases_agree(model):
    model.eval()
    first, second = model.predict(make_images()), model(make_images())
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["probabilities"], b["probabilities"])
    targets = make_targets(model.num_classes)
    assert model.loss(make_images(), targets) == model(make_images(), targets)


def test_optimize_for_inference_keeps_the_predictions(built):
    name, _ = built
    model = build_small(name)
    model.train()
    with torch.no_grad():  # batch-norm statistics of the model's own activations, whatever ran before
        for _ in range(3):
            model(make_images(), make_targets(model.num_classes))
    model.eval()
    expected = model.predict(make_images())
    optimized = build_small(name)
    optimized.load_state_dict(model.state_dict())
    found = optimized.optimize_for_inference().predict(make_images())
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in optimized.modules())
    for a, b in zip(expected, found, strict=True):
        torch.testing.assert_close(b["probabilities"], a["probabilities"], atol=1e-4, rtol=1e-4)
        assert float((a["mask"] != b["mask"]).float().mean()) < 1e-3


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_yaml_recipe_states_every_setting_of_the_registered_recipe(name):
    path = CONFIG_ROOT / f"{name}.yaml"
    assert yaml.safe_load(path.read_text())["model"] == explicit_recipe(name)
    config = load_config(path)
    validate_section(config["model"], MODELS, "model", config.source, config.overrides)
    assert model_task(config) == "semantic"
    assert config["train"]["best_metric"] == ("fg_IoU" if name == "unet_nuclei" else "mIoU")
