"""Weights from a checkpoint with other classes: every tensor that fits loaded, class-specific rows kept by
class name (Faster R-CNN and Mask R-CNN, tensor by tensor), another architecture refused; backbone-only
initialisation from our detector checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from structured.backbones import FrozenBatchNorm2d
from structured.engine import CheckpointError, save_checkpoint
from structured.engine.transfer import class_specific_prefixes, load_transferred_weights, transfer_weights
from structured.registry import BACKBONES, MODELS

BACKGROUND = "__background__"
PRETRAINED_CLASSES = [BACKGROUND, "cat", "dog", "car"]
FINE_TUNE_CLASSES = [BACKGROUND, "car", "person"]
KEPT = {0: 0, 1: 3}  # fine-tune row -> pretrained row: background and car


def small(name: str, num_classes: int, neck_channels: int = 32) -> torch.nn.Module:
    """Recipe ``name`` narrowed for a CPU test."""
    options = dict(num_classes=num_classes, neck={"out_channels": neck_channels},
                   roi_heads={"representation_size": 32})
    if name.startswith("mask_rcnn"):
        options["mask_head"] = {"conv_channels": (16,)}
    return MODELS.build(name, **options)


def trained_checkpoint(name: str, path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint of recipe ``name`` for ``PRETRAINED_CLASSES`` with every tensor randomised; its state dict."""
    torch.manual_seed(1)
    model = small(name, len(PRETRAINED_CLASSES) - 1)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor))
    state = {key: value.clone() for key, value in model.state_dict().items()}
    save_checkpoint({"model": state, "class_names": PRETRAINED_CLASSES}, path)
    return state


def class_view(tensor: torch.Tensor, classes: int, rows: int) -> torch.Tensor:
    """``tensor`` as ``[classes, rows, ...]`` (one group)."""
    return tensor.reshape(classes, rows, *tensor.shape[1:])


@pytest.mark.parametrize("name", ["faster_rcnn_r18_fpn", "mask_rcnn_r18_fpn"])
def test_other_classes_reinitialise_class_layers_and_keep_rows_of_shared_names(name: str, tmp_path: Path) -> None:
    trained = trained_checkpoint(name, tmp_path / "pretrained.pt")
    torch.manual_seed(2)
    model = small(name, len(FINE_TUNE_CLASSES) - 1)
    fresh = {key: value.clone() for key, value in model.state_dict().items()}
    report = load_transferred_weights(model, tmp_path / "pretrained.pt", FINE_TUNE_CLASSES)
    declared = class_specific_prefixes(model)
    expected_specific = {"roi_heads.predictor.cls_score.weight", "roi_heads.predictor.cls_score.bias",
                         "roi_heads.predictor.bbox_pred.weight", "roi_heads.predictor.bbox_pred.bias"}
    if name.startswith("mask_rcnn"):
        expected_specific |= {"mask_branch.predictor.logits.weight", "mask_branch.predictor.logits.bias"}
    assert set(report.reinitialised) == expected_specific
    assert report.kept_classes == (BACKGROUND, "car")
    loaded = model.state_dict()
    for key, value in loaded.items():
        if key not in expected_specific:
            assert torch.equal(value, trained[key]), key
            continue
        rows = next(rows for prefix, rows in declared.items() if key.startswith(prefix))
        new = class_view(value, len(FINE_TUNE_CLASSES), rows)
        old = class_view(trained[key], len(PRETRAINED_CLASSES), rows)
        initial = class_view(fresh[key], len(FINE_TUNE_CLASSES), rows)
        for row in range(len(FINE_TUNE_CLASSES)):
            wanted = old[KEPT[row]] if row in KEPT else initial[row]
            assert torch.equal(new[row], wanted), (key, row)
    assert set(report.loaded) == set(loaded) - expected_specific
    summary = report.summary()
    assert f"loaded {len(report.loaded)} tensors" in summary
    assert "because the classes differ (checkpoint 3, model 2)" in summary
    assert "kept the rows of classes ['__background__', 'car']" in summary


def test_same_classes_load_everything_and_renamed_classes_do_not_keep_rows(tmp_path: Path) -> None:
    trained = trained_checkpoint("faster_rcnn_r18_fpn", tmp_path / "pretrained.pt")
    model = small("faster_rcnn_r18_fpn", 3)
    report = load_transferred_weights(model, tmp_path / "pretrained.pt", PRETRAINED_CLASSES)
    assert report.reinitialised == () and report.summary().endswith(f"loaded {len(trained)} tensors")
    assert all(torch.equal(value, trained[key]) for key, value in model.state_dict().items())
    renamed = [BACKGROUND, "dog", "cat", "bird"]  # same count, other order and names: rows follow the names
    model = small("faster_rcnn_r18_fpn", 3)
    fresh = model.state_dict()["roi_heads.predictor.cls_score.bias"].clone()
    report = transfer_weights(model, trained, "state", renamed, PRETRAINED_CLASSES)
    bias = model.state_dict()["roi_heads.predictor.cls_score.bias"]
    old = trained["roi_heads.predictor.cls_score.bias"]
    assert report.kept_classes == (BACKGROUND, "dog", "cat")
    assert torch.equal(bias, torch.stack([old[0], old[2], old[1], fresh[3]]))


