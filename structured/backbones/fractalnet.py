"""FractalNet (Larsson et al. 2017): ultra-deep networks without residuals, written here.

One block applies the fractal expansion rule with ``columns`` columns C:
``f_1(z) = conv(z)`` and ``f_{C+1}(z) = join(f_C(f_C(z)), conv(z))``, where ``conv`` is
3x3 conv -> batch norm -> ReLU and ``join`` is the element-wise mean of its inputs. Joins are flat: a
join averages every column that meets there (the deepest column has ``2**(C-1)`` convolutions). Each
block ends with 2x2 max pooling, so ``blocks`` B blocks give levels ``c1..cB`` (block k's output has
stride ``2**k``) and the network is ``B * 2**(C-1)`` convolutions deep.

Drop-path regularises training: each forward pass in train mode is, with probability
``global_drop_ratio``, a *global* pass that keeps a single random column for the whole network;
otherwise a *local* pass where each join drops each input with probability ``drop_path`` (keeping at
least one). Eval mode uses every column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from structured.backbones.base import MAX_LEVEL, Backbone, Step, TrunkSpec, build_backbone
from structured.backbones.mobilenet import conv_bn_relu
from structured.registry import BACKBONES

DEFAULT_CHANNELS = (64, 128, 256, 512, 512)


@dataclass
class DropPathState:
    """Drop-path mode shared by all joins of one network for one forward pass.

    The network's first block calls ``start_pass``; the first join that trains in that pass draws the
    mode (so a pass in eval mode, or through frozen blocks only, draws nothing).
    """

    columns: int
    drop_path: float
    global_drop_ratio: float
    global_column: int | None = None
    drawn: bool = False

    def start_pass(self) -> None:
        """Forget the previous pass's mode."""
        self.drawn = False

    def column_for_pass(self) -> int | None:
        """This pass's global column (``None`` for a local pass), drawn on first use."""
        if not self.drawn:
            use_global = torch.rand(()).item() < self.global_drop_ratio
            self.global_column = int(torch.randint(self.columns, ())) if use_global else None
            self.drawn = True
        return self.global_column


class Join(nn.Module):
    """Element-wise mean of the inputs of one join, with drop-path in train mode.

    Inputs are ordered deepest column first, so input ``j`` belongs to column ``j``.
    """

    def __init__(self, state: DropPathState) -> None:
        super().__init__()
        self.state = state

    def forward(self, inputs: list[Tensor]) -> Tensor:
        """Mean of the kept inputs (all of them in eval mode)."""
        if not self.training or len(inputs) == 1:
            return torch.stack(inputs).mean(0)
        column = self.state.column_for_pass()
        if column is not None:
            return inputs[column] if column < len(inputs) else torch.stack(inputs).mean(0)
        keep = torch.rand(len(inputs)) >= self.state.drop_path
        if not keep.any():
            keep[torch.randint(len(inputs), ())] = True
        return torch.stack([x for x, kept in zip(inputs, keep.tolist(), strict=True) if kept]).mean(0)


class FractalExpansion(nn.Module):
    """``f_C``: returns the unjoined outputs of its C columns, deepest first."""

    def __init__(self, columns: int, in_channels: int, out_channels: int, state: DropPathState) -> None:
        super().__init__()
        self.shallow = conv_bn_relu(in_channels, out_channels, 3)
        self.columns = columns
        if columns > 1:
            self.first = FractalExpansion(columns - 1, in_channels, out_channels, state)
            self.join = Join(state)
            self.second = FractalExpansion(columns - 1, out_channels, out_channels, state)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Column outputs for input ``x``: ``f_{C-1}(join(f_{C-1}(x)))`` columns, then ``conv(x)``."""
        if self.columns == 1:
            return [self.shallow(x)]
        return [*self.second(self.join(self.first(x))), self.shallow(x)]


class FractalBlock(nn.Module):
    """One fractal block: expansion -> join of all columns -> 2x2 max pooling.

    The network's first block (``starts_pass``) starts a new drop-path pass.
    """

    def __init__(
        self, columns: int, in_channels: int, out_channels: int, state: DropPathState, starts_pass: bool
    ) -> None:
        super().__init__()
        self.expansion = FractalExpansion(columns, in_channels, out_channels, state)
        self.join = Join(state)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.state = state
        self.starts_pass = starts_pass

    def forward(self, x: Tensor) -> Tensor:
        """Block output, half the input's size (rounded up)."""
        if self.starts_pass:
            self.state.start_pass()
        return self.pool(self.join(self.expansion(x)))


