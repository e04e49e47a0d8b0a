"""FPN neck against torchvision's FeaturePyramidNetwork, and ResNet-50 / MobileNetV3 + FPN against
torchvision's detection backbones (``BackboneWithFPN``) with the same weights."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet50
from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d as TorchvisionFrozenBN

from structured.backbones.fpn import FPN
from structured.backbones.torchvision_keys import split_torchvision_backbone_state, torchvision_backbone_key
from structured.registry import BACKBONES, NECKS

TOLERANCE = 1e-5


def randomize_frozen_bn(module: nn.Module, generator: torch.Generator) -> None:
    """Give torchvision's frozen batch norms non-trivial statistics so the comparison means something."""
    for m in module.modules():
        if isinstance(m, TorchvisionFrozenBN):
            n = m.weight.numel()
            m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
            m.bias.copy_(torch.randn(n, generator=generator) * 0.1)
            m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)


def random_features(channels: dict[str, int], sizes: dict[str, tuple[int, int]]) -> OrderedDict:
    return OrderedDict((lv, torch.randn(2, c, *sizes[lv])) for lv, c in channels.items())


def load_torchvision_fpn(ours: FPN, theirs: nn.Module, levels: list[str], strides: dict[str, int]) -> None:
    state = {f"fpn.{k}": v for k, v in theirs.state_dict().items()}
    backbone_part, neck_part = split_torchvision_backbone_state(state, "resnet", levels, strides)
    assert not backbone_part
    ours.load_state_dict(neck_part, strict=True)


@pytest.mark.parametrize(
    ("extra", "torchvision_extra"),
    [
        (dict(extra_levels="maxpool"), lambda c_last: LastLevelMaxPool()),
        (dict(extra_levels="conv", extra_from="p"), lambda c_last: LastLevelP6P7(64, 64)),
        (dict(extra_levels="conv", extra_from="c"), lambda c_last: LastLevelP6P7(c_last, 64)),
        (dict(extra_levels=None), lambda c_last: None),
    ],
)
def test_fpn_matches_torchvision(extra: dict, torchvision_extra) -> None:
    torch.manual_seed(0)
    channels = {"c2": 24, "c3": 40, "c4": 80, "c5": 160}
    strides = {"c2": 4, "c3": 8, "c4": 16, "c5": 32}
    sizes = {"c2": (19, 21), "c3": (10, 11), "c4": (5, 6), "c5": (3, 3)}
    theirs = FeaturePyramidNetwork(list(channels.values()), 64, extra_blocks=torchvision_extra(160)).eval()
    ours = NECKS.build("fpn", in_channels=channels, in_strides=strides, out_channels=64, **extra).eval()
    load_torchvision_fpn(ours, theirs, list(channels), strides)
    for _ in range(3):
        features = random_features(channels, sizes)
        expected = list(theirs(features).values())
        got = ours(features)
        assert list(got) == list(ours.strides) == list(ours.out_channels)
        assert len(got) == len(expected)
        for (name, ours_map), their_map in zip(got.items(), expected, strict=True):
            assert ours_map.shape[1] == ours.out_channels[name] == 64
            torch.testing.assert_close(ours_map, their_map, rtol=0, atol=TOLERANCE)


