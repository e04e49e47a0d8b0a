"""timm backbones (``timm:<model>``): the Backbone contract, options, checkpoints, the registry, every head."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from structured.backbones.folding import fold_frozen_batch_norms
from structured.backbones.transfer import FrozenBatchNormAct2d, GroupNormAct
from structured.cli import reports_usage_errors
from structured.config import ConfigError, build_model, load_config
from structured.registry import BACKBONES, MissingExtraError, UnknownNameError

timm = pytest.importorskip("timm")

SMALL_MODELS = ("test_resnet", "test_efficientnet", "test_convnext")
# top-level modules of each model that frozen_stages=2 (stride 4) freezes, in timm's names
FROZEN_AT_STRIDE_4 = {
    "test_resnet": {"conv1", "bn1", "act1", "maxpool", "layer1"},
    "test_efficientnet": {"conv_stem", "bn1", "blocks.0", "blocks.1"},
    "test_convnext": {"stem", "stages.0"},
}
NUM_CLASSES = 2


def build(name: str, **options) -> nn.Module:
    torch.manual_seed(0)
    return BACKBONES.build(f"timm:{name}", **options)


def parameter_count(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_levels_strides_and_channels_match_the_maps(name):
    backbone = build(name).eval()
    with torch.no_grad():
        features = backbone(torch.rand(1, 3, 64, 96))
    assert list(features) == list(backbone.out_channels) == list(backbone.strides)
    for level, feature in features.items():
        stride = backbone.strides[level]
        assert stride == 2 ** int(level[1:])
        assert feature.shape == (1, backbone.out_channels[level], 64 // stride, 96 // stride), (name, level)


def test_levels_follow_the_taps_of_timm_features_only():
    timm_features = timm.create_model("test_efficientnet", features_only=True)
    backbone = build("test_efficientnet")
    assert list(backbone.strides.values()) == timm_features.feature_info.reduction()
    assert list(backbone.out_channels.values()) == timm_features.feature_info.channels()


def test_out_levels_selects_maps():
    backbone = build("test_resnet", out_levels=["c3", "c5"])
    features = backbone(torch.rand(1, 3, 64, 64))
    assert list(features) == ["c3", "c5"] == list(backbone.out_channels)
    with pytest.raises(ValueError, match="out_levels"):
        build("test_convnext", out_levels=["c1"])


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_frozen_stages_freeze_exactly_the_modules_up_to_the_stride(name):
    backbone = build(name, frozen_stages=2).train()
    frozen_prefixes = tuple(f"{module}." for module in FROZEN_AT_STRIDE_4[name])
    for parameter_name, parameter in backbone.trunk.named_parameters():
        assert parameter.requires_grad != parameter_name.startswith(frozen_prefixes), parameter_name
    frozen_norms = [m for path in backbone.frozen_modules for m in backbone.trunk.get_submodule(path).modules()
                    if isinstance(m, nn.modules.batchnorm._NormBase)]
    assert all(not norm.training for norm in frozen_norms)
    backbone.freeze_stages(0)
    assert all(parameter.requires_grad for parameter in backbone.parameters())


def test_a_module_holding_a_deeper_tap_is_frozen_with_the_next_level():
    # legacy Xception's c2 is the ReLU that starts block2: block1 feeds c2, the rest of block2 (stride 8) does not
    backbone = build("legacy_xception", frozen_stages=2, out_levels=["c2", "c3"])
    trainable = {name.split(".")[0] for name, p in backbone.trunk.named_parameters() if p.requires_grad}
    assert {"conv1", "conv2", "block1"}.isdisjoint(trainable)
    assert {"block2", "block3"} <= trainable


def test_frozen_bn_and_gn_keep_the_norms_activations():
    reference = build("test_byobnet").eval()
    frozen = build("test_byobnet", norm_layer="frozen_bn").eval()
    images = torch.rand(2, 3, 64, 64)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert any(isinstance(m, FrozenBatchNormAct2d) for m in frozen.modules())
    with torch.no_grad():
        for level, feature in frozen(images).items():
            torch.testing.assert_close(feature, reference(images)[level])
    activations = [type(m.act) for m in reference.modules() if isinstance(m, nn.BatchNorm2d)]
    grouped = build("test_byobnet", norm_layer="gn")
    assert [type(m.act) for m in grouped.modules() if isinstance(m, GroupNormAct)] == activations
    assert nn.ReLU in activations
    with pytest.raises(ValueError, match="no batch norm"):
        build("test_convnext", norm_layer="frozen_bn")


def test_folding_keeps_outputs_of_norms_with_activations():
    backbone = build("test_byobnet").eval()
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = backbone(images)
        assert fold_frozen_batch_norms(backbone) > 0
        for level, feature in backbone(images).items():
            torch.testing.assert_close(feature, expected[level], rtol=1e-4, atol=1e-4)


def test_classifier_mode_is_timms_classification_model():
    backbone = build("test_resnet", classifier=True, num_classes=7).eval()
    assert backbone.classify(torch.rand(2, 3, 64, 64)).shape == (2, 7)
    assert parameter_count(backbone) == parameter_count(timm.create_model("test_resnet", num_classes=7))
    features_only = timm.create_model("test_resnet", features_only=True)
    assert parameter_count(build("test_resnet")) == parameter_count(features_only)
    with pytest.raises(RuntimeError, match="classifier=True"):
        build("test_resnet").classify(torch.rand(1, 3, 64, 64))


def test_pretrained_loads_a_timm_state_dict_checked(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("test_resnet").eval()
    path = tmp_path / "test_resnet.pth"
    torch.save(source.state_dict(), path)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        c5 = build("test_resnet", pretrained=str(path)).eval()(images)["c5"]
        logits = build("test_resnet", pretrained=str(path), classifier=True).eval().classify(images)
        torch.testing.assert_close(c5, source.forward_features(images))
        torch.testing.assert_close(logits, source(images))
    ours = tmp_path / "backbone.pth"
    torch.save(build("test_resnet", pretrained=str(path)).state_dict(), ours)
    with torch.no_grad():
        torch.testing.assert_close(build("test_resnet", pretrained=str(ours)).eval()(images)["c5"], c5)
    other = tmp_path / "other.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), other)
    with pytest.raises(KeyError, match="missing keys"):
        build("test_resnet", pretrained=str(other))
    with pytest.raises(ValueError, match="download"):
        build("test_resnet", pretrained="imagenet")


def test_registry_resolves_any_timm_name_without_listing_them():
    assert not any(name.startswith("timm:") for name in BACKBONES.names())
    assert callable(BACKBONES.get("timm:xception41"))
    with pytest.raises(UnknownNameError, match="xception41") as error:
        BACKBONES.get("timm:xception42")
    assert "unknown timm model 'xception42'" in str(error.value)
    with pytest.raises(UnknownNameError, match="timm:<"):
        BACKBONES.get("resnet_18")


def test_without_timm_the_error_says_how_to_install_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'structured\[timm\]'"):
        BACKBONES.get("timm:resnet18")
    assert reports_usage_errors(lambda argv: BACKBONES.build("timm:resnet18"))([]) == 2
    assert capsys.readouterr().err.startswith("error: timm:<model> backbones need the timm package")


def test_recipe_sections_and_overrides_validate_timm_options():
    config = load_config({"model": {"name": "unet_resnet34", "num_classes": NUM_CLASSES}},
                         overrides=["model.backbone.name=timm:test_resnet", "model.backbone.norm_layer=frozen_bn",
                                    "model.backbone.frozen_stages=1"])
    model = build_model(config)
    assert model.backbone.trunk.default_cfg["architecture"] == "test_resnet"
    assert model.backbone.trunk.bn1.__class__.__name__ == "FrozenBatchNorm2d"
    assert model.backbone.frozen_modules == ("conv1", "bn1", "act1")
    with pytest.raises(ConfigError, match="frozen_stage"):
        build_model(load_config(config.data, overrides=["model.backbone.frozen_stage=1"]))
    with pytest.raises(ConfigError, match="unknown timm model"):
        build_model(load_config(config.data, overrides=["model.backbone.name=timm:no_such_net"]))


TINY_FASTER_RCNN = {"transform": {"min_size": 96, "max_size": 128},
                    "rpn": {"pre_nms_top_n_train": 100, "post_nms_top_n_train": 32, "pre_nms_top_n_test": 50,
                            "post_nms_top_n_test": 16},
                    "roi_heads": {"batch_size_per_image": 16, "representation_size": 64},
                    "neck": {"name": "fpn", "out_channels": 32}}
TINY_SSD = {"transform": {"size": 64}, "head": {"extras": [[32, 64, 3, 2, 1], [32, 64, 3, 2, 1]]},
            "default_boxes": {"aspect_ratios": [[2]] * 5, "scales": [], "steps": []}}
HEADS = {
    "faster_rcnn_r18_fpn": ({"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}, TINY_FASTER_RCNN),
    "ssd300_resnet50": ({"loss_localization", "loss_confidence"}, TINY_SSD),
    "unet_resnet34": ({"loss_ce", "loss_dice"}, {"decoder": {"channels": [32, 16, 16, 8, 8]}}),
}


def targets_for(name: str) -> list[dict]:
    if name.startswith("unet"):
        semantic = torch.zeros(80, 100, dtype=torch.int64)
        semantic[20:50, 30:70] = 1
        return [{"semantic": semantic}]
    return [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 70.0]]), "labels": torch.tensor([1])}]


@pytest.mark.parametrize("name", HEADS)
def test_every_head_trains_and_predicts_on_a_timm_backbone(name):
    loss_names, small = HEADS[name]
    torch.manual_seed(0)
    model = build_model({"model": {"name": name, "num_classes": NUM_CLASSES, **small,
                                   "backbone": {"name": "timm:test_resnet"}}})
    images = [torch.rand(3, 80, 100)]
    losses = model(images, targets_for(name))
    assert set(losses) == loss_names and all(torch.isfinite(value) for value in losses.values())
    sum(losses.values()).backward()
    prediction = model.eval().predict(images)[0]
    assert ("mask" if name.startswith("unet") else "boxes") in prediction
    if name.startswith("unet"):
        assert prediction["mask"].shape == (80, 100)


@pytest.mark.parametrize(("name", "keras_params"), [("legacy_xception", 22_910_480), ("resnetv2_50", 25_613_800)])
def test_keras_parameter_counts_are_explained(name, keras_params):
    # docs/benchmarks.md: Keras counts batch-norm moving statistics as parameters; ResNet50V2 also has conv biases
    backbone = build(name, classifier=True)
    norm_channels = sum(m.num_features for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))
    model = backbone.trunk
    keras_biases = 0
    if name == "resnetv2_50":
        keras_biases = model.stem.conv.out_channels + sum(
            block.conv3.out_channels + (block.downsample.conv.out_channels if block.downsample else 0)
            for stage in model.stages for block in stage.blocks)
    assert parameter_count(backbone) + 2 * norm_channels + keras_biases == keras_params
