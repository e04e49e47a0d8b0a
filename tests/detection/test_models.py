"""Generic tester: every registered detection recipe honours the detector contract of docs/architecture.md.

Each recipe (and the demo's, configs/demo) is built small and checked for: the same model
as the flat recipes built before recipes were grouped by part (``recipe_fingerprints.json``), predictions in
both modes, losses in both modes (named finite scalars that back-propagate), images of odd and different sizes
in one batch, images without objects, and deterministic eval predictions; instance recipes (Mask R-CNN)
also ``loss_mask`` and ``masks [K, H, W]`` probabilities at each image's size. What "small" means and which
losses to expect is the family's (``FAMILIES``): R-CNNs at short side 128 with fewer proposals; SSDs at a
64 input with two small extra maps (their full layouts are checked in tests/detection/test_ssd.py). Each
recipe's YAML in configs/faster_rcnn, configs/mask_rcnn and configs/ssd states every part's settings
exactly as the registered recipe resolves them.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import typing
from pathlib import Path

import pytest
import torch
import yaml

from structured.config import (
    load_config,
    merge_parts,
    model_task,
    registered_parts,
    settings_class_of,
    settings_from,
    validate_section,
)
from structured.detection.faster_rcnn import RECIPES as FASTER_RCNN_RECIPES
from structured.detection.mask_rcnn import RECIPES as MASK_RCNN_RECIPES
from structured.detection.ssd import RECIPES as SSD_RECIPES
from structured.detection.ssd import SSDHeadSettings
from structured.registry import MODELS
from tests.detection.recipe_fingerprint import fingerprint

NUM_CLASSES = 3
SMALL = {
    "num_classes": NUM_CLASSES,
    "transform": {"min_size": 128, "max_size": 160},
    "rpn": {"pre_nms_top_n_train": 200, "post_nms_top_n_train": 64, "pre_nms_top_n_test": 100,
            "post_nms_top_n_test": 32},
    "roi_heads": {"batch_size_per_image": 32},
}
IMAGE_SIZES = [(97, 131), (150, 61)]


def small_ssd(name: str) -> dict:
    """An SSD recipe at a 64 input: its backbone maps plus two small extra maps, linear default box scales."""
    features = len(SSD_RECIPES[name].get("head", {}).get("features", SSDHeadSettings().features))
    return {"num_classes": NUM_CLASSES, "transform": {"size": 64},
            "head": {"extras": [[32, 64, 3, 2, 1], [32, 64, 3, 2, 1]]},
            "default_boxes": {"aspect_ratios": [[2]] * (features + 2), "scales": [], "steps": []},
            "postprocess": {"detections_per_img": 50}}


@dataclasses.dataclass(frozen=True)
class Family:
    """What the tester needs to know of a detector family: its small build, its losses, its predictor."""

    small: typing.Callable[[str], dict]
    losses: frozenset[str]
    predictor: str


FAMILIES = {
    "rcnn": Family(lambda name: SMALL, frozenset({"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                                                  "loss_box_reg"}), "roi_heads.predictor"),
    "ssd": Family(small_ssd, frozenset({"loss_localization", "loss_confidence"}), "head"),
}


def family_of(name: str) -> Family:
    """The family of a registered recipe (the demo recipe is a Faster R-CNN)."""
    return FAMILIES["ssd" if name in SSD_RECIPES else "rcnn"]


DEMO_RECIPE = Path(__file__).resolve().parents[2] / "configs" / "demo" / "shapes_faster_rcnn_r18_fpn.yaml"
FINGERPRINTS = json.loads((Path(__file__).with_name("recipe_fingerprints.json")).read_text())


RECIPES = {**FASTER_RCNN_RECIPES, **MASK_RCNN_RECIPES, **SSD_RECIPES}


@pytest.fixture(scope="module", params=[*sorted(RECIPES), "demo recipe"])
def built(request):
    """The recipe's model built small under seed 0, and its fingerprint taken before any test runs it."""
    torch.manual_seed(0)
    small = family_of(request.param).small(request.param)
    if request.param == "demo recipe":  # GroupNorm FPN and BatchNorm conv box head
        model = yaml.safe_load(DEMO_RECIPE.read_text())["model"]
        detector = MODELS.build(model.pop("name"), **merge_parts(model, small))
    else:
        detector = MODELS.build(request.param, **small)
    return request.param, detector, fingerprint(detector)


@pytest.fixture
def detector(built):
    return built[1]


@pytest.fixture
def family(built):
    return family_of(built[0])


def test_recipe_builds_the_model_the_flat_recipe_built(built):
    name, _, found = built
    if name not in FINGERPRINTS:
        pytest.skip("fingerprints were recorded for the recipes that existed before grouping (Faster R-CNN)")
    expected = FINGERPRINTS[name]
    assert found["settings"] == expected["settings"]
    assert (found["tensors"], found["layout_sha256"], found["norm_eps"]) == (
        expected["tensors"], expected["layout_sha256"], expected["norm_eps"])
    assert found["weight_abs_sum"] == pytest.approx(expected["weight_abs_sum"], rel=1e-9)


def make_images() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, h, w, generator=generator) for h, w in IMAGE_SIZES]


def is_instance_model(detector) -> bool:
    """Whether the detector predicts instance masks (its recipe's task, as the trainer reads it)."""
    return hasattr(detector, "mask_branch")


