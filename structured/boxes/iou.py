"""Overlap measures: box IoU and its GIoU / DIoU / CIoU variants, mask IoU (dense and RLE), polygon IoU.

Box functions take ``xyxy`` floating tensors and keep dtype and device (half precision is computed in
float32 and returned in half). The pairwise ones map ``[N, 4]`` and ``[M, 4]`` to ``[N, M]`` and agree
with ``torchvision.ops`` on boxes of positive area; the elementwise ones map broadcastable ``[..., 4]``
pairs to ``[...]`` and are meant for losses (differentiable, no NaN gradients).

A degenerate box (``x2 < x1`` or ``y2 < y1``) is treated as empty: it is collapsed onto its ``x1``/``y1``
edge (zero width/height), so its IoU with anything is 0, and a ratio whose denominator is 0 (the union
of two empty boxes, the enclosing box of two equal points) is taken as 0, never NaN. GIoU and DIoU stay
in [-1, 1] for any input.

Mask IoU binarises dense masks (``bool``, integers: non-zero; floats: ``> 0.5``) and counts overlaps with
one matrix product. RLE IoU follows pycocotools (crowd regions: intersection over the first mask's area).
Polygon IoU uses shapely 2's vectorised functions and repairs self-intersecting polygons with
``shapely.make_valid``. pycocotools and shapely are imported inside the RLE and polygon functions, so
the box functions (and ``import structured.boxes``) do not load them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from structured.boxes.formats import box_area, check_boxes

EXACT_FLOAT32_PIXELS = 2**24


def _check_pairwise_boxes(boxes1: Tensor, boxes2: Tensor) -> None:
    for boxes, name in ((boxes1, "boxes1"), (boxes2, "boxes2")):
        check_boxes(boxes, name)
        if boxes.ndim != 2:
            raise ValueError(f"{name} must have shape [N, 4], got {list(boxes.shape)}")


def _check_broadcast_boxes(boxes1: Tensor, boxes2: Tensor) -> None:
    check_boxes(boxes1, "boxes1")
    check_boxes(boxes2, "boxes2")
    try:
        torch.broadcast_shapes(boxes1.shape, boxes2.shape)
    except RuntimeError as error:
        raise ValueError(
            f"boxes1 {list(boxes1.shape)} and boxes2 {list(boxes2.shape)} must broadcast to a common [..., 4]"
        ) from error


def _prepared(boxes: Tensor) -> Tensor:
    """Half precision upcast to float32; degenerate boxes collapsed to zero width/height at ``(x1, y1)``."""
    if boxes.dtype in (torch.float16, torch.bfloat16):
        boxes = boxes.float()
    return torch.cat((boxes[..., :2], torch.maximum(boxes[..., 2:], boxes[..., :2])), dim=-1)


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` where ``denominator > 0``, else 0 (``numerator`` is 0 there)."""
    return numerator / torch.where(denominator > 0, denominator, 1)


def _intersection_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    top_left = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    overlap = (bottom_right - top_left).clamp(min=0)
    intersection = overlap[..., 0] * overlap[..., 1]
    return intersection, box_area(boxes1) + box_area(boxes2) - intersection


