"""Transfer-learning helpers: frozen batch norm, norm conversion, freezing, parameter groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d as TorchvisionFrozenBN

from structured.backbones.transfer import (
    FrozenBatchNorm2d,
    convert_norm_layers,
    freeze,
    parameter_groups,
    unfreeze,
)
from structured.registry import BACKBONES


def random_batch_norm(channels: int, seed: int = 0) -> nn.BatchNorm2d:
    generator = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels, eps=1e-3)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=generator))
        bn.running_mean.copy_(torch.randn(channels, generator=generator))
        bn.running_var.copy_(torch.rand(channels, generator=generator) + 0.1)
    return bn.eval()


def test_frozen_batch_norm_matches_batch_norm_and_torchvision() -> None:
    bn = random_batch_norm(6)
    frozen = FrozenBatchNorm2d.from_batch_norm(bn)
    theirs = TorchvisionFrozenBN(6, eps=1e-3)
    theirs.load_state_dict(bn.state_dict())
    x = torch.randn(3, 6, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(frozen(x), theirs(x), rtol=0, atol=0)
    reloaded = FrozenBatchNorm2d(6, eps=1e-3)
    reloaded.load_state_dict(bn.state_dict())  # num_batches_tracked is accepted and dropped
    assert not list(reloaded.parameters())
    torch.testing.assert_close(reloaded(x), frozen(x), rtol=0, atol=0)


def test_convert_norm_layers() -> None:
    model = nn.Sequential(nn.Conv2d(3, 24, 3), random_batch_norm(24), nn.Sequential(random_batch_norm(24, 1)))
    frozen = convert_norm_layers(nn.Sequential(*[m for m in model]), "frozen_bn", eps=0.0)
    assert [type(m) for m in frozen.modules()].count(FrozenBatchNorm2d) == 2
    assert all(m.eps == 0.0 for m in frozen.modules() if isinstance(m, FrozenBatchNorm2d))
    grouped = convert_norm_layers(
        nn.Sequential(nn.Conv2d(3, 24, 3), random_batch_norm(24), nn.Sequential(random_batch_norm(24, 1))),
        "gn",
    )
    norms = [m for m in grouped.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 2 and all(m.num_groups == 8 for m in norms)
    torch.testing.assert_close(norms[0].weight, random_batch_norm(24).weight)
    with pytest.raises(ValueError, match="norm_layer must be one of"):
        convert_norm_layers(model, "layernorm")


def test_freeze_unfreeze_and_backbone_stages() -> None:
    layer = nn.Linear(3, 3)
    assert not any(p.requires_grad for p in freeze(layer).parameters())
    assert all(p.requires_grad for p in unfreeze(layer).parameters())
    backbone = BACKBONES.build("resnet18", frozen_stages=3)
    assert not backbone.trunk.layer2[0].conv1.weight.requires_grad
    assert backbone.trunk.layer3[0].conv1.weight.requires_grad
    backbone.freeze_stages(0)
    assert all(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert all(m.training for m in backbone.modules())
    with pytest.raises(ValueError, match="frozen_stages"):
        backbone.freeze_stages(6)


class Detector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        self.head = nn.Linear(2, 1)


def test_parameter_groups_split_backbone_and_heads() -> None:
    model = Detector()
    freeze(model.backbone[0])
    groups = parameter_groups(model, lr=0.1, backbone_lr=0.01, weight_decay=1e-4)
    assert [g["name"] for g in groups] == ["backbone", "heads"]
    assert [g["lr"] for g in groups] == [0.01, 0.1]
    assert [len(g["params"]) for g in groups] == [2, 2]
    assert all(g["weight_decay"] == 1e-4 for g in groups)
    torch.optim.SGD(groups, lr=0.1)
    freeze(model)
    with pytest.raises(ValueError, match="no trainable parameters"):
        parameter_groups(model, lr=0.1)
