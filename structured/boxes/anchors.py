"""Anchor boxes: RPN anchors on one or several feature levels, and SSD's default boxes.

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

``DefaultBoxGenerator`` makes SSD's default boxes (Liu et al. 2016, section 2.2). Map ``k`` of ``m`` has
scale ``s_k`` (linear from ``s_min`` to ``s_max`` over the maps, then ``1.0`` appended for the last map's
extra box, unless ``scales`` lists all ``m + 1``), and at every cell the boxes ``(s_k, s_k)``,
``(s'_k, s'_k)`` with ``s'_k = sqrt(s_k * s_(k+1))``, and ``(s_k sqrt(a), s_k / sqrt(a))`` and its transpose
for each aspect ratio ``a`` of the map: ``2 + 2 * len(ratios)`` boxes per cell. Centres are
``(i + 0.5) / f_k`` with ``f_k = image side / step`` when ``steps`` are given, else the map's size; widths
and heights are fractions of the image, clipped to [0, 1] with ``clip``. ``generator(feature_sizes,
image_size)`` returns all maps' boxes concatenated, ``[sum H*W*A, 4]`` ``xyxy`` in the image's pixels,
ordered by map, row, column, box — the order of an SSD head's ``[A, H, W]`` outputs flattened with ``A``
last. This is torchvision's ``DefaultBoxGenerator`` (a test compares every box of its two SSD models).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from structured.boxes.formats import box_convert, denormalize_boxes

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

    def _anchors(self, feature_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int], dtype: torch.dtype,
                 device: torch.device | str) -> list[Tensor]:
        return [
            grid_anchors(cells.to(dtype=dtype, device=device), size, (image_size[0] // size[0], image_size[1] // size[1]))
            for cells, size in zip(self.cells, feature_sizes, strict=True)
        ]

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
        if torch.jit.is_tracing():  # sizes are traced tensors: anchors computed in the graph (structured.export)
            return self._anchors(feature_sizes, image_size, dtype, device)
        feature_sizes = tuple((int(h), int(w)) for h, w in feature_sizes)
        image_size = (int(image_size[0]), int(image_size[1]))
        key = (feature_sizes, image_size, dtype, str(device))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        anchors = self._anchors(feature_sizes, image_size, dtype, device)
        self._cache[key] = anchors
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return anchors


def linear_scales(num_maps: int, min_scale: float, max_scale: float) -> tuple[float, ...]:
    """SSD's ``s_k``: ``num_maps`` scales linear from ``min_scale`` to ``max_scale``, then ``1.0``."""
    if num_maps == 1:
        return (min_scale, max_scale)
    step = (max_scale - min_scale) / (num_maps - 1)
    return (*(min_scale + step * k for k in range(num_maps)), 1.0)


def default_box_sizes(scale: float, next_scale: float, aspect_ratios: Sequence[float]) -> Tensor:
    """``[2 + 2 * len(aspect_ratios), 2]`` normalised ``(width, height)`` of the boxes of one map's cell."""
    extra = math.sqrt(scale * next_scale)
    sizes = [[scale, scale], [extra, extra]]
    for ratio in aspect_ratios:
        root = math.sqrt(ratio)
        sizes.extend([[scale * root, scale / root], [scale / root, scale * root]])
    return torch.as_tensor(sizes, dtype=torch.float32)


