"""Generic tests over every registered backbone: the Backbone contract, backward, frozen stages."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from structured.backbones.transfer import FrozenBatchNorm2d
from structured.registry import BACKBONES

FROZEN_STAGES = 2
INPUT_SIZES = {"inception_v3": ((96, 96), (75, 83))}
DEFAULT_SIZES = ((64, 64), (75, 83))
VALID_PADDING = {"alexnet", "inception_v3"}
# Inception v3's c5 is 1x1 at 75x83: train-mode batch norm needs two images.
TRAIN_BATCH = {"inception_v3": 2}
HEAVY = {"resnet152", "resnext101_32x8d", "efficientnet_b6", "efficientnet_b7", "vgg19_bn", "inception_v3"}
# FractalNet's drop-path would leave dropped columns without gradient; its own tests cover drop-path.
BUILD_OPTIONS = {"fractalnet": {"drop_path": 0.0, "global_drop_ratio": 0.0, "channels": (16, 32, 64, 64, 64)}}


def backbone_params() -> list:
    return [
        pytest.param(name, marks=pytest.mark.slow) if name in HEAVY else name for name in BACKBONES.names()
    ]


@pytest.fixture(scope="module", params=backbone_params())
def built(request: pytest.FixtureRequest) -> tuple[str, nn.Module]:
    torch.manual_seed(0)
    name = request.param
    return name, BACKBONES.build(name, frozen_stages=FROZEN_STAGES, **BUILD_OPTIONS.get(name, {}))


def test_registry_has_every_family() -> None:
    expected = {
        "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
        "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2",
        "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
        "alexnet", "googlenet", "inception_v3", "fractalnet",
        *(f"efficientnet_b{k}" for k in range(8)),
    }  # fmt: skip
    assert expected <= set(BACKBONES.names())


def check_features(
    name: str, backbone: nn.Module, features: dict, batch: int, height: int, width: int
) -> None:
    assert list(features) == list(backbone.out_channels)
    for level, feature in features.items():
        stride = backbone.strides[level]
        assert feature.shape[:2] == (batch, backbone.out_channels[level]), (name, level)
        for size, full in zip(feature.shape[2:], (height, width), strict=True):
            if name in VALID_PADDING:
                assert 1 <= size <= math.ceil(full / stride), (name, level, size)
            else:
                assert size in (full // stride, math.ceil(full / stride)), (name, level, size)


def test_levels_strides_channels_match_attributes(built: tuple[str, nn.Module]) -> None:
    name, backbone = built
    assert list(backbone.out_channels) == list(backbone.strides)
    assert all(level in {f"c{k}" for k in range(1, 6)} for level in backbone.strides)
    for level, stride in backbone.strides.items():
        assert stride == 2 ** int(level[1:])
    assert list(backbone.strides.values()) == sorted(backbone.strides.values())
    height, width = INPUT_SIZES.get(name, DEFAULT_SIZES)[0]
    backbone.eval()
    with torch.no_grad():
        features = backbone(torch.rand(1, 3, height, width))
    check_features(name, backbone, features, 1, height, width)


def frozen_and_trainable(backbone: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    frozen = [backbone.trunk.get_submodule(path) for path in backbone.frozen_modules]
    frozen_ids = {id(m) for module in frozen for m in module.modules()}
    trainable = [
        m for step in backbone.steps for m in backbone.trunk.get_submodule(step.module).modules()
        if id(m) not in frozen_ids
    ]  # fmt: skip
    return frozen, trainable


def batch_norm_stats(modules: list[nn.Module]) -> list[torch.Tensor]:
    return [
        buffer.clone()
        for module in modules
        for m in module.modules()
        if isinstance(m, nn.BatchNorm2d)
        for buffer in (m.running_mean, m.running_var)
    ]


def test_backward_and_frozen_stages(built: tuple[str, nn.Module]) -> None:
    name, backbone = built
    frozen, trainable = frozen_and_trainable(backbone)
    assert frozen, f"{name}: frozen_stages={FROZEN_STAGES} froze nothing"
    frozen_stats = batch_norm_stats(frozen)
    trainable_stats = batch_norm_stats(trainable)
    backbone.train()
    backbone.zero_grad()
    height, width = INPUT_SIZES.get(name, DEFAULT_SIZES)[1]
    batch = TRAIN_BATCH.get(name, 1)
    torch.manual_seed(1)
    features = backbone(torch.rand(batch, 3, height, width))
    check_features(name, backbone, features, batch, height, width)
    sum(feature.square().mean() for feature in features.values()).backward()
    for module in frozen:
        assert not module.training
        for parameter in module.parameters():
            assert not parameter.requires_grad and parameter.grad is None
    for parameter in (p for m in trainable for p in m.parameters(recurse=False)):
        assert parameter.requires_grad and parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    for before, after in zip(frozen_stats, batch_norm_stats(frozen), strict=True):
        torch.testing.assert_close(after, before, rtol=0, atol=0)
    if trainable_stats:
        moved = [
            not torch.equal(b, a) for b, a in zip(trainable_stats, batch_norm_stats(trainable), strict=True)
        ]
        assert any(moved), f"{name}: trainable batch norm statistics did not update in train mode"
    backbone.eval()


def test_unknown_level_names_the_available_ones() -> None:
    with pytest.raises(ValueError, match=r"c2, c3, c4, c5.*'c9'"):
        BACKBONES.build("resnet18", out_levels=("c9",))


def test_requested_levels_only_and_norm_options() -> None:
    backbone = BACKBONES.build("resnet18", out_levels=["c5", "c3"], norm_layer="gn")
    features = backbone(torch.rand(1, 3, 64, 64))
    assert list(features) == ["c3", "c5"] == list(backbone.strides)
    with pytest.raises(ValueError, match=r"\[B,3,H,W\], got shape \(3, 64, 64\)"):
        backbone(torch.rand(3, 64, 64))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in backbone.modules())
    frozen = BACKBONES.build("mobilenet_v2", norm_layer="frozen_bn", norm_eps=1e-3)
    norms = [m for m in frozen.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert norms and all(m.eps == 1e-3 for m in norms)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())


def test_norm_layer_on_a_net_without_batch_norm_is_an_error() -> None:
    with pytest.raises(ValueError, match="vgg11 has no batch norm"):
        BACKBONES.build("vgg11", norm_layer="frozen_bn")


def test_frozen_stages_match_torchvision_trainable_layers() -> None:
    """frozen_stages=k freezes what torchvision's detection helpers freeze for the matching trainable_layers."""
    from torchvision.models import mobilenet_v3_large, resnet50
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor

    for frozen_stages, trainable_layers in ((1, 4), (2, 3), (3, 2), (4, 1), (5, 0)):
        ours = BACKBONES.build("resnet50", frozen_stages=frozen_stages)
        theirs = _resnet_fpn_extractor(resnet50(), trainable_layers).body
        ours_trainable = {k[len("trunk.") :] for k, p in ours.named_parameters() if p.requires_grad}
        assert ours_trainable == {k for k, p in theirs.named_parameters() if p.requires_grad}
    for frozen_stages, trainable_layers in ((3, 3), (4, 2), (5, 0)):
        ours = BACKBONES.build("mobilenet_v3_large", frozen_stages=frozen_stages)
        theirs = _mobilenet_extractor(mobilenet_v3_large(), True, trainable_layers).body
        ours_trainable = {k[len("trunk.features.") :] for k, p in ours.named_parameters() if p.requires_grad}
        assert ours_trainable == {k for k, p in theirs.named_parameters() if p.requires_grad}


def test_stages_after_the_deepest_requested_level_hold_no_weights() -> None:
    torch.manual_seed(0)
    full = BACKBONES.build("resnet18").eval()
    torch.manual_seed(0)
    truncated = BACKBONES.build("resnet18", out_levels=["c2", "c4"]).eval()
    assert isinstance(truncated.trunk.layer4, nn.Identity)
    layer4 = sum(p.numel() for p in full.trunk.layer4.parameters())
    assert sum(p.numel() for p in truncated.parameters()) == sum(p.numel() for p in full.parameters()) - layer4
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected, found = full(images), truncated(images)
    assert list(found) == ["c2", "c4"]
    for level in found:
        torch.testing.assert_close(found[level], expected[level], rtol=0, atol=0)
    classifier = BACKBONES.build("resnet18", out_levels=["c2"], classifier=True)
    assert not isinstance(classifier.trunk.layer4, nn.Identity)  # classify() runs the whole trunk
    vgg = BACKBONES.build("vgg11", out_levels=["c4"])  # its last pooling has no weights: kept
    assert [type(m) for m in vgg.trunk.modules()] == [type(m) for m in BACKBONES.build("vgg11").trunk.modules()]