def box_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 ``[N, H, W]`` masks filling the inner half of each box."""
    masks = torch.zeros(len(boxes), *size, dtype=torch.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.round().int().tolist(), strict=True):
        mask[y1 + (y2 - y1) // 4 : y2 - (y2 - y1) // 4, x1 + (x2 - x1) // 4 : x2 - (x2 - x1) // 4] = 1
    return masks


def make_targets(empty: bool = False, masks: bool = False) -> list[dict]:
    boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [40.0, 5.0, 90.0, 33.0]])
    first = {"boxes": boxes, "labels": torch.tensor([1, NUM_CLASSES])}
    second = {"boxes": torch.tensor([[5.0, 50.0, 55.0, 140.0]]), "labels": torch.tensor([2])}
    if empty:
        second = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    targets = [first, second]
    if masks:
        for target, size in zip(targets, IMAGE_SIZES, strict=True):
            target["masks"] = box_masks(target["boxes"], size)
    return targets


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
        if "masks" in prediction:
            masks = prediction["masks"]
            assert masks.shape == (count, height, width) and masks.dtype == torch.float32
            assert count == 0 or (float(masks.min()) >= 0 and float(masks.max()) <= 1)


def check_losses(losses: dict, family: Family, instance: bool = False) -> None:
    assert set(losses) == family.losses | ({"loss_mask"} if instance else set())
    for name, value in losses.items():
        assert value.ndim == 0 and math.isfinite(value.item()), name


@pytest.mark.parametrize("training", [False, True])
def test_predictions_in_both_modes(detector, training):
    detector.train(training)
    with torch.no_grad():
        predictions = detector(make_images())
    check_predictions(predictions)
    assert all(("masks" in prediction) == is_instance_model(detector) for prediction in predictions)


@pytest.mark.parametrize(("training", "empty"), [(True, False), (False, True)])
def test_losses_in_both_modes(detector, family, training, empty):
    detector.train(training)
    torch.manual_seed(0)
    instance = is_instance_model(detector)
    losses = detector(make_images(), make_targets(empty, masks=instance))
    check_losses(losses, family, instance)
    sum(losses.values()).backward()
    for name, parameter in detector.get_submodule(family.predictor).named_parameters():
        assert parameter.grad is not None and bool(torch.isfinite(parameter.grad).all()), name
    detector.zero_grad()


def test_eval_is_deterministic_and_aliases_agree(detector, family):
    detector.eval()
    first = detector.predict(make_images())
    second = detector(make_images())
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key])
    torch.manual_seed(0)
    instance = is_instance_model(detector)
    losses = detector.loss(make_images(), make_targets(masks=instance))
    check_losses(losses, family, instance)


@pytest.mark.parametrize("size", [(1, 9), (1, 2000)], ids=["tiny", "strip"])
def test_single_tiny_image(detector, size):
    """A 1 x 9 image, and a 1 x 2000 strip whose short side a plain resize would round to no pixels."""
    detector.eval()
    with torch.no_grad():
        prediction = detector([torch.rand(3, *size)])[0]
    assert prediction["boxes"].shape[1] == 4
    if len(prediction["boxes"]):
        assert float(prediction["boxes"][:, 1::2].max()) <= size[0] + 1e-3


CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"


def recipe_yaml(name: str) -> Path:
    """The YAML of a registered recipe: ``configs/<family>/<name>.yaml``."""
    family = "mask_rcnn" if name in MASK_RCNN_RECIPES else "ssd" if name in SSD_RECIPES else "faster_rcnn"
    return CONFIG_ROOT / family / f"{name}.yaml"


def plain(value):
    """YAML-comparable form of a default (tuples become lists)."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return [plain(item) for item in value] if isinstance(value, (tuple, list)) else value


def explicit_part(section: dict, registry, filled_by_model: tuple[str, ...]) -> dict:
    """A registered part's section with every option its builder takes (less the model's own) spelled out."""
    parameters = inspect.signature(registry.get(section["name"])).parameters
    defaults = {key: parameter.default for key, parameter in parameters.items()
                if key not in filled_by_model and parameter.default is not inspect.Parameter.empty}
    return {"name": section["name"], **defaults, **section}


def explicit_recipe(name: str) -> dict:
    """The registered recipe ``name`` with every part's every setting spelled out."""
    recipe = MODELS.get(name)
    registered, hints = registered_parts(recipe.builder), typing.get_type_hints(recipe.builder)
    explicit = {"name": name}
    for key, parameter in inspect.signature(recipe).parameters.items():
        value, settings_class = parameter.default, settings_class_of(hints[key])
        if key in registered and value is not None:
            value = explicit_part(value, registered[key].registry, registered[key].filled_by_model)
        elif settings_class is not None:
            value = dataclasses.asdict(settings_from(settings_class, value, key))
        explicit[key] = plain(value)
    return explicit


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_yaml_recipe_states_every_setting_of_the_registered_recipe(name):
    config = yaml.safe_load(recipe_yaml(name).read_text())["model"]
    assert config == explicit_recipe(name)


@pytest.mark.parametrize("path", sorted(CONFIG_ROOT.glob("*/*.yaml")), ids=lambda path: path.stem)
def test_every_yaml_recipe_validates_part_by_part(path):
    config = load_config(path, ["model.num_classes=3"])
    validate_section(config["model"], MODELS, "model", config.source, config.overrides)
    family = path.parent.name
    if family in ("faster_rcnn", "mask_rcnn", "ssd"):
        assert model_task(config) == ("instance" if family == "mask_rcnn" else "detection")
