"""Non-maximum suppression: one API for every device.

``nms`` and ``batched_nms`` return exactly what ``torchvision.ops.nms`` / ``torchvision.ops.batched_nms``
return: the indices of the kept boxes, int64, by decreasing score, ties broken by the lower index.
A box is suppressed by a kept box of higher rank when their IoU is *strictly* greater than
``iou_threshold``; degenerate boxes (zero or negative width or height) never suppress and are never
suppressed.

Kernels are chosen by device type. ``register_nms_kernel("cuda", kernel)`` is the seam where a GPU
kernel plugs in; devices without a registered kernel use torchvision's op for that device.

On the CPU the kernel is chosen by problem size. torchvision's kernel compares every kept box with
every later box, O(kept x N) scalar work, which is cheap for small or heavily overlapping sets but
grows quadratically for large, spread-out sets. For those the sparse kernel here finds the
overlapping pairs with a spatial grid, computes their IoU with the same float arithmetic as
torchvision (so every comparison comes out the same), and resolves the greedy order over that sparse
"suppresses" graph in a few vectorised rounds.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torchvision
from torch import Tensor

from structured.boxes.formats import has_nan

NmsKernel = Callable[[Tensor, Tensor, float], Tensor]

SPARSE_MIN_BOXES = 2000
"""Below this many boxes torchvision's kernel is faster than building the overlap graph."""

PAIR_BUDGET_PER_BOX = 50
"""Candidate pairs allowed per box before the sparse kernel gives way to torchvision's (dense sets)."""

CORE_MARGIN = 1e-3
"""Relative slack on the core size, far above the float rounding of an IoU."""

GRID_ENTRIES_PER_BOX = 4
"""Grid cells are grown until the boxes cover at most this many cells each on average."""

PARALLEL_ROUNDS = 24
"""Vectorised resolution rounds before the remaining chain is resolved one box at a time."""

COORDINATE_TRICK_MAX_ELEMENTS = 4000
"""torchvision's ``batched_nms`` offsets boxes per class up to this ``boxes.numel()`` on the CPU."""

_DEVICE_KERNELS: dict[str, NmsKernel] = {}


def register_nms_kernel(device_type: str, kernel: NmsKernel) -> None:
    """Use ``kernel(boxes, scores, iou_threshold) -> keep`` for tensors on ``device_type`` (e.g. "cuda")."""
    _DEVICE_KERNELS[device_type] = kernel


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices (int64) of the ``xyxy`` ``boxes [N, 4]`` kept by greedy NMS, by decreasing ``scores [N]``."""
    _check_nms_inputs(boxes, scores, iou_threshold)
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    return _kernel_for(boxes)(boxes, scores, float(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS applied independently within each category ``idxs [N]``; indices by decreasing score."""
    _check_nms_inputs(boxes, scores, iou_threshold)
    _check_idxs(idxs, boxes)
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    if boxes.device.type != "cpu":
        return _batched_nms_by_class(boxes, scores, idxs, float(iou_threshold))
    if boxes.numel() <= COORDINATE_TRICK_MAX_ELEMENTS:
        return _batched_nms_by_offset(boxes, scores, idxs, float(iou_threshold))
    keep = _sparse_nms(boxes, scores, float(iou_threshold), groups=idxs)
    if keep is None:
        return _batched_nms_by_class(boxes, scores, idxs, float(iou_threshold))
    return _sort_kept_by_score(keep, scores)


