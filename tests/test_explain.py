"""Grad-CAM (structured/explain.py) against the paper's formula computed here by hand, on a plain torchvision
ResNet-18 and on a small Faster R-CNN, plus smoke checks of SSD, Mask R-CNN and UNet heatmaps, the
predictors' ``explain`` and tools/gradcam.py end to end with its error messages."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from structured import Detector, Segmenter, build_model, load_config
from structured.data.loading import read_image
from structured.engine.checkpoint import save_checkpoint
from structured.explain import (
    class_activation,
    explain_backbone,
    explain_classes,
    explain_detections,
    feature_levels,
    to_image_frame,
)
from structured.registry import BACKBONES, MODELS
from tests.conftest import REPO_ROOT
from tools import gradcam as gradcam_tool

SMOKE_RECIPE = REPO_ROOT / "configs" / "smoke" / "faster_rcnn_r18_fpn_tiny.yaml"
UNET_RECIPE = REPO_ROOT / "configs" / "unet" / "unet_original.yaml"
TINY_UNET = ["model.num_classes=2", "model.encoder.width=4", "model.encoder.depth=2", "model.decoder.channels=[8,4]"]
CLASS_NAMES = ["__background__", "disc", "block", "wedge"]
IMAGE_SIZE = (90, 121)


def formula(level_map: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """Selvaraju et al. 2017, eq. 1-2: ReLU(sum_k alpha_k A_k), alpha_k = mean over space of d output / d A_k."""
    (gradient,) = torch.autograd.grad(output, level_map)
    alpha = gradient.mean(dim=(2, 3), keepdim=True)
    return torch.relu((alpha * level_map).sum(dim=1))[0]


def resnet_split_at(trunk: torchvision.models.ResNet, images: torch.Tensor, level: str) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's ResNet forward split by hand: ``(map of layer3 (c4) or layer4 (c5), class logits from it)``."""
    x = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(images))))
    x = trunk.layer3(trunk.layer2(trunk.layer1(x)))
    if level == "c4":
        level_map = x.detach().requires_grad_()
        x = trunk.layer4(level_map)
    else:
        level_map = trunk.layer4(x).detach().requires_grad_()
        x = level_map
    return level_map, trunk.fc(torch.flatten(trunk.avgpool(x), 1))


