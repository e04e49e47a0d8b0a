"""Anchor boxes for region proposal networks, on one or several feature levels.

An ``AnchorGenerator`` holds, for each feature level, a set of anchor sizes (square root of the anchor
area, in input pixels) and aspect ratios (height / width). Each level gets ``len(sizes) * len(ratios)``
*cell anchors* centred on the origin, with corners rounded to whole pixels; the anchors of a level
are the cell anchors shifted to every location of the feature map, ``stride`` pixels apart, where the
stride is the padded image size divided (integer division) by the feature map size.

Contract: ``generator(feature_sizes, image_size)`` returns one ``[H*W*A, 4]`` ``xyxy`` tensor per level,
ordered by row, then column, then cell anchor (ratio-major, size-minor) — the order in which an RPN
head's ``[A, H, W]`` outputs are flattened after moving ``A`` last. Results are cached per
(feature sizes, image size, dtype, device), so a batch of the same padded size costs nothing after
the first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

_CACHE_SIZE = 16


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """Origin-centred ``[len(ratios) * len(sizes), 4]`` anchors, ratio-major, corners rounded to pixels."""
    sizes_t = torch.as_tensor(sizes, dtype=torch.float32)
    ratios_t = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    height_factors = torch.sqrt(ratios_t)
    width_factors = 1 / height_factors
    widths = (width_factors[:, None] * sizes_t[None, :]).reshape(-1)
    heights = (height_factors[:, None] * sizes_t[None, :]).reshape(-1)
    return (torch.stack((-widths, -heights, widths, heights), dim=1) / 2).round()


def grid_anchors(cells: Tensor, grid_size: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """``cells`` ``[A, 4]`` shifted to every cell of a ``(H, W)`` grid with ``(stride_y, stride_x)``."""
    grid_height, grid_width = grid_size
    stride_y, stride_x = stride
    shifts_x = torch.arange(grid_width, dtype=cells.dtype, device=cells.device) * stride_x
    shifts_y = torch.arange(grid_height, dtype=cells.dtype, device=cells.device) * stride_y
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)
    return (shifts + cells[None]).reshape(-1, 4)  # [H*W, A, 4] -> [H*W*A, 4]


def _as_per_level(values: Sequence, name: str) -> tuple[tuple[float, ...], ...]:
    if isinstance(values, (int, float)) or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty sequence with one sequence per level, got {values!r}")
    levels = tuple(tuple(float(v) for v in level) for level in values)
    if any(len(level) == 0 or min(level) <= 0 for level in levels):
        raise ValueError(
            f"{name} must hold non-empty sequences of positive numbers per level, got {values!r}"
        )
    return levels


class AnchorGenerator(nn.Module):
    """Anchors for each feature level from per-level sizes and aspect ratios (height / width).

    Args:
        sizes: one sequence of anchor sizes per level, e.g. ``((32,), (64,), (128,), (256,), (512,))``.
        aspect_ratios: one sequence of ratios per level, e.g. ``((0.5, 1.0, 2.0),) * 5``.
    """

    def __init__(self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]]) -> None:
        super().__init__()
        self.sizes = _as_per_level(sizes, "sizes")
        self.aspect_ratios = _as_per_level(aspect_ratios, "aspect_ratios")
        if len(self.sizes) != len(self.aspect_ratios):
            raise ValueError(
                f"sizes and aspect_ratios must have one entry per level, got {len(self.sizes)} and "
                f"{len(self.aspect_ratios)}"
            )
        self.cells = [cell_anchors(s, r) for s, r in zip(self.sizes, self.aspect_ratios, strict=True)]
        self._cache: OrderedDict[tuple, list[Tensor]] = OrderedDict()

    @property
    def num_levels(self) -> int:
        """Number of feature levels the generator expects."""
        return len(self.sizes)

    def num_anchors_per_location(self) -> list[int]:
        """``A`` for each level: number of sizes times number of aspect ratios."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios, strict=True)]

    def forward(
        self,
        feature_sizes: Sequence[tuple[int, int]],
        image_size: tuple[int, int],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> list[Tensor]:
        """Anchors ``[H*W*A, 4]`` per level for feature maps of ``feature_sizes`` on a padded ``image_size``."""
        if len(feature_sizes) != self.num_levels:
            raise ValueError(
                f"got {len(feature_sizes)} feature maps but the anchor generator has {self.num_levels} levels "
                f"(sizes {self.sizes})"
            )
        feature_sizes = tuple((int(h), int(w)) for h, w in feature_sizes)
        image_size = (int(image_size[0]), int(image_size[1]))
        key = (feature_sizes, image_size, dtype, str(device))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        anchors = [
            grid_anchors(
                cells.to(dtype=dtype, device=device),
                size,
                (image_size[0] // size[0], image_size[1] // size[1]),
            )
            for cells, size in zip(self.cells, feature_sizes, strict=True)
        ]
        self._cache[key] = anchors
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return anchors