class DefaultBoxGenerator(nn.Module):
    """SSD default boxes for a set of feature maps (see the module docstring).

    Args:
        aspect_ratios: per map, the ratios ``a`` (each adds the boxes ``a`` and ``1 / a``), e.g. ``[[2], [2, 3]]``.
        min_scale, max_scale: ``s_min`` and ``s_max`` of the linear scales (used when ``scales`` is ``None``).
        scales: ``m + 1`` explicit scales instead (the last one only sizes the last map's extra box).
        steps: per map, the pixel distance between cell centres on the image (``None``: image / map size).
        clip: clip the normalised widths and heights to [0, 1].
    """

    def __init__(
        self,
        aspect_ratios: Sequence[Sequence[float]],
        min_scale: float = 0.15,
        max_scale: float = 0.9,
        scales: Sequence[float] | None = None,
        steps: Sequence[float] | None = None,
        clip: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(aspect_ratios, (int, float)) or len(aspect_ratios) == 0:
            raise ValueError(f"aspect_ratios must hold one sequence of ratios per feature map, got {aspect_ratios!r}")
        self.aspect_ratios = tuple(tuple(float(ratio) for ratio in ratios) for ratios in aspect_ratios)
        num_maps = len(self.aspect_ratios)
        if any(ratio <= 0 for ratios in self.aspect_ratios for ratio in ratios):
            raise ValueError(f"aspect ratios must be positive, got {aspect_ratios!r}")
        if scales is None:
            if not 0 < min_scale <= max_scale:
                raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale} and {max_scale}")
            scales = linear_scales(num_maps, min_scale, max_scale)
        if len(scales) != num_maps + 1 or min(scales) <= 0:
            raise ValueError(f"scales must be {num_maps + 1} positive numbers (one per map, plus one), got {scales!r}")
        if steps is not None and (len(steps) != num_maps or min(steps) <= 0):
            raise ValueError(f"steps must be {num_maps} positive numbers (one per map), got {steps!r}")
        self.scales = tuple(float(scale) for scale in scales)
        self.steps = None if steps is None else tuple(float(step) for step in steps)
        self.clip = clip
        self.box_sizes = [
            default_box_sizes(self.scales[k], self.scales[k + 1], self.aspect_ratios[k]) for k in range(num_maps)
        ]
        self._cache: OrderedDict[tuple, Tensor] = OrderedDict()

    @property
    def num_maps(self) -> int:
        """Number of feature maps the generator expects."""
        return len(self.aspect_ratios)

    def num_anchors_per_location(self) -> list[int]:
        """Boxes per cell of each map: ``2 + 2 * len(aspect_ratios)``."""
        return [2 + 2 * len(ratios) for ratios in self.aspect_ratios]

    def normalized_boxes(self, feature_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int]) -> Tensor:
        """All maps' default boxes ``[sum H*W*A, 4]`` as normalised ``cxcywh``."""
        boxes = []
        for k, (height, width) in enumerate(feature_sizes):
            cells_y, cells_x = (height, width) if self.steps is None else (
                image_size[0] / self.steps[k], image_size[1] / self.steps[k])
            centre_x = (torch.arange(width) + 0.5) / cells_x
            centre_y = (torch.arange(height) + 0.5) / cells_y
            grid_y, grid_x = torch.meshgrid(centre_y.float(), centre_x.float(), indexing="ij")
            sizes = self.box_sizes[k].clamp(0, 1) if self.clip else self.box_sizes[k]
            centres = torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1)  # [H*W, 2]
            per_cell = torch.cat((centres[:, None].expand(-1, len(sizes), 2),
                                  sizes[None].expand(len(centres), -1, 2)), dim=-1)  # [H*W, A, 4]
            boxes.append(per_cell.reshape(-1, 4))
        return torch.cat(boxes)

    def forward(
        self,
        feature_sizes: Sequence[tuple[int, int]],
        image_size: tuple[int, int],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Default boxes ``[sum H*W*A, 4]`` xyxy in pixels of an ``image_size`` ``(height, width)`` input."""
        if len(feature_sizes) != self.num_maps:
            raise ValueError(f"got {len(feature_sizes)} feature maps but the default boxes are set for "
                             f"{self.num_maps} (aspect ratios {self.aspect_ratios})")
        feature_sizes = tuple((int(h), int(w)) for h, w in feature_sizes)
        image_size = (int(image_size[0]), int(image_size[1]))
        key = (feature_sizes, image_size, dtype, str(device))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        normalized = box_convert(self.normalized_boxes(feature_sizes, image_size), "cxcywh", "xyxy")
        boxes = denormalize_boxes(normalized, image_size).to(dtype=dtype, device=device)
        self._cache[key] = boxes
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return boxes