def _enclosing_sides(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    top_left = torch.minimum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
    return bottom_right - top_left


def _iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    intersection, union = _intersection_union(boxes1, boxes2)
    return _safe_divide(intersection, union)


def _generalized_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    intersection, union = _intersection_union(boxes1, boxes2)
    sides = _enclosing_sides(boxes1, boxes2)
    enclosing_area = sides[..., 0] * sides[..., 1]
    return _safe_divide(intersection, union) - _safe_divide(enclosing_area - union, enclosing_area)


def _centre_distance_penalty(boxes1: Tensor, boxes2: Tensor, eps: float) -> Tensor:
    centre_offset = (boxes1[..., :2] + boxes1[..., 2:]) / 2 - (boxes2[..., :2] + boxes2[..., 2:]) / 2
    diagonal_squared = _enclosing_sides(boxes1, boxes2).square().sum(dim=-1)
    return _safe_divide(centre_offset.square().sum(dim=-1), diagonal_squared + eps)


def _aspect_angle(boxes: Tensor) -> Tensor:
    """``atan(width / height)``, 0 for a point (gradient-safe)."""
    widths, heights = (boxes[..., 2:] - boxes[..., :2]).unbind(-1)
    is_point = (widths == 0) & (heights == 0)
    return torch.atan2(widths, torch.where(is_point, 1, heights))


def _complete_iou(boxes1: Tensor, boxes2: Tensor, eps: float) -> Tensor:
    iou = _iou(boxes1, boxes2)
    aspect_penalty = (4 / math.pi**2) * (_aspect_angle(boxes1) - _aspect_angle(boxes2)).square()
    with torch.no_grad():
        trade_off = aspect_penalty / (1 - iou + aspect_penalty + eps)
    return iou - _centre_distance_penalty(boxes1, boxes2, eps) - trade_off * aspect_penalty


def _pairwise(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    _check_pairwise_boxes(boxes1, boxes2)
    return _prepared(boxes1)[:, None, :], _prepared(boxes2)[None, :, :]  # [N,1,4], [1,M,4]


def _result_dtype(boxes1: Tensor, boxes2: Tensor) -> torch.dtype:
    return torch.promote_types(boxes1.dtype, boxes2.dtype)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU ``[N, M]`` of ``xyxy`` boxes ``[N, 4]`` and ``[M, 4]``."""
    return _iou(*_pairwise(boxes1, boxes2)).to(_result_dtype(boxes1, boxes2))


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalized IoU ``[N, M]`` (IoU minus the empty fraction of the enclosing box), in [-1, 1]."""
    return _generalized_iou(*_pairwise(boxes1, boxes2)).to(_result_dtype(boxes1, boxes2))


def distance_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise distance IoU ``[N, M]``: IoU minus squared centre distance over squared enclosing diagonal."""
    first, second = _pairwise(boxes1, boxes2)
    return (_iou(first, second) - _centre_distance_penalty(first, second, eps)).to(
        _result_dtype(boxes1, boxes2)
    )


def complete_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise complete IoU ``[N, M]``: distance IoU minus a weighted aspect-ratio mismatch."""
    return _complete_iou(*_pairwise(boxes1, boxes2), eps).to(_result_dtype(boxes1, boxes2))


def elementwise_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU ``[...]`` of corresponding ``xyxy`` boxes ``[..., 4]`` (leading dims broadcast)."""
    _check_broadcast_boxes(boxes1, boxes2)
    return _iou(_prepared(boxes1), _prepared(boxes2)).to(_result_dtype(boxes1, boxes2))


def elementwise_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU ``[...]`` of corresponding ``xyxy`` boxes ``[..., 4]`` (leading dims broadcast)."""
    _check_broadcast_boxes(boxes1, boxes2)
    return _generalized_iou(_prepared(boxes1), _prepared(boxes2)).to(_result_dtype(boxes1, boxes2))


def _flat_binary_masks(masks: Tensor, name: str) -> Tensor:
    if not isinstance(masks, Tensor) or masks.ndim != 3:
        shape = list(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"{name} must be a tensor of shape [N, H, W], got {shape}")
    if masks.dtype == torch.bool:
        binary = masks
    elif masks.is_floating_point():
        binary = masks > 0.5
    else:
        binary = masks != 0
    return binary.flatten(1)  # [N, H*W]


def mask_iou(masks1: Tensor, masks2: Tensor) -> Tensor:
    """Pairwise IoU ``[N, M]`` of dense masks ``[N, H, W]`` and ``[M, H, W]``.

    Masks are binarised (bool; integers: non-zero; floats: ``> 0.5``). The result is float32 (float64
    when either input is float64); two empty masks have IoU 0.
    """
    flat1 = _flat_binary_masks(masks1, "masks1")
    flat2 = _flat_binary_masks(masks2, "masks2")
    if masks1.shape[1:] != masks2.shape[1:]:
        raise ValueError(
            f"masks1 and masks2 must have the same [H, W], got {list(masks1.shape[1:])} and "
            f"{list(masks2.shape[1:])}"
        )
    exact_dtype = torch.float32 if flat1.shape[1] <= EXACT_FLOAT32_PIXELS else torch.float64
    flat1, flat2 = flat1.to(exact_dtype), flat2.to(exact_dtype)
    intersection = flat1 @ flat2.T  # [N, M] pixel counts
    union = flat1.sum(dim=1)[:, None] + flat2.sum(dim=1)[None, :] - intersection
    result_dtype = torch.float64 if torch.float64 in (masks1.dtype, masks2.dtype) else torch.float32
    return _safe_divide(intersection, union).to(result_dtype)


def _compressed_rles(rles: Sequence[dict], name: str) -> list[dict]:
    from pycocotools import mask as coco_mask

    compressed = []
    for index, rle in enumerate(rles):
        if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
            raise ValueError(
                f"{name}[{index}] must be a COCO RLE dict with 'size' and 'counts', got {rle!r:.80}"
            )
        if isinstance(rle["counts"], list):
            height, width = rle["size"]
            rle = coco_mask.frPyObjects(rle, height, width)
        compressed.append(rle)
    return compressed


def _check_same_rle_size(rles: list[dict]) -> None:
    sizes = {tuple(rle["size"]) for rle in rles}
    if len(sizes) > 1:
        raise ValueError(f"all RLE masks must have the same 'size' [H, W], got {sorted(sizes)}")


def rle_iou(rles1: Sequence[dict], rles2: Sequence[dict], iscrowd: Sequence[bool] | None = None) -> Tensor:
    """Pairwise IoU ``[N, M]`` (float64) of COCO RLE masks, computed by ``pycocotools.mask.iou``.

    ``rles1`` are detections, ``rles2`` ground truths; RLEs may be compressed (``counts`` bytes or str) or
    uncompressed (``counts`` list). Where ``iscrowd[j]`` is true, column ``j`` is the intersection over
    the area of the ``rles1`` mask (COCO's rule for crowd regions).
    """
    from pycocotools import mask as coco_mask

    first = _compressed_rles(rles1, "rles1")
    second = _compressed_rles(rles2, "rles2")
    _check_same_rle_size(first + second)
    crowd = [0] * len(second) if iscrowd is None else [int(bool(flag)) for flag in iscrowd]
    if len(crowd) != len(second):
        raise ValueError(f"iscrowd must have one flag per rles2 mask ({len(second)}), got {len(crowd)}")
    if not first or not second:
        return torch.zeros(len(first), len(second), dtype=torch.float64)
    return torch.from_numpy(np.asarray(coco_mask.iou(first, second, crowd), dtype=np.float64))


def _polygon_vertex_arrays(polygons: Tensor | np.ndarray | Sequence, name: str) -> list[np.ndarray]:
    if isinstance(polygons, Tensor):
        polygons = polygons.detach().cpu().double().numpy()
    if isinstance(polygons, np.ndarray) and polygons.ndim == 2:
        if polygons.shape[1] % 2:
            raise ValueError(f"{name} must have shape [N, 2K] or [N, K, 2], got {list(polygons.shape)}")
        polygons = polygons.reshape(len(polygons), polygons.shape[1] // 2, 2)
    vertices = [np.asarray(polygon, dtype=np.float64) for polygon in polygons]
    for index, polygon in enumerate(vertices):
        if polygon.ndim != 2 or polygon.shape[1] != 2 or len(polygon) < 3:
            raise ValueError(f"{name}[{index}] must be K >= 3 vertices of shape (K, 2), got {polygon.shape}")
        if not np.isfinite(polygon).all():
            raise ValueError(f"{name}[{index}] has non-finite coordinates")
    return vertices


def _valid_polygons(polygons: Tensor | np.ndarray | Sequence, name: str) -> np.ndarray:
    import shapely

    vertices = _polygon_vertex_arrays(polygons, name)
    coordinates = np.concatenate(vertices) if vertices else np.zeros((0, 2))
    ring_offsets = np.cumsum([0, *(len(polygon) for polygon in vertices)])
    polygon_offsets = np.arange(len(vertices) + 1)  # one ring (the exterior) per polygon
    geometries = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, coordinates, (ring_offsets, polygon_offsets)
    )
    invalid = ~shapely.is_valid(geometries)
    geometries[invalid] = shapely.make_valid(geometries[invalid])
    return geometries


def polygon_iou(
    polygons1: Tensor | np.ndarray | Sequence, polygons2: Tensor | np.ndarray | Sequence
) -> Tensor:
    """Pairwise IoU ``[N, M]`` of polygons.

    Each argument is a ``[N, 2K]`` or ``[N, K, 2]`` tensor/array (for example ``[N, 8]`` quadrilateral
    corners ``x1, y1, ..., x4, y4``) or a sequence of ``(K, 2)`` vertex arrays of varying ``K``.
    Self-intersecting polygons are repaired with ``shapely.make_valid``. Only the pairs whose shapes
    intersect are computed (STR-tree query). The result is float64 on the CPU, or the dtype and device of
    ``polygons1`` when it is a floating tensor.
    """
    import shapely

    geometries1 = _valid_polygons(polygons1, "polygons1")
    geometries2 = _valid_polygons(polygons2, "polygons2")
    intersection = np.zeros((len(geometries1), len(geometries2)))
    if len(geometries1) and len(geometries2):
        rows, columns = shapely.STRtree(geometries2).query(geometries1, predicate="intersects")
        overlap = shapely.intersection(geometries1[rows], geometries2[columns])
        intersection[rows, columns] = shapely.area(overlap)
    union = shapely.area(geometries1)[:, None] + shapely.area(geometries2)[None, :] - intersection
    iou = torch.from_numpy(np.divide(intersection, union, out=np.zeros_like(union), where=union > 0))
    if isinstance(polygons1, Tensor) and polygons1.is_floating_point():
        return iou.to(dtype=polygons1.dtype, device=polygons1.device)
    return iou