def test_fpn_names_and_strides() -> None:
    fpn = FPN(
        in_channels={"c3": 8, "c4": 16, "c5": 32},
        in_strides={"c3": 8, "c4": 16, "c5": 32},
        extra_levels="conv",
    )
    assert fpn.strides == {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
    assert set(fpn.out_channels.values()) == {256}
    tapped = FPN(in_channels={"c5_entry": 16, "c5": 32}, in_strides={"c5_entry": 32, "c5": 32})
    assert tapped.strides == {"p5_entry": 32, "p5": 32, "p6": 64}


def test_fpn_group_norm_runs_and_bad_arguments_are_errors() -> None:
    fpn = FPN(
        in_channels={"c4": 8, "c5": 16}, in_strides={"c4": 16, "c5": 32}, out_channels=32, norm_layer="gn"
    )
    out = fpn({"c4": torch.randn(1, 8, 6, 6), "c5": torch.randn(1, 16, 3, 3)})
    assert [tuple(v.shape) for v in out.values()] == [(1, 32, 6, 6), (1, 32, 3, 3), (1, 32, 2, 2)]
    with pytest.raises(KeyError, match="c4"):
        fpn({"c5": torch.randn(1, 16, 3, 3)})
    with pytest.raises(ValueError, match="same levels"):
        FPN(in_channels={"c4": 8}, in_strides={"c5": 32})
    with pytest.raises(ValueError, match="non-decreasing"):
        FPN(in_channels={"c4": 8, "c5": 8}, in_strides={"c4": 32, "c5": 16})
    with pytest.raises(ValueError, match="extra_levels"):
        FPN(in_channels={"c5": 8}, in_strides={"c5": 32}, extra_levels="pool")


def compare_with_torchvision(
    theirs: nn.Module, trunk: str, ours_backbone: nn.Module, size: tuple[int, int]
) -> None:
    ours_fpn = FPN(in_channels=ours_backbone.out_channels, in_strides=ours_backbone.strides)
    levels = list(ours_backbone.out_channels)
    backbone_state, neck_state = split_torchvision_backbone_state(theirs.state_dict(), trunk, levels)
    ours_backbone.load_state_dict(backbone_state, strict=True)
    ours_fpn.load_state_dict(neck_state, strict=True)
    theirs.eval(), ours_backbone.eval(), ours_fpn.eval()
    torch.manual_seed(1)
    images = torch.rand(2, 3, *size)
    with torch.no_grad():
        expected = list(theirs(images).values())
        got = ours_fpn(ours_backbone(images))
    assert len(got) == len(expected)
    for ours_map, their_map in zip(got.values(), expected, strict=True):
        torch.testing.assert_close(ours_map, their_map, rtol=0, atol=TOLERANCE)


@pytest.mark.slow
def test_resnet50_fpn_matches_torchvision_detection_backbone() -> None:
    torch.manual_seed(0)
    theirs = _resnet_fpn_extractor(resnet50(norm_layer=TorchvisionFrozenBN), trainable_layers=3)
    with torch.no_grad():
        randomize_frozen_bn(theirs, torch.Generator().manual_seed(2))
    for m in theirs.modules():  # torchvision's COCO-trained fasterrcnn_resnet50_fpn runs with eps=0
        if isinstance(m, TorchvisionFrozenBN):
            m.eps = 0.0
    ours = BACKBONES.build(
        "resnet50", out_levels=("c2", "c3", "c4", "c5"), norm_layer="frozen_bn", norm_eps=0.0, frozen_stages=2
    )
    compare_with_torchvision(theirs, "resnet", ours, (97, 130))


def test_mobilenet_v3_large_fpn_matches_torchvision_detection_backbone() -> None:
    torch.manual_seed(0)
    theirs = _mobilenet_extractor(
        mobilenet_v3_large(norm_layer=TorchvisionFrozenBN), True, trainable_layers=3
    )
    with torch.no_grad():
        randomize_frozen_bn(theirs, torch.Generator().manual_seed(2))
    ours = BACKBONES.build(
        "mobilenet_v3_large",
        out_levels=("c5_entry", "c5"),
        norm_layer="frozen_bn",
        norm_eps=1e-5,
        frozen_stages=3,
    )
    compare_with_torchvision(theirs, "mobilenet", ours, (130, 97))


def test_key_map_examples_and_unknown_keys() -> None:
    levels = ["c2", "c3", "c4", "c5"]
    assert torchvision_backbone_key("body.layer1.0.conv1.weight", "resnet", levels) == (
        "backbone",
        "trunk.layer1.0.conv1.weight",
    )
    assert torchvision_backbone_key("body.0.1.running_var", "mobilenet", ["c5_entry", "c5"]) == (
        "backbone",
        "trunk.features.0.1.running_var",
    )
    assert torchvision_backbone_key("fpn.inner_blocks.0.0.weight", "resnet", levels) == (
        "neck",
        "lateral.c2.0.weight",
    )
    assert torchvision_backbone_key("fpn.layer_blocks.3.0.bias", "resnet", levels) == (
        "neck",
        "output.c5.0.bias",
    )
    assert torchvision_backbone_key("fpn.extra_blocks.p7.weight", "resnet", levels[1:]) == (
        "neck",
        "extra.p7.weight",
    )
    with pytest.raises(KeyError, match="rpn.head"):
        torchvision_backbone_key("rpn.head.conv.0.0.weight", "resnet", levels)
    with pytest.raises(KeyError, match="inner_blocks.4"):
        torchvision_backbone_key("fpn.inner_blocks.4.0.weight", "resnet", levels)


@pytest.mark.parametrize(
    ("detector", "trunk", "arch", "levels"),
    [
        ("fasterrcnn_resnet50_fpn", "resnet", "resnet50", ("c2", "c3", "c4", "c5")),
        ("fasterrcnn_mobilenet_v3_large_fpn", "mobilenet", "mobilenet_v3_large", ("c5_entry", "c5")),
    ],
)
def test_key_map_covers_torchvision_detection_checkpoints(
    detector: str, trunk: str, arch: str, levels: tuple
) -> None:
    """Every ``backbone.*`` key of torchvision's detector maps onto exactly our backbone + FPN keys."""
    import torchvision

    model = getattr(torchvision.models.detection, detector)(weights=None, weights_backbone=None)
    state = {k[len("backbone.") :]: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    ours = BACKBONES.build(arch, out_levels=levels, norm_layer="frozen_bn")
    fpn = FPN(in_channels=ours.out_channels, in_strides=ours.strides)
    backbone_state, neck_state = split_torchvision_backbone_state(state, trunk, levels)
    ours.load_state_dict(backbone_state, strict=True)
    fpn.load_state_dict(neck_state, strict=True)
    assert set(neck_state) == set(fpn.state_dict())
    assert set(ours.state_dict()) == {k for k in backbone_state if not k.endswith("num_batches_tracked")}