def test_checkpoint_without_class_names_reinitialises_without_keeping_rows(tmp_path: Path) -> None:
    trained = trained_checkpoint("faster_rcnn_r18_fpn", tmp_path / "pretrained.pt")
    model = small("faster_rcnn_r18_fpn", 1)
    fresh = model.state_dict()["roi_heads.predictor.bbox_pred.weight"].clone()
    report = transfer_weights(model, trained, "plain.pt", [BACKGROUND, "car"], None)
    assert report.kept_classes == () and "the checkpoint names no classes" in report.summary()
    assert torch.equal(model.state_dict()["roi_heads.predictor.bbox_pred.weight"], fresh)
    assert torch.equal(model.state_dict()["rpn.head.objectness.weight"], trained["rpn.head.objectness.weight"])


def test_other_architecture_is_an_error_naming_the_mismatching_tensors(tmp_path: Path) -> None:
    trained_checkpoint("faster_rcnn_r18_fpn", tmp_path / "pretrained.pt")
    wider_neck = small("faster_rcnn_r18_fpn", 2, neck_channels=48)
    with pytest.raises(CheckpointError, match=r"another architecture.*shape mismatch.*neck\.") as error:
        load_transferred_weights(wider_neck, tmp_path / "pretrained.pt", FINE_TUNE_CLASSES)
    assert "pretrained.pt" in str(error.value) and "roi_heads.predictor" not in str(error.value)
    with_masks = small("mask_rcnn_r18_fpn", 2)
    with pytest.raises(CheckpointError, match=r"missing \(\d+\): mask_branch\."):
        load_transferred_weights(with_masks, tmp_path / "pretrained.pt", FINE_TUNE_CLASSES)


def test_backbone_from_a_detector_checkpoint(tmp_path: Path) -> None:
    trained = trained_checkpoint("faster_rcnn_r18_fpn", tmp_path / "detector.pt")
    backbone = BACKBONES.build("resnet18", out_levels=["c2", "c3", "c4", "c5"], pretrained=str(tmp_path / "detector.pt"))
    for key, value in backbone.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, trained[f"backbone.{key}"]), key
    detector = MODELS.build("faster_rcnn_r18_fpn", num_classes=1,
                            backbone={"pretrained": str(tmp_path / "detector.pt")})
    assert isinstance(detector.backbone.trunk.bn1, FrozenBatchNorm2d)
    assert torch.equal(detector.backbone.trunk.layer4[1].conv2.weight, trained["backbone.trunk.layer4.1.conv2.weight"])


def small_of_family(name: str, num_classes: int) -> torch.nn.Module:
    """An SSD or UNet recipe built small, through the generic testers' small settings."""
    from tests.detection.test_models import small_ssd
    from tests.segmentation.test_models import small_settings

    options = small_ssd(name) if name.startswith("ssd") else small_settings(name)
    return MODELS.build(name, **{**options, "num_classes": num_classes})


@pytest.mark.parametrize("name", ["ssd300_vgg16", "ssdlite320_mobilenet_v3_large", "unet_mobilenet_v2"])
def test_ssd_and_unet_keep_the_rows_of_shared_class_names_group_by_group(name: str) -> None:
    """SSD heads hold ``[default boxes per cell, classes]`` rows per map, a UNet head one row per class: each
    declared tensor keeps the background's and car's rows (in every group) and starts the rest afresh."""
    torch.manual_seed(1)
    source = small_of_family(name, len(PRETRAINED_CLASSES) - 1)
    with torch.no_grad():
        for tensor in source.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor))
    trained = source.state_dict()
    torch.manual_seed(2)
    model = small_of_family(name, len(FINE_TUNE_CLASSES) - 1)
    fresh = {key: value.clone() for key, value in model.state_dict().items()}
    report = transfer_weights(model, trained, "pretrained.pt", FINE_TUNE_CLASSES, PRETRAINED_CLASSES)
    declared = class_specific_prefixes(model)
    specific = {key for key in fresh if any(key.startswith(prefix) for prefix in declared)}
    assert specific and set(report.reinitialised) == specific
    assert report.kept_classes == (BACKGROUND, "car")
    for key, value in model.state_dict().items():
        if key not in specific:
            assert torch.equal(value, trained[key]), key
            continue
        new = value.reshape(-1, len(FINE_TUNE_CLASSES), *value.shape[1:])
        old = trained[key].reshape(-1, len(PRETRAINED_CLASSES), *value.shape[1:])
        initial = fresh[key].reshape(new.shape)
        assert new.shape[0] == old.shape[0] >= 1
        for row in range(len(FINE_TUNE_CLASSES)):
            wanted = old[:, KEPT[row]] if row in KEPT else initial[:, row]
            assert torch.equal(new[:, row], wanted), (key, row)