def expansion_depth(expansion: FractalExpansion) -> int:
    """Convolutions on the deepest path of ``expansion``."""
    if expansion.columns == 1:
        return 1
    return expansion_depth(expansion.first) + expansion_depth(expansion.second)


class FractalNet(nn.Module):
    """FractalNet classifier: one block per entry of ``channels`` -> global average pooling -> ``classifier``."""

    def __init__(
        self,
        columns: int = 3,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        drop_path: float = 0.15,
        global_drop_ratio: float = 0.5,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        if columns < 1 or not 1 <= len(channels) <= MAX_LEVEL:
            raise ValueError(
                f"FractalNet needs columns >= 1 and 1..{MAX_LEVEL} blocks, got {columns}, {channels}"
            )
        if not (0.0 <= drop_path < 1.0 and 0.0 <= global_drop_ratio <= 1.0):
            raise ValueError(
                f"drop_path must be in [0, 1) and global_drop_ratio in [0, 1], got {drop_path}, {global_drop_ratio}"
            )
        self.drop_state = DropPathState(columns, drop_path, global_drop_ratio)
        in_channels = [3, *channels[:-1]]
        self.blocks = nn.Sequential(
            *(
                FractalBlock(columns, c_in, c_out, self.drop_state, starts_pass=index == 0)
                for index, (c_in, c_out) in enumerate(zip(in_channels, channels, strict=True))
            )
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels[-1], num_classes)

    def depth(self) -> int:
        """Convolutions on the deepest path through all blocks (``blocks * 2**(columns - 1)``)."""
        return sum(expansion_depth(block.expansion) for block in self.blocks)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits [B, num_classes] of images ``x`` [B,3,H,W]."""
        return self.classifier(self.avgpool(self.blocks(x)).flatten(1))


def make_fractalnet_trunk(
    arch: str,
    *,
    num_classes: int,
    pretrained: str | None,
    columns: int,
    channels: Sequence[int],
    drop_path: float,
    global_drop_ratio: float,
) -> tuple[nn.Module, TrunkSpec]:
    """Our FractalNet (untrained) and its levels: block k emits ``c<k>``."""
    trunk = FractalNet(columns, tuple(channels), drop_path, global_drop_ratio, num_classes)
    steps = tuple(Step(f"blocks.{k}", 2 ** (k + 1), f"c{k + 1}") for k in range(len(channels)))
    level_channels = {f"c{k + 1}": c for k, c in enumerate(channels)}
    return trunk, TrunkSpec(steps=steps, channels=level_channels, head=("avgpool", "classifier"))


@BACKBONES.register("fractalnet")
def build_fractalnet(
    *,
    columns: int = 3,
    channels: Sequence[int] = DEFAULT_CHANNELS,
    drop_path: float = 0.15,
    global_drop_ratio: float = 0.5,
    out_levels: Sequence[str] | None = None,
    frozen_stages: int = 0,
    norm_layer: str = "bn",
    norm_eps: float | None = None,
    pretrained: str | None = None,
    classifier: bool = False,
    num_classes: int = 1000,
) -> Backbone:
    """FractalNet backbone with ``len(channels)`` blocks of ``columns`` columns (depth B * 2**(C-1)).

    ``drop_path``: local drop probability per join input; ``global_drop_ratio``: share of global passes.
    The other options are ``build_backbone``'s.
    """
    make_trunk = partial(
        make_fractalnet_trunk,
        "fractalnet",
        columns=columns,
        channels=channels,
        drop_path=drop_path,
        global_drop_ratio=global_drop_ratio,
    )
    return build_backbone(
        "fractalnet",
        make_trunk,
        out_levels=out_levels,
        frozen_stages=frozen_stages,
        norm_layer=norm_layer,
        norm_eps=norm_eps,
        pretrained=pretrained,
        classifier=classifier,
        num_classes=num_classes,
    )
