"""Mask R-CNN against torchvision's (the test oracle): the mask branch alone, then the whole converted model.

Branch: both sides get the same weights, features, proposals and targets; in train mode (same seed, so
the same proposal sample) ``loss_mask`` must be equal; in eval mode the mask probabilities of every
detection must be equal before pasting. Whole model: torchvision's ``maskrcnn_resnet50_fpn`` with seeded
random weights (as in test_faster_rcnn.py), converted onto ``mask_rcnn_r50_fpn``: the same detections,
and pasted masks within 1e-3 mean absolute difference over the image, per detection.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import pytest
import torch
import yaml
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes
from torchvision.ops import MultiScaleRoIAlign

from structured.config import load_config
from structured.convert.torchvision import convert_faster_rcnn
from structured.data.loading import image_to_tensor, read_image
from structured.data.synthetic import generate_dataset
from structured.detection.mask_rcnn import MaskBranch, project_masks
from structured.detection.roi_heads import MultiLevelRoIAlign
from structured.engine import Trainer, load_checkpoint, read_log
from structured.registry import MODELS
from tests.conftest import REPO_ROOT
from tests.detection.test_faster_rcnn import (
    assert_same_detections,
    generated_image,
    raccoon_images,
    randomised_reference,
)
from tests.detection.test_heads import (
    CHANNELS,
    IMAGE_SIZES,
    NUM_CLASSES,
    STRIDES,
    make_features,
    make_proposals,
    make_targets,
    roi_pair,
)
from tests.engine.conftest import train_det_tool
from tools import eval as eval_tool
from tools import infer as infer_tool

MASK_CHANNELS = (16, 16)


def torchvision_mask_keys(key: str) -> str:
    """Our mask-branch key of a key of torchvision's ``mask_head`` / ``mask_predictor`` modules."""
    return (key.replace("mask_head.", "head.").replace("mask_predictor.conv5_mask.", "predictor.upsample.")
            .replace("mask_predictor.mask_fcn_logits.", "predictor.logits."))


def mask_pair(seed: int, score_thresh: float, norm: bool):
    """torchvision's RoIHeads with a mask branch, and ours (box RoIHeads + MaskBranch), same weights."""
    reference, ours = roi_pair(seed, score_thresh)
    norm_layer = torch.nn.BatchNorm2d if norm else None
    reference.mask_roi_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2)
    reference.mask_head = MaskRCNNHeads(CHANNELS, list(MASK_CHANNELS), 1, norm_layer=norm_layer)
    reference.mask_predictor = MaskRCNNPredictor(MASK_CHANNELS[-1], MASK_CHANNELS[-1], NUM_CLASSES + 1)
    with torch.no_grad():
        reference.mask_predictor.mask_fcn_logits.weight.normal_(0, 0.05)
    branch = MaskBranch(MultiLevelRoIAlign(STRIDES[:4], 14, 2), CHANNELS, NUM_CLASSES, MASK_CHANNELS,
                        "bn" if norm else None)
    state = {torchvision_mask_keys(key): value for key, value in reference.state_dict().items()
             if key.startswith(("mask_head.", "mask_predictor."))}
    branch.load_state_dict(state)
    return reference, ours, branch