def _check_nms_inputs(boxes: Tensor, scores: Tensor, iou_threshold: float) -> None:
    if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4:
        shape = list(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be a tensor of shape [N, 4], got {shape}")
    if not boxes.is_floating_point():
        raise ValueError(f"boxes must be a floating-point tensor, got {boxes.dtype}")
    if not isinstance(scores, Tensor) or scores.shape != boxes.shape[:1]:
        shape = list(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a tensor of shape [{boxes.shape[0]}] (one per box), got {shape}")
    if scores.device != boxes.device:
        raise ValueError(f"scores are on {scores.device} but boxes on {boxes.device}; expected one device")
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, (int, float)):
        raise ValueError(f"iou_threshold must be a number, got {iou_threshold!r}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    if has_nan(boxes):
        raise ValueError("boxes contain NaN coordinates; expected finite numbers")
    if has_nan(scores):
        raise ValueError("scores contain NaN; expected finite numbers")


def _check_idxs(idxs: Tensor, boxes: Tensor) -> None:
    if not isinstance(idxs, Tensor) or idxs.shape != boxes.shape[:1]:
        shape = list(idxs.shape) if isinstance(idxs, Tensor) else type(idxs).__name__
        raise ValueError(f"idxs must be a tensor of shape [{boxes.shape[0]}] (one per box), got {shape}")
    if idxs.is_floating_point() or idxs.is_complex() or idxs.dtype == torch.bool:
        raise ValueError(f"idxs must be an integer tensor of category indices, got {idxs.dtype}")


def _kernel_for(boxes: Tensor) -> NmsKernel:
    device_type = boxes.device.type
    if device_type in _DEVICE_KERNELS:
        return _DEVICE_KERNELS[device_type]
    if device_type == "cpu":
        return _cpu_nms
    return torchvision.ops.nms


def _cpu_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    keep = _sparse_nms(boxes, scores, iou_threshold)
    if keep is None:
        return torchvision.ops.nms(boxes, scores, iou_threshold)
    return keep


def _batched_nms_by_offset(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Shift each category's boxes by ``idx * (max coordinate + 1)`` so categories never overlap."""
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def _batched_nms_by_class(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """One ``nms`` call per category."""
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for category in torch.unique(idxs):
        members = torch.where(idxs == category)[0]
        keep_mask[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    return _sort_kept_by_score(torch.where(keep_mask)[0], scores)


def _sort_kept_by_score(keep: Tensor, scores: Tensor) -> Tensor:
    """Kept indices by decreasing score, ordered exactly as torchvision's per-class ``batched_nms``."""
    keep = keep.sort().values
    return keep[scores[keep].sort(descending=True)[1]]


def _sparse_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, groups: Tensor | None = None) -> Tensor | None:
    """Greedy NMS over the sparse overlap graph; ``None`` when the set is too small or too dense for it."""
    num_boxes = boxes.shape[0]
    if (
        num_boxes < SPARSE_MIN_BOXES
        or boxes.dtype not in (torch.float32, torch.float64)
        or not torch.isfinite(boxes).all()
    ):
        return None
    order = torch.sort(scores, stable=True, descending=True).indices
    ranked_boxes = boxes[order].contiguous()
    ranked_groups = None if groups is None else groups[order].to(torch.int64)
    pairs = _candidate_pairs(ranked_boxes, ranked_groups, iou_threshold, PAIR_BUDGET_PER_BOX * num_boxes)
    if pairs is None:
        return None
    higher, lower = _suppressing_pairs(ranked_boxes, *pairs, iou_threshold)
    kept_ranks = _resolve_greedy(num_boxes, higher, lower)
    return order[kept_ranks]


def _candidate_pairs(
    boxes: Tensor, groups: Tensor | None, iou_threshold: float, pair_budget: int
) -> tuple[Tensor, Tensor] | None:
    """Pairs of box indices whose cores share a grid cell (and group): a superset of the suppressing pairs.

    IoU > t needs an overlap of more than t * max(w1, w2) along x (and likewise along y), so the
    centres are closer than (1 - t) * (w1 + w2) / 2: the *cores*, boxes shrunk about their centres by
    (1 - t) (plus a margin far above float rounding), must overlap. Each pair is reported once, in
    the cell holding the top-left corner of its cores' intersection.
    """
    x1, y1, x2, y2 = boxes.double().unbind(1)
    valid = torch.nonzero((x2 > x1) & (y2 > y1)).squeeze(1)
    if valid.numel() < 2:
        return valid[:0], valid[:0]
    shrink = min(1.0, 1.0 - iou_threshold + CORE_MARGIN)
    half_w, half_h = (x2 - x1) * (shrink / 2), (y2 - y1) * (shrink / 2)
    centre_x, centre_y = (x1 + x2) / 2, (y1 + y2) / 2
    core = torch.stack((centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h), dim=1)
    origin = core[valid, :2].amin(dim=0).repeat(2)
    cell = _grid_cell_size(2 * half_w[valid], 2 * half_h[valid])
    first_cell = ((core - origin) / cell).floor().long()  # [N, 4]: first x, first y, last x, last y
    cells_x, cells_y = (first_cell[valid, 2:].amax(dim=0) + 1).tolist()
    num_groups = 1 if groups is None else int(groups.max() - groups.min()) + 1
    if cells_x * cells_y * num_groups >= 2**62:
        return None
    entry_box, entry_x, entry_y = _grid_entries(valid, first_cell[valid])
    cell_key = entry_x * cells_y + entry_y
    if groups is not None:
        cell_key += (groups - groups.min())[entry_box] * (cells_x * cells_y)
    cell_key, sort_index = cell_key.sort()
    first, second = _pairs_within_runs(cell_key, pair_budget)
    if first is None:
        return None
    entry_box = entry_box[sort_index]
    box_a, box_b = entry_box[first], entry_box[second]
    keep = _cores_overlap(core, box_a, box_b)
    box_a, box_b, first = box_a[keep], box_b[keep], first[keep]
    pair_cell = sort_index[first]
    corner_x = torch.maximum(first_cell[box_a, 0], first_cell[box_b, 0])
    corner_y = torch.maximum(first_cell[box_a, 1], first_cell[box_b, 1])
    counted_here = (entry_x[pair_cell] == corner_x) & (entry_y[pair_cell] == corner_y)
    return box_a[counted_here], box_b[counted_here]


def _cores_overlap(core: Tensor, box_a: Tensor, box_b: Tensor) -> Tensor:
    """Whether the cores of the pairs overlap (touching counts) along both axes."""
    a_x1, a_y1, a_x2, a_y2 = core[box_a].unbind(1)
    b_x1, b_y1, b_x2, b_y2 = core[box_b].unbind(1)
    return (a_x1 <= b_x2) & (b_x1 <= a_x2) & (a_y1 <= b_y2) & (b_y1 <= a_y2)


def _grid_cell_size(widths: Tensor, heights: Tensor) -> Tensor:
    """A cell side about the median box side, grown until boxes cover few cells on average."""
    cell = torch.maximum(widths, heights).median().clamp(min=torch.finfo(torch.float64).tiny)
    budget = GRID_ENTRIES_PER_BOX * widths.numel()
    while True:
        covered = ((widths / cell).floor() + 2) * ((heights / cell).floor() + 2)
        if covered.sum() <= budget:
            return cell
        cell = cell * 2


def _grid_entries(valid: Tensor, cells: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(box, cell x, cell y) for every grid cell each valid box's core covers; ``cells`` [V, 4] ranges."""
    first_x, first_y, last_x, last_y = cells.unbind(1)
    span_y = last_y - first_y + 1
    counts = (last_x - first_x + 1) * span_y
    owner = torch.repeat_interleave(torch.arange(valid.numel()), counts)
    local = torch.arange(owner.numel()) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    span_y = span_y[owner]
    return valid[owner], first_x[owner] + local // span_y, first_y[owner] + local % span_y


def _pairs_within_runs(keys: Tensor, pair_budget: int) -> tuple[Tensor, Tensor] | tuple[None, None]:
    """All index pairs (i < j) of a sorted ``keys`` with ``keys[i] == keys[j]``; ``None`` over budget."""
    _, run_lengths = torch.unique_consecutive(keys, return_counts=True)
    run_ends = torch.repeat_interleave(run_lengths.cumsum(0), run_lengths)
    partners = run_ends - torch.arange(keys.numel()) - 1
    if int(partners.sum()) > pair_budget:
        return None, None
    first = torch.repeat_interleave(torch.arange(keys.numel()), partners)
    offset = torch.arange(first.numel()) - torch.repeat_interleave(partners.cumsum(0) - partners, partners)
    return first, first + 1 + offset


def _suppressing_pairs(boxes: Tensor, box_a: Tensor, box_b: Tensor, iou_threshold: float) -> tuple[Tensor, Tensor]:
    """(higher, lower) rank pairs whose IoU exceeds the threshold, in torchvision's float arithmetic."""
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    widths = (torch.minimum(x2[box_a], x2[box_b]) - torch.maximum(x1[box_a], x1[box_b])).clamp(min=0)
    heights = (torch.minimum(y2[box_a], y2[box_b]) - torch.maximum(y1[box_a], y1[box_b])).clamp(min=0)
    intersection = widths * heights
    iou = intersection / (areas[box_a] + areas[box_b] - intersection)
    suppresses = iou.double() > iou_threshold
    box_a, box_b = box_a[suppresses], box_b[suppresses]
    return torch.minimum(box_a, box_b), torch.maximum(box_a, box_b)


def _resolve_greedy(num_boxes: int, higher: Tensor, lower: Tensor) -> Tensor:
    """Ranks kept by greedy NMS given the pairs where ``higher`` would suppress ``lower``.

    A box is kept when none of its higher-ranked neighbours is kept. Each vectorised round settles
    every box whose higher neighbours are all settled; long chains finish one box at a time.
    """
    undecided, kept, suppressed = 0, 1, 2
    state = torch.zeros(num_boxes, dtype=torch.int8)
    for _ in range(PARALLEL_ROUNDS):
        state[lower[state[higher] == kept]] = suppressed
        live = (state[lower] == undecided) & (state[higher] == undecided)
        higher, lower = higher[live], lower[live]
        blocked = torch.zeros(num_boxes, dtype=torch.bool)
        blocked[lower] = True
        state[(state == undecided) & ~blocked] = kept
        if lower.numel() == 0:
            return torch.nonzero(state == kept).squeeze(1)
    return _resolve_sequentially(state, higher, lower)


def _resolve_sequentially(state: Tensor, higher: Tensor, lower: Tensor) -> Tensor:
    """Finish the greedy pass box by box over the still-undecided ranks."""
    state[lower[state[higher] == 1]] = 2
    higher_np, order = np.sort(higher.numpy(), kind="stable"), np.argsort(higher.numpy(), kind="stable")
    lower_np = lower.numpy()[order]
    is_kept = (state == 1).numpy().copy()
    is_suppressed = (state == 2).numpy().copy()
    undecided = np.flatnonzero(~is_kept & ~is_suppressed)
    starts = np.searchsorted(higher_np, undecided, side="left")
    ends = np.searchsorted(higher_np, undecided, side="right")
    for rank, start, end in zip(undecided.tolist(), starts.tolist(), ends.tolist(), strict=True):
        if is_suppressed[rank]:
            continue
        is_kept[rank] = True
        is_suppressed[lower_np[start:end]] = True
    return torch.from_numpy(np.flatnonzero(is_kept))
