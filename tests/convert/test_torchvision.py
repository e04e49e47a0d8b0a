"""Key mapping from torchvision's Faster R-CNN checkpoints onto our recipes, and the conversion CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torchvision.models.detection import (
    fasterrcnn_mobilenet_v3_large_320_fpn,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn,
)

from structured.api import Detector
from structured.convert.torchvision import (
    TORCHVISION_MODELS,
    class_names_for,
    convert_checkpoint_file,
    convert_faster_rcnn,
    num_classes_of,
    recipe_name,
)
from structured.registry import MODELS
from tests.conftest import REPO_ROOT

BUILDERS = {
    "fasterrcnn_resnet50_fpn": fasterrcnn_resnet50_fpn,
    "fasterrcnn_mobilenet_v3_large_fpn": fasterrcnn_mobilenet_v3_large_fpn,
    "fasterrcnn_mobilenet_v3_large_320_fpn": fasterrcnn_mobilenet_v3_large_320_fpn,
}


@pytest.mark.parametrize("torchvision_name", sorted(BUILDERS))
def test_every_key_maps_onto_the_recipe_with_the_same_shapes(torchvision_name):
    torch.manual_seed(0)
    reference = BUILDERS[torchvision_name](weights=None, weights_backbone=None, num_classes=7)
    name = TORCHVISION_MODELS[torchvision_name]
    ours = MODELS.build(name, num_classes=num_classes_of(reference.state_dict()))
    converted = convert_faster_rcnn(reference.state_dict(), name)
    expected = ours.state_dict()
    batch_counters = {key for key in converted if key.endswith("num_batches_tracked")}
    assert set(converted) - batch_counters == set(expected)
    for key, value in expected.items():
        assert converted[key].shape == value.shape, key
    ours.load_state_dict(converted)
    assert torch.equal(ours.rpn.head.objectness.weight, reference.rpn.head.cls_logits.weight)


def test_old_rpn_conv_key_and_unknown_keys():
    weight = torch.zeros(1)
    converted = convert_faster_rcnn({"rpn.head.conv.weight": weight}, "faster_rcnn_r50_fpn")
    assert list(converted) == ["rpn.head.conv.0.weight"]
    with pytest.raises(KeyError, match="roi_heads.mask_head"):
        convert_faster_rcnn({"roi_heads.mask_head.0.weight": weight}, "faster_rcnn_r50_fpn")
    with pytest.raises(ValueError, match="no torchvision counterpart"):
        convert_faster_rcnn({}, "faster_rcnn_vgg16")
    with pytest.raises(ValueError, match="no torchvision mapping"):
        recipe_name("fasterrcnn_resnet101")
    assert recipe_name("fasterrcnn_resnet50_fpn") == "faster_rcnn_r50_fpn"


def test_cli_converts_a_checkpoint_file(tmp_path):
    torch.manual_seed(0)
    reference = fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=4
    ).eval()
    source, destination = tmp_path / "tv.pth", tmp_path / "ours.pt"
    torch.save(reference.state_dict(), source)
    command = [
        sys.executable,
        "tools/convert_torchvision.py",
        str(source),
        str(destination),
        "--model",
        "fasterrcnn_mobilenet_v3_large_320_fpn",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    checkpoint = torch.load(destination, weights_only=True)
    assert checkpoint["config"] == {"model": {"name": "faster_rcnn_mobilenet_v3_large_320_fpn", "num_classes": 3}}
    assert checkpoint["class_names"] == ["__background__", "class1", "class2", "class3"]
    detector = Detector.from_checkpoint(destination)
    assert torch.equal(
        detector.model.roi_heads.predictor.bbox_pred.weight, reference.roi_heads.box_predictor.bbox_pred.weight
    )


def test_coco_sized_models_get_coco_class_names():
    names = class_names_for(90)
    assert names[:3] == ["__background__", "person", "bicycle"] and len(names) == 91


def test_a_file_that_is_not_a_state_dict_is_reported(tmp_path):
    source = tmp_path / "bad.pth"
    torch.save([1, 2, 3], source)
    with pytest.raises(ValueError, match="bad.pth: expected a state dict"):
        convert_checkpoint_file(source, tmp_path / "out.pt", "faster_rcnn_r50_fpn")
    assert not (tmp_path / "out.pt").exists()


def test_norm_eps_goes_into_the_backbone_part_of_the_written_recipe(tmp_path):
    torch.manual_seed(0)
    reference = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=3)
    source, destination = tmp_path / "tv.pth", tmp_path / "ours.pt"
    torch.save(reference.state_dict(), source)
    checkpoint = convert_checkpoint_file(source, destination, "faster_rcnn_mobilenet_v3_large_320_fpn", norm_eps=0.0)
    assert checkpoint["config"]["model"]["backbone"] == {"norm_eps": 0.0}
    detector = Detector.from_checkpoint(destination, optimize=False)
    eps = {module.eps for module in detector.model.backbone.modules() if hasattr(module, "eps")}
    assert eps == {0.0}
    assert detector.model.backbone.out_channels == {"c5_entry": 160, "c5": 960}  # the recipe's other settings


def test_a_mask_rcnn_checkpoint_converts_into_an_instance_detector(tmp_path):
    torch.manual_seed(0)
    reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3).eval()
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    checkpoint = convert_checkpoint_file(tmp_path / "tv.pth", tmp_path / "ours.pt", "maskrcnn_resnet50_fpn")
    assert checkpoint["config"]["model"] == {"name": "mask_rcnn_r50_fpn", "num_classes": 2}
    assert checkpoint["task"] == "instance"
    detector = Detector.from_checkpoint(tmp_path / "ours.pt", optimize=False)
    assert torch.equal(detector.model.mask_branch.predictor.logits.weight,
                       reference.roi_heads.mask_predictor.mask_fcn_logits.weight)
    result = detector.predict(np.zeros((60, 80, 3), dtype=np.uint8))
    assert result.masks is not None and result.masks.shape[1:] == (60, 80)


@pytest.fixture(scope="module")
def small_state_dict():
    """A torchvision ``fasterrcnn_mobilenet_v3_large_320_fpn`` state dict with 3 classes."""
    torch.manual_seed(0)
    return fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=4).state_dict()


SMALL_MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"


@pytest.mark.parametrize("wrapper", ["model", "state_dict"])
def test_a_wrapped_state_dict_is_unwrapped(tmp_path, small_state_dict, wrapper):
    torch.save({wrapper: small_state_dict, "epoch": 3}, tmp_path / "tv.pth")
    checkpoint = convert_checkpoint_file(tmp_path / "tv.pth", tmp_path / "ours.pt", SMALL_MODEL)
    assert checkpoint["config"]["model"]["num_classes"] == 3


def test_our_own_checkpoint_is_recognised(tmp_path, small_state_dict):
    torch.save(small_state_dict, tmp_path / "tv.pth")
    convert_checkpoint_file(tmp_path / "tv.pth", tmp_path / "ours.pt", SMALL_MODEL)
    with pytest.raises(ValueError, match="ours.pt is already a structured checkpoint"):
        convert_checkpoint_file(tmp_path / "ours.pt", tmp_path / "again.pt", SMALL_MODEL)


def test_keys_of_another_model_or_extra_keys_are_named(tmp_path, small_state_dict):
    torch.save({"head.classification_head.module_list.0.weight": torch.zeros(1)}, tmp_path / "ssd.pth")
    with pytest.raises(ValueError, match=rf"ssd.pth: .*; 1 of its 1 keys have no counterpart in {SMALL_MODEL} "
                                         r"\(e.g. head.classification_head.module_list.0.weight\); it looks like"):
        convert_checkpoint_file(tmp_path / "ssd.pth", tmp_path / "out.pt", SMALL_MODEL)
    torch.save({**small_state_dict, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"extra.pth: .*; 1 of its \d+ keys .* \(e.g. extra.weight\)$"):
        convert_checkpoint_file(tmp_path / "extra.pth", tmp_path / "out.pt", SMALL_MODEL)
    torch.save({**small_state_dict, "roi_heads.mask_head.0.0.weight": torch.zeros(1)}, tmp_path / "mask.pth")
    with pytest.raises(ValueError, match=r"mask.pth: checkpoint key 'roi_heads.mask_head.0.0.weight' belongs to a mask "
                                         r"branch, which .* has not; convert onto one of"):
        convert_checkpoint_file(tmp_path / "mask.pth", tmp_path / "out.pt", SMALL_MODEL)
    missing = dict(small_state_dict)
    del missing["roi_heads.box_head.fc6.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing.pth does not fit .* missing \(1\): roi_heads.box_head.fc6.weight"):
        convert_checkpoint_file(tmp_path / "missing.pth", tmp_path / "out.pt", SMALL_MODEL)
    assert not (tmp_path / "out.pt").exists()


def test_destination_and_norm_eps_are_checked_before_converting(tmp_path, small_state_dict):
    source = tmp_path / "tv.pth"
    torch.save(small_state_dict, source)
    with pytest.raises(IsADirectoryError, match="is a folder; give the checkpoint file to write"):
        convert_checkpoint_file(source, tmp_path, SMALL_MODEL)
    with pytest.raises(ValueError, match="is the source checkpoint"):
        convert_checkpoint_file(source, source, SMALL_MODEL)
    with pytest.raises(ValueError, match="norm_eps must be a number >= 0"):
        convert_checkpoint_file(source, tmp_path / "out.pt", SMALL_MODEL, norm_eps=-1.0)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tv.pth"]
