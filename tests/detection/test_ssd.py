"""SSD: default boxes, matching and the loss against their definitions, full layouts, and torchvision's models.

Default boxes and matching are compared with torchvision's ``DefaultBoxGenerator`` and ``SSDMatcher``; the
loss with a direct computation of the paper's formula (Liu et al. 2016, eq. 1-3) on random head outputs;
conversion with torchvision's ``ssd300_vgg16`` and ``ssdlite320_mobilenet_v3_large`` built with seeded
random weights (batch-norm statistics of random images), on a generated image and on a raccoon photo.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import ssd300_vgg16, ssdlite320_mobilenet_v3_large
from torchvision.models.detection._utils import SSDMatcher
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator as TorchvisionDefaultBoxes
from torchvision.models.detection.image_list import ImageList

from structured.api import Detector
from structured.boxes import DefaultBoxGenerator, DefaultBoxMatcher, box_iou
from structured.config import load_config
from structured.convert.torchvision import convert_checkpoint_file, convert_ssd
from structured.data.loading import image_to_tensor
from structured.data.recipes import _train_transforms, data_config
from structured.detection.ssd import DefaultBoxSettings
from structured.registry import MODELS
from tests.conftest import REPO_ROOT
from tests.detection.test_faster_rcnn import assert_same_detections, generated_image, raccoon_images

TORCHVISION_BOXES = {
    "ssd300_vgg16": (dict(aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                          scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05], steps=[8, 16, 32, 64, 100, 300]),
                     300, [38, 19, 10, 5, 3, 1]),
    "ssdlite320_mobilenet_v3_large": (dict(aspect_ratios=[[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95),
                                      320, [20, 10, 5, 3, 2, 1]),
}
BUILDERS = {"ssd300_vgg16": ssd300_vgg16, "ssdlite320_mobilenet_v3_large": ssdlite320_mobilenet_v3_large}


def recipe_default_boxes(name: str) -> DefaultBoxGenerator:
    """The default box generator of our registered recipe ``name``, from its ``default_boxes`` part."""
    settings = DefaultBoxSettings(**MODELS.get(name).defaults.get("default_boxes", {}))
    return DefaultBoxGenerator(settings.aspect_ratios, settings.min_scale, settings.max_scale,
                               settings.scales or None, settings.steps or None, settings.clip)


@pytest.mark.parametrize("name", sorted(TORCHVISION_BOXES))
def test_default_boxes_equal_torchvision_for_its_two_models(name):
    options, size, maps = TORCHVISION_BOXES[name]
    reference = TorchvisionDefaultBoxes(**options)(
        ImageList(torch.zeros(1, 3, size, size), [(size, size)]), [torch.zeros(1, 1, m, m) for m in maps])[0]
    ours = recipe_default_boxes(name)([(m, m) for m in maps], (size, size))
    assert ours.shape == reference.shape
    assert torch.equal(ours, reference)


@pytest.mark.parametrize(("name", "count"), [("ssd300_vgg16", 8732), ("ssd512_vgg16", 24564),
                                             ("ssd300_resnet50", 8732)])
def test_full_layouts_give_the_papers_default_box_counts(name, count):
    with torch.device("meta"):  # shapes only: nothing is computed or initialised
        model = MODELS.build(name)
        size = model.transform.size
        maps = model.feature_maps(torch.empty(1, 3, size, size))
        logits, deltas = model.head(maps)
        boxes = model.default_boxes([tuple(x.shape[-2:]) for x in maps], (size, size), device="meta")
    assert logits.shape == (1, count, 91) and deltas.shape == (1, count, 4) and boxes.shape == (count, 4)


def test_default_boxes_scales_are_linear_with_the_extra_box():
    generator = DefaultBoxGenerator([[2], [2, 3]], min_scale=0.2, max_scale=0.9)
    assert generator.scales == pytest.approx((0.2, 0.9, 1.0))
    assert generator.num_anchors_per_location() == [4, 6]
    first_cell = generator.normalized_boxes([(2, 2), (1, 1)], (100, 100))[:4]
    root = math.sqrt(2)
    expected = [[0.25, 0.25, 0.2, 0.2], [0.25, 0.25, math.sqrt(0.18), math.sqrt(0.18)],
                [0.25, 0.25, 0.2 * root, 0.2 / root], [0.25, 0.25, 0.2 / root, 0.2 * root]]
    assert torch.allclose(first_cell, torch.tensor(expected))
    with pytest.raises(ValueError, match="scales must be 3 positive numbers"):
        DefaultBoxGenerator([[2], [2]], scales=[0.1, 0.2])


def test_matching_equals_torchvision_and_gives_every_object_a_box():
    generator = torch.Generator().manual_seed(0)
    for num_gt in (1, 3, 7):
        quality = torch.rand(num_gt, 50, generator=generator) ** 3
        ours = DefaultBoxMatcher(0.5)(quality)
        assert torch.equal(ours, SSDMatcher(0.5)(quality))
        assert set(ours.tolist()) >= set(range(num_gt))
        assert bool(((ours >= 0) | (quality.max(dim=0).values < 0.5)).all())
    empty = DefaultBoxMatcher()(torch.zeros(0, 5))
    assert empty.tolist() == [-1] * 5


def paper_loss(logits, deltas, boxes, targets, matches, ratio=3.0, variances=(0.1, 0.2)):
    """L = (L_conf + L_loc) / N written out per image and default box, with hard negatives chosen by sorting."""
    positives, localization, confidence = 0, 0.0, 0.0
    for image, target in enumerate(targets):
        log_probs = F.log_softmax(logits[image], dim=-1)
        positive = [d for d in range(len(boxes)) if matches[image][d] >= 0]
        positives += len(positive)
        for d in positive:
            gt = target["boxes"][matches[image][d]]
            d_cx, d_cy = (boxes[d, 0] + boxes[d, 2]) / 2, (boxes[d, 1] + boxes[d, 3]) / 2
            d_w, d_h = boxes[d, 2] - boxes[d, 0], boxes[d, 3] - boxes[d, 1]
            g_cx, g_cy = (gt[0] + gt[2]) / 2, (gt[1] + gt[3]) / 2
            g_w, g_h = gt[2] - gt[0], gt[3] - gt[1]
            offsets = torch.stack(((g_cx - d_cx) / d_w / variances[0], (g_cy - d_cy) / d_h / variances[0],
                                   torch.log(g_w / d_w) / variances[1], torch.log(g_h / d_h) / variances[1]))
            difference = (deltas[image, d] - offsets).abs()
            localization += torch.where(difference < 1, 0.5 * difference**2, difference - 0.5).sum()
            confidence -= log_probs[d, target["labels"][matches[image][d]]]
        negative_losses = sorted((-log_probs[d, 0] for d in range(len(boxes)) if matches[image][d] < 0),
                                 key=float, reverse=True)
        confidence += sum(negative_losses[: int(ratio * len(positive))], torch.tensor(0.0))
    count = max(1, positives)
    return localization / count, confidence / count


def test_loss_equals_the_papers_formula_on_random_outputs():
    torch.manual_seed(0)
    model = MODELS.build("ssdlite320_mobilenet_v3_large", num_classes=4)
    boxes = DefaultBoxGenerator([[2]], min_scale=0.3, max_scale=0.6)([(6, 6)], (64, 64))  # [144, 4]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [30.0, 20.0, 60.0, 50.0]]), "labels": torch.tensor([1, 4])},
        {"boxes": torch.tensor([[10.0, 10.0, 20.0, 25.0]]), "labels": torch.tensor([3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    logits, deltas = torch.randn(3, len(boxes), 5), torch.randn(3, len(boxes), 4)
    losses = model.compute_loss(logits, deltas, boxes, targets)
    matches = [DefaultBoxMatcher(0.5)(box_iou(t["boxes"], boxes)).tolist() for t in targets]
    localization, confidence = paper_loss(logits, deltas, boxes, targets, matches)
    assert set(losses) == {"loss_localization", "loss_confidence"}
    assert losses["loss_localization"].item() == pytest.approx(localization.item(), rel=1e-5)
    assert losses["loss_confidence"].item() == pytest.approx(confidence.item(), rel=1e-5)


@torch.no_grad()
def randomised_reference(name: str, num_classes: int = 5) -> nn.Module:
    """torchvision's ``name`` with seeded random weights and batch-norm statistics of random images."""
    torch.manual_seed(0)
    model = BUILDERS[name](weights=None, weights_backbone=None, num_classes=num_classes + 1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.uniform_(0.5, 1.5)
            module.bias.normal_(0, 0.1)
            module.momentum = 1.0
    model.train()
    model.backbone(torch.rand(2, 3, 320, 320))
    return model.eval()


def compare_with_torchvision(name: str, images: list[torch.Tensor]) -> int:
    """Both models on ``images`` give the same detections (boxes within 1e-3 px, scores 1e-4); returns their count."""
    reference = randomised_reference(name)
    ours = MODELS.build(name, num_classes=5).eval()
    ours.load_state_dict(convert_ssd(reference.state_dict(), name))
    with torch.no_grad():
        expected, actual = reference(images), ours(images)
    assert_same_detections(expected, actual)
    return sum(len(prediction["boxes"]) for prediction in actual)


def test_ssdlite_equals_torchvision_on_a_generated_image():
    assert compare_with_torchvision("ssdlite320_mobilenet_v3_large", [generated_image(240, 330)]) > 0


@pytest.mark.real_data
def test_ssdlite_equals_torchvision_on_a_raccoon_photo(shared_data):
    assert compare_with_torchvision("ssdlite320_mobilenet_v3_large", raccoon_images(shared_data)[:1]) > 0


@pytest.mark.slow
@pytest.mark.real_data
def test_ssd300_vgg16_equals_torchvision_on_a_raccoon_photo(shared_data):
    assert compare_with_torchvision("ssd300_vgg16", raccoon_images(shared_data)[:1]) > 0


def test_optimize_for_inference_keeps_the_detections():
    torch.manual_seed(0)
    model = MODELS.build("ssdlite320_mobilenet_v3_large", num_classes=3).eval()
    image = generated_image(200, 260)
    with torch.no_grad():
        expected = model([image])
        model.optimize_for_inference()
        actual = model([image])
    assert not any(isinstance(module, nn.BatchNorm2d) for module in model.modules())
    assert len(expected[0]["boxes"]) > 0
    assert_same_detections(expected, actual)


def test_a_converted_ssdlite_checkpoint_loads_as_a_detector(tmp_path):
    reference = randomised_reference("ssdlite320_mobilenet_v3_large", num_classes=2)
    source, destination = tmp_path / "tv.pth", tmp_path / "ours.pt"
    torch.save(reference.state_dict(), source)
    checkpoint = convert_checkpoint_file(source, destination, "ssdlite320_mobilenet_v3_large")
    assert checkpoint["config"]["model"] == {"name": "ssdlite320_mobilenet_v3_large", "num_classes": 2}
    detector = Detector.from_checkpoint(destination, optimize=False)
    pixels = (generated_image(120, 160) * 255).round().byte().permute(1, 2, 0).numpy()  # what predict reads
    with torch.no_grad():
        expected = reference([image_to_tensor(pixels)])
    assert_same_detections(expected, [{key: getattr(result, key) for key in ("boxes", "scores", "labels")}
                                      for result in detector.predict([pixels])])


def test_an_unknown_ssd_key_is_named():
    with pytest.raises(KeyError, match="backbone.mystery"):
        convert_ssd({"backbone.mystery.weight": torch.zeros(1)}, "ssd300_vgg16")


def test_the_ssd_recipes_select_the_papers_augmentation():
    config = load_config(REPO_ROOT / "configs" / "ssd" / "ssd300_vgg16.yaml", ["data.train=unused"])
    names = [type(step).__name__ for step in _train_transforms(data_config(config), "detection").transforms]
    assert names == ["PhotometricDistort", "RandomZoomOut", "RandomIoUCrop", "RandomHorizontalFlip"]
