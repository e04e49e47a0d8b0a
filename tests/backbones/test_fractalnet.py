"""FractalNet: depth B*2^(C-1), flat joins (element-wise mean), drop-path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from structured.backbones.fractalnet import FractalExpansion, FractalNet
from structured.registry import BACKBONES

SMALL = (4, 8, 8, 8, 8)


@pytest.mark.parametrize(("blocks", "columns"), [(1, 1), (2, 2), (3, 3), (5, 4)])
def test_depth_follows_the_expansion_rule(blocks: int, columns: int) -> None:
    net = FractalNet(columns=columns, channels=SMALL[:blocks], num_classes=3)
    assert net.depth() == blocks * 2 ** (columns - 1)
    for block in net.blocks:
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == 2**columns - 1


def test_joins_are_flat_means_of_all_meeting_columns() -> None:
    torch.manual_seed(0)
    net = FractalNet(columns=3, channels=(4,), num_classes=2).eval()
    seen = []
    for join in (net.blocks[0].join, net.blocks[0].expansion.join):
        join.register_forward_hook(
            lambda module, inputs, output: seen.append((len(inputs[0]), inputs[0], output))
        )
    with torch.no_grad():
        net.blocks(torch.rand(1, 3, 8, 8))
    counts = sorted(count for count, _, _ in seen)
    assert counts == [2, 3]
    for _, inputs, output in seen:
        torch.testing.assert_close(output, sum(inputs) / len(inputs))


def test_two_column_block_by_hand() -> None:
    torch.manual_seed(0)
    expansion = FractalExpansion(2, 3, 4, FractalNet(columns=2, channels=(4,)).drop_state).eval()
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        deep, shallow = expansion(x)
        torch.testing.assert_close(deep, expansion.second.shallow(expansion.first.shallow(x)))
        torch.testing.assert_close(shallow, expansion.shallow(x))


def test_global_drop_path_trains_a_single_column() -> None:
    torch.manual_seed(0)
    columns = 3
    net = FractalNet(
        columns=columns, channels=(4, 4), drop_path=0.0, global_drop_ratio=1.0, num_classes=2
    ).train()
    for _ in range(4):
        net.zero_grad()
        net(torch.rand(2, 3, 8, 8)).sum().backward()
        column = net.drop_state.global_column
        assert column is not None
        with_grad = [
            m for m in net.blocks[0].modules() if isinstance(m, nn.Conv2d) and m.weight.grad is not None
        ]
        assert len(with_grad) == 2 ** (columns - 1 - column)


def test_local_drop_path_keeps_at_least_one_input() -> None:
    torch.manual_seed(0)
    net = FractalNet(columns=3, channels=(4,), drop_path=0.99, global_drop_ratio=0.0, num_classes=2).train()
    for _ in range(5):
        out = net(torch.rand(2, 3, 8, 8))
        assert torch.isfinite(out).all()
        assert net.drop_state.global_column is None


def test_bad_configuration_is_an_error() -> None:
    with pytest.raises(ValueError, match="columns"):
        FractalNet(columns=0)
    with pytest.raises(ValueError, match="drop_path"):
        FractalNet(drop_path=1.0)


def test_drop_path_mode_is_redrawn_each_pass_even_with_a_frozen_first_block() -> None:
    torch.manual_seed(0)
    backbone = BACKBONES.build(
        "fractalnet", columns=3, channels=(4, 4), drop_path=0.0, global_drop_ratio=1.0, frozen_stages=1
    ).train()
    state = backbone.trunk.drop_state
    columns = set()
    for _ in range(12):
        backbone(torch.rand(1, 3, 8, 8))
        columns.add(state.global_column)
    assert len(columns) > 1