@pytest.mark.parametrize(("seed", "level", "class_index"), [(0, "c4", 3), (0, "c5", 7), (1, "c5", 0), (2, "c4", 9)])
def test_backbone_cam_is_the_papers_formula(seed: int, level: str, class_index: int) -> None:
    torch.manual_seed(seed)
    reference = torchvision.models.resnet18(num_classes=10).eval()
    backbone = BACKBONES.build("resnet18", classifier=True, num_classes=10).eval()
    backbone.trunk.load_state_dict(reference.state_dict())
    images = torch.randn(1, 3, 72, 88, generator=torch.Generator().manual_seed(seed))
    level_map, logits = resnet_split_at(reference, images, level)
    expected = formula(level_map, logits[0, class_index])
    assert expected.max() > 0  # a case where the map is not all zero
    explanation = explain_backbone(backbone, images, level, class_index)
    assert explanation.value == pytest.approx(float(logits[0, class_index].detach()), abs=1e-5)
    torch.testing.assert_close(explanation.activation, expected, atol=1e-5, rtol=1e-5)
    upsampled = F.interpolate(expected[None, None], size=(72, 88), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(explanation.heatmap, upsampled / upsampled.max(), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def faster_rcnn() -> torch.nn.Module:
    torch.manual_seed(0)
    config = load_config(SMOKE_RECIPE, ["model.num_classes=3", "model.roi_heads.score_thresh=0.0"])
    return build_model(config).eval()


def image(seed: int = 0, size: tuple[int, int] = IMAGE_SIZE) -> torch.Tensor:
    return torch.rand(3, *size, generator=torch.Generator().manual_seed(seed))


def hand_heatmap(model: torch.nn.Module, picture: torch.Tensor, level: str, detection: int) -> torch.Tensor:
    """The detection's Grad-CAM by hand: the level kept by hooks on the backbone and neck, the score's gradient, the formula,
    then the map over the padded batch cropped to the resized image and resized to the input image."""
    kept = {}
    handles = [part.register_forward_hook(lambda module, inputs, output: kept.update(output))
               for part in (model.backbone, model.neck)]
    try:
        with torch.enable_grad():
            raw = model.raw_outputs([picture])
            score = model.postprocess(raw)[0]["scores"][detection]
            cam = formula(kept[level], score)
    finally:
        for handle in handles:
            handle.remove()
    height, width = raw.image_sizes[0]
    padded = (math.ceil(height / 32) * 32, math.ceil(width / 32) * 32)
    over_batch = F.interpolate(cam[None, None], size=padded, mode="bilinear", align_corners=False)
    over_image = F.interpolate(over_batch[..., :height, :width], size=picture.shape[-2:], mode="bilinear",
                               align_corners=False)[0, 0]
    return over_image / over_image.max()


@pytest.mark.parametrize("level", ["p2", "c4"])
def test_detection_heatmap_is_the_formula_on_the_captured_level(faster_rcnn, level: str) -> None:
    picture = image()
    _, explanations = explain_detections(faster_rcnn, picture, level, detections=range(6))
    # the first detection whose RoI is pooled from this level (the others' heatmaps there are all zero)
    explanation = next(explanation for explanation in explanations if explanation.heatmap.any())
    detection = explanation.target
    torch.testing.assert_close(explanation.heatmap, hand_heatmap(faster_rcnn, picture, level, detection),
                               atol=1e-5, rtol=1e-5)


def test_detection_heatmaps_are_image_sized_non_negative_and_differ_per_detection(faster_rcnn) -> None:
    prediction, explanations = explain_detections(faster_rcnn, image(), "c4", detections=[0, 5], class_names=CLASS_NAMES)
    first, second = explanations
    for explanation in explanations:
        assert explanation.heatmap.shape == IMAGE_SIZE and explanation.activation.ndim == 2
        assert float(explanation.heatmap.min()) >= 0 and float(explanation.heatmap.max()) == pytest.approx(1.0)
    assert not torch.allclose(first.heatmap, second.heatmap, atol=1e-3)
    assert first.title.startswith("detection 0: ") and first.label == int(prediction["labels"][0])
    torch.testing.assert_close(first.box, prediction["boxes"][0])
    assert first.value == pytest.approx(float(prediction["scores"][0]))
    _, (default,) = explain_detections(faster_rcnn, image(), detections=[0])
    assert default.level == "c5"  # the backbone's deepest
    _, (box,) = explain_detections(faster_rcnn, image(), "c4", detections=[0], output="box")
    assert box.value == pytest.approx(float(prediction["boxes"][0].sum()), rel=1e-5)
    assert box.score == first.score == pytest.approx(float(prediction["scores"][0]))
    assert not torch.allclose(box.heatmap, first.heatmap, atol=1e-3)


def test_detection_errors_name_the_level_and_the_detection_count(faster_rcnn) -> None:
    assert feature_levels(faster_rcnn) == ["c2", "c3", "c4", "c5", "p2", "p3", "p4", "p5", "p6"]
    with pytest.raises(ValueError, match=r"unknown level 'p9'; the model's levels: c2, c3, c4, c5, p2"):
        explain_detections(faster_rcnn, image(), "p9")
    with pytest.raises(ValueError, match=r"does not depend on level 'p6'"):
        explain_detections(faster_rcnn, image(), "p6", detections=[0])
    count = len(explain_detections(faster_rcnn, image(), "c5", detections=[])[0]["scores"])
    with pytest.raises(ValueError, match=rf"detection {count} does not exist: the image has {count} detections"):
        explain_detections(faster_rcnn, image(), "c5", detections=[count])
    with pytest.raises(ValueError, match="output must be one of score, box"):
        explain_detections(faster_rcnn, image(), "c5", output="area")


def test_an_all_zero_map_gives_an_all_zero_heatmap() -> None:
    heatmap = to_image_frame(torch.zeros(3, 4), (96, 128), (90, 121), (45, 60))
    assert heatmap.shape == (45, 60) and not heatmap.any()


def test_class_activation_of_an_output_without_gradient_is_an_error() -> None:
    level_map = torch.rand(1, 2, 3, 3, requires_grad=True)
    with pytest.raises(ValueError, match="does not depend on level 'c3'"):
        class_activation(level_map, torch.tensor(1.0), "c3", ["c3", "c4"])


def test_ssd_and_mask_rcnn_heatmaps(faster_rcnn) -> None:
    torch.manual_seed(0)
    ssd = MODELS.build("ssd300_resnet50", num_classes=3, backbone={"name": "resnet18", "out_levels": ["c3", "c4", "c5"]},
                       transform={"size": 64}, head={"extras": [[32, 64, 3, 2, 1]]},
                       default_boxes={"aspect_ratios": [[2]] * 4, "scales": [], "steps": []}).eval()
    assert feature_levels(ssd) == ["c3", "c4", "c5"]
    _, explanations = explain_detections(ssd, image(), "c3", detections=[0, 1])
    assert all(e.heatmap.shape == IMAGE_SIZE and float(e.heatmap.max()) == pytest.approx(1.0) for e in explanations)
    mask_rcnn = MODELS.build("mask_rcnn_r18_fpn", num_classes=3, transform={"min_size": 96, "max_size": 128},
                             rpn={"pre_nms_top_n_test": 50, "post_nms_top_n_test": 20},
                             roi_heads={"score_thresh": 0.0, "detections_per_img": 5},
                             mask_head={"conv_channels": [16]}).eval()
    prediction, (explanation,) = explain_detections(mask_rcnn, image(), "c4", detections=[1])
    assert prediction["masks"].shape[-2:] == IMAGE_SIZE and not prediction["masks"].requires_grad
    assert explanation.heatmap.shape == IMAGE_SIZE and float(explanation.heatmap.max()) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(load_config(UNET_RECIPE, TINY_UNET)).eval()


def test_unet_class_heatmaps_at_the_image_size(unet) -> None:
    picture = image(size=(37, 45))
    prediction, explanations = explain_classes(unet, picture, "c1", classes=[0, 1, 2], class_names=["bg", "a", "b"])
    assert [e.title for e in explanations] == ["class bg", "class a", "class b"]
    for class_index, explanation in enumerate(explanations):
        assert explanation.heatmap.shape == (37, 45) and explanation.activation.shape == (20, 24)
        region = prediction["mask"] == class_index
        probability = prediction["probabilities"][class_index]
        expected = probability[region].sum() if region.any() else probability.sum()
        assert explanation.value == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="class 3 does not exist: the model has classes 0..2"):
        explain_classes(unet, picture, "c1", classes=[3])


def test_predictors_explain_what_they_predict(faster_rcnn, unet) -> None:
    detector = Detector(faster_rcnn, CLASS_NAMES, optimize=False)  # the fixture stays unfolded for the tool test
    detections = detector.predict(image(), score_threshold=0.3)
    explanations = detector.explain(image(), "c5", score_threshold=0.3, limit=3)
    assert len(explanations) == min(3, len(detections))
    torch.testing.assert_close(torch.stack([e.box for e in explanations]), detections.boxes[:3], atol=1e-3, rtol=0)
    wedges = detector.explain(image(), "c5", class_name="wedge", limit=2)
    assert wedges and all(e.label == 3 for e in wedges)
    segmenter = Segmenter(unet, ["__background__", "a", "b"], optimize=False)
    found = [name for name, pixels in segmenter.predict(image()).areas.items() if pixels and name != "__background__"]
    assert [e.title for e in segmenter.explain(image())] == [f"class {name}" for name in found]
    with pytest.raises(ValueError, match="a semantic segmenter has no detections"):
        segmenter.explain(image(), detection=0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, faster_rcnn, unet) -> Path:
    root = tmp_path_factory.mktemp("gradcam")
    detector_config = load_config(SMOKE_RECIPE, ["model.num_classes=3"])
    save_checkpoint({"model": faster_rcnn.state_dict(), "config": detector_config.data, "class_names": CLASS_NAMES},
                    root / "detector.pt")
    save_checkpoint({"model": unet.state_dict(), "config": load_config(UNET_RECIPE, TINY_UNET).data,
                     "task": "semantic", "class_names": ["__background__", "a", "b"]}, root / "unet.pt")
    picture = (image(size=(48, 64)).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    cv2.imwrite(str(root / "picture.png"), picture[:, :, ::-1])
    return root


def test_gradcam_tool_writes_overlays_and_a_sheet(checkpoints: Path, capsys) -> None:
    out = checkpoints / "out"
    arguments = [checkpoints / "picture.png", "--weights", checkpoints / "detector.pt", "--out", out, "--level", "p2",
                 "--score-thr", "0", "--limit", "5"]
    assert gradcam_tool.main(list(map(str, arguments))) == 0
    printed = capsys.readouterr().out
    assert "detection 0: " in printed and "@ p2" in printed and "sheet" in printed
    assert sorted(path.name for path in out.iterdir()) == sorted(
        [f"picture_detection{k}.png" for k in range(5)] + ["picture_gradcam.png"])
    assert read_image(out / "picture_detection0.png").shape == (48, 64, 3)
    assert read_image(out / "picture_gradcam.png").shape[1] > 4 * 64
    assert gradcam_tool.main([str(checkpoints / "picture.png"), "--weights", str(checkpoints / "unet.pt"),
                              "--out", str(out / "unet"), "--class", "b"]) == 0
    assert sorted(path.name for path in (out / "unet").iterdir()) == ["picture_class2.png", "picture_gradcam.png"]


@pytest.mark.parametrize(("weights", "option", "message"), [
    ("detector.pt", ["--level", "c9"], "unknown level 'c9'; the model's levels: c2, c3, c4, c5, p2, p3, p4, p5, p6"),
    ("detector.pt", ["--class", "cat"], "unknown class 'cat'; classes: disc, block, wedge"),
    ("detector.pt", ["--detection", "100000"], "detection 100000 does not exist: the image has"),
    ("unet.pt", ["--level", "p3"], "unknown level 'p3'; the model's levels: c0, c1, c2"),
    ("unet.pt", ["--detection", "0"], "a semantic segmenter has no detections"),
])
def test_gradcam_tool_errors(checkpoints: Path, capsys, weights: str, option: list[str], message: str) -> None:
    arguments = [str(checkpoints / "picture.png"), "--weights", str(checkpoints / weights), "--out",
                 str(checkpoints / "errors"), *option]
    assert gradcam_tool.main(arguments) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("score_thr", ["1.5", "-1"])
def test_gradcam_tool_refuses_a_score_threshold_outside_0_1(checkpoints: Path, capsys, score_thr: str) -> None:
    arguments = [str(checkpoints / "picture.png"), "--weights", str(checkpoints / "detector.pt"), "--out",
                 str(checkpoints / "errors"), "--score-thr", score_thr]
    assert gradcam_tool.main(arguments) == 2
    assert f"score_threshold (--score-thr) must be a number in [0, 1], got {float(score_thr)}" in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_gradcam_tool_refuses_a_limit_below_one(checkpoints: Path, capsys, limit: str) -> None:
    arguments = [str(checkpoints / "picture.png"), "--weights", str(checkpoints / "detector.pt"), "--limit", limit]
    with pytest.raises(SystemExit) as exit_info:
        gradcam_tool.main(arguments)
    assert exit_info.value.code == 2
    assert f"argument --limit: must be an integer >= 1, got '{limit}'" in capsys.readouterr().err