def with_masks(targets: list[dict], seed: int) -> list[dict]:
    """The targets with one random blob mask per box, in the image's frame."""
    generator = torch.Generator().manual_seed(seed)
    for target, (height, width) in zip(targets, IMAGE_SIZES, strict=True):
        smooth = torch.rand(len(target["boxes"]), 1, height // 8, width // 8, generator=generator)
        target["masks"] = (torch.nn.functional.interpolate(smooth, (height, width))[:, 0] > 0.5).to(torch.uint8)
    return targets


@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_loss_equals_torchvision(seed, norm):
    reference, ours, branch = mask_pair(seed, 0.05, norm)
    reference.train()
    branch.train()
    features = make_features(seed)[:4]
    proposals = make_proposals(seed)
    targets = with_masks(make_targets(seed, empty_second=seed == 1), seed)
    named = OrderedDict((str(i), f) for i, f in enumerate(features))
    torch.manual_seed(seed)
    _, expected = reference(named, [p.clone() for p in proposals], IMAGE_SIZES, targets)
    torch.manual_seed(seed)
    sample = ours.sample(proposals, targets)
    losses = {**ours.loss(features, sample), "loss_mask": branch.loss(features, sample, targets)}
    assert set(losses) == set(expected)
    assert expected["loss_mask"] > 0
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 3])
def test_mask_probabilities_equal_torchvision_before_pasting(seed):
    reference, ours, branch = mask_pair(seed, 0.0, norm=True)
    reference.eval()
    branch.eval()
    features = make_features(seed)[:4]
    proposals = make_proposals(seed)
    named = OrderedDict((str(i), f) for i, f in enumerate(features))
    with torch.no_grad():
        expected, _ = reference(named, [p.clone() for p in proposals], IMAGE_SIZES)
        logits, deltas = ours.box_outputs(features, proposals)
        detections = ours.postprocess(logits, deltas, proposals, IMAGE_SIZES)
        masks = branch.probabilities(features, detections)
    assert sum(len(m) for m in masks) > 20
    for theirs, mine, detection in zip(expected, masks, detections, strict=True):
        assert torch.equal(theirs["labels"], detection["labels"])
        torch.testing.assert_close(mine, theirs["masks"][:, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_project_masks_equals_torchvision_project_masks_on_boxes(seed):
    generator = torch.Generator().manual_seed(seed)
    masks = (torch.rand(5, 37, 53, generator=generator) > 0.5).to(torch.uint8)
    corners = torch.rand(30, 2, generator=generator) * torch.tensor([60.0, 45.0]) - 5
    boxes = torch.cat((corners, corners + torch.rand(30, 2, generator=generator) * 40 + 0.5), 1)
    indices = torch.randint(0, 5, (30,), generator=generator)
    expected = project_masks_on_boxes(masks, boxes, indices, 28)
    torch.testing.assert_close(project_masks(masks, boxes, indices, 28), expected, rtol=0, atol=1e-6)
    assert project_masks(masks, boxes[:0], indices[:0], 28).shape == (0, 28, 28)


def mask_partners(expected: dict, actual: dict) -> list[int]:
    """For each of our detections, the index of torchvision's with the same label and the closest box."""
    partners = []
    for box, label in zip(actual["boxes"], actual["labels"], strict=True):
        distance = (expected["boxes"] - box).abs().amax(dim=1) + (expected["labels"] != label) * 1e9
        partners.append(int(distance.argmin()))
    return partners


TORCHVISION_PAIRS = {"mask_rcnn_r50_fpn": maskrcnn_resnet50_fpn, "mask_rcnn_r50_fpn_v2": maskrcnn_resnet50_fpn_v2}


def compare_masks_with_torchvision(images: list[torch.Tensor], score_thresh: float,
                                   recipe: str = "mask_rcnn_r50_fpn") -> tuple[int, float]:
    """Converted seeded torchvision Mask R-CNN vs torchvision: detections equal, pasted masks close.

    Returns the detections compared and the largest per-detection mean |difference| of pasted masks.
    """
    reference = randomised_reference(TORCHVISION_PAIRS[recipe], 0, trunk_only=recipe.endswith("_v2"),
                                     box_score_thresh=score_thresh, min_size=320, max_size=480)
    ours = MODELS.build(recipe, roi_heads={"score_thresh": score_thresh},
                        transform={"min_size": 320, "max_size": 480}).eval()
    ours.load_state_dict(convert_faster_rcnn(reference.state_dict(), recipe))
    with torch.no_grad():
        expected, actual = reference(images), ours(images)
    assert_same_detections(expected, actual)
    worst, compared = 0.0, 0
    for theirs, mine, image in zip(expected, actual, images, strict=True):
        assert mine["masks"].shape == (len(mine["boxes"]), *image.shape[-2:])
        partners = mask_partners(theirs, mine)
        difference = (mine["masks"] - theirs["masks"][partners, 0]).abs().flatten(1).mean(1)
        worst = max([worst, *difference.tolist()])
        compared += len(mine["boxes"])
    return compared, worst


@pytest.mark.parametrize("recipe", sorted(TORCHVISION_PAIRS))
def test_mask_rcnn_equals_torchvision_on_generated_images(recipe):
    images = [generated_image(240, 320, seed=1), generated_image(200, 180, seed=2)]
    compared, worst = compare_masks_with_torchvision(images, 0.0, recipe)
    assert compared > 50 and worst <= 1e-3  # measured: 200 detections, worst 1.2e-6 (v1)


@pytest.mark.real_data
def test_mask_rcnn_equals_torchvision_on_a_raccoon_photo(shared_data):
    compared, worst = compare_masks_with_torchvision(raccoon_images(shared_data)[:1], 0.05)
    assert compared > 0 and worst <= 1e-3


@pytest.mark.slow
def test_mask_recipe_trains_validates_segm_and_evaluates_through_the_tools(tmp_path, capsys):
    """tools/train_det.py loads the masks because the model is an instance model, validates bbox and segm,
    keeps best.pt by segm_AP; tools/eval.py and tools/infer.py then report and write masks."""
    data = generate_dataset(tmp_path / "shapes", num_train=6, num_val=3, image_size=64, seed=8, formats=("coco",))
    recipe = {
        "model": {"name": "mask_rcnn_r18_fpn", "transform": {"min_size": 64, "max_size": 64},
                  "rpn": {"pre_nms_top_n_train": 100, "post_nms_top_n_train": 50, "pre_nms_top_n_test": 50,
                          "post_nms_top_n_test": 20},
                  "roi_heads": {"batch_size_per_image": 32, "score_thresh": 0.0},
                  "mask_head": {"conv_channels": [32, 32]}},
        "data": {"format": "coco", "train": str(data / "annotations" / "instances_train.json"),
                 "val": str(data / "annotations" / "instances_val.json"), "augment": "flip",
                 "image_size": 64, "max_size": 64, "batch_size": 2},
        "train": {"epochs": 1, "optimizer": "sgd", "lr": 0.01, "best_metric": "segm_AP", "log_every": 1,
                  "device": "cpu", "seed": 0},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    assert train_det_tool().main([str(tmp_path / "recipe.yaml"), "--out", str(run)]) == 0
    log = read_log(run / "log.jsonl")
    steps = [entry for entry in log if entry["kind"] == "train"]
    assert all(math.isfinite(entry["loss_mask"]) and entry["loss_mask"] > 0 for entry in steps)
    epoch = next(entry for entry in log if entry["kind"] == "epoch")
    assert {"AP", "segm_AP", "segm_AP50"} <= set(epoch)
    best = load_checkpoint(run / "best.pt")
    assert best["best"]["metric"] == "segm_AP" and best["task"] == "instance"

    assert eval_tool.main([str(tmp_path / "recipe.yaml"), "--weights", str(run / "best.pt"), "--data",
                           recipe["data"]["val"], "--out", str(tmp_path / "eval"), "--speed-iters", "1"]) == 0
    printed = capsys.readouterr().out
    assert "== bbox ==" in printed and "== segm ==" in printed
    assert infer_tool.main([str(data / "JPEGImages"), "--weights", str(run / "best.pt"), "--out",
                            str(tmp_path / "infer"), "--score-thr", "0.0", "--save-txt"]) == 0
    results = json.loads((tmp_path / "infer" / "predictions.json").read_text())
    assert results and all("segmentation" in result for result in results)
    label_lines = [line for path in (tmp_path / "infer" / "labels").glob("*.txt") for line in path.read_text().splitlines()]
    assert label_lines and all(len(line.split()) >= 7 for line in label_lines)  # class + >= 3 points


@pytest.mark.slow
def test_a_trained_models_masks_paste_as_torchvisions_binarised(tmp_path):
    """Random weights give probabilities near 0.5, where thresholding is noise: train the shapes recipe a
    little, then each detection's binarised (> 0.5) pasted mask must match torchvision's paste of the same
    28x28 probabilities with IoU >= 0.98."""
    data = generate_dataset(tmp_path / "shapes", num_train=16, num_val=2, image_size=96, seed=5, formats=("coco",),
                            min_objects=2, max_objects=4, min_object_size=24)
    config = load_config(REPO_ROOT / "configs" / "demo" / "shapes_mask_rcnn_r18_fpn.yaml", [
        f"data.train={data / 'annotations' / 'instances_train.json'}", "data.val=null",
        "model.transform.min_size=96", "model.transform.max_size=96", "data.image_size=96", "data.max_size=96",
        "train.time_limit=null", "train.epochs=8", "train.warmup_iters=5", "train.lr=0.003", "train.device=cpu"])
    trainer = Trainer(config, tmp_path / "run", verbose=False)
    trainer.fit()
    model = trainer.model.eval()
    dataset_images = [read_image(path) for path in sorted((data / "JPEGImages").glob("*.jpg"))[:3]]
    images = [image_to_tensor(pixels) for pixels in dataset_images]
    with torch.no_grad():
        raw = model.raw_outputs(images)
        probabilities = torch.cat(raw.masks)
        predictions = model.postprocess(raw)
    assert len(probabilities) > 10
    assert ((probabilities - 0.5).abs() > 0.3).float().mean() > 0.4, "the masks should be mostly confident by now"
    for prediction, masks, image in zip(predictions, raw.masks, images, strict=True):
        theirs = paste_masks_in_image(masks[:, None], prediction["boxes"], tuple(image.shape[-2:]), padding=1)[:, 0]
        ours, reference = prediction["masks"] > 0.5, theirs > 0.5
        union = (ours | reference).flatten(1).sum(1)
        iou = (ours & reference).flatten(1).sum(1) / union.clamp(min=1)
        assert bool((iou[union > 0] >= 0.98).all()), iou
