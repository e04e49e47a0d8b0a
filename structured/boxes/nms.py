"""Non-maximum suppression: one API for every device.

``nms`` and ``batched_nms`` return exactly what ``torchvision.ops.nms`` / ``torchvision.ops.batched_nms``
return: the indices of the kept boxes, int64, by decreasing score, ties broken by the lower index.
A box is suppressed by a kept box of higher rank when their IoU is *strictly* greater than
``iou_threshold``; degenerate boxes (zero or negative width or height) never suppress and are never
suppressed.

Kernels are chosen by device type through ``register_nms_kernel(device_type, kernel, batched=...)``.
CUDA tensors go to the Triton kernels of ``structured.boxes.nms_triton`` (exact torchvision results;
``batched_nms`` is one launch over all categories); where Triton cannot be imported, and for float64
boxes, those use torchvision's CUDA ops. Other devices without a registered kernel use torchvision's op
for that device.

Every kernel receives boxes and scores of one dtype, float32 or float64 (``_in_kernel_dtypes``): fp16 and
bf16 boxes are widened to float32, so IoU is float32 for them on every device (torchvision's CPU kernel
refuses them), and scores of another dtype rank the boxes by their own values.

On the CPU, sets of fewer than ``SPARSE_MIN_BOXES`` go to torchvision's kernel, which compares every
kept box with every later box: O(kept x N) scalar work, cheap for small sets, quadratic for large ones.
Larger sets are ranked once (decreasing score, ties by index) and solved in steps (``_ranked_nms``).
Greedy NMS decides a box by the kept boxes ranked above it only, so each step settles the best
``max(PILOT_BOXES, N / PILOT_FRACTION_INVERSE)`` boxes exactly with torchvision's kernel, drops every
later box that one of their kept boxes suppresses in one vectorised IoU pass, and hands the survivors to
the next step (0.3-0.6 of torchvision's time on clustered and crowded sets, docs/benchmarks.md). Where
most boxes survive, the sparse kernel takes a step's whole set instead:

1. it shrinks every box about its centre to a *core* such that two boxes with IoU > t always have
   overlapping cores (``core_shrink``), and buckets the cores in a grid (per class);
2. evaluates, cell by cell, dense [cells, G, G] IoU matrices with torchvision's float arithmetic and
   threshold comparison, so every suppression decision comes out the same;
3. resolves the greedy order over the sparse "suppresses" graph in a few vectorised rounds.

It runs only where it is predicted to beat torchvision's kernel by ``SPARSE_COST_MARGIN`` (about what the
steps achieve). torchvision's time is about ``TORCHVISION_NS_PER_KEPT_PAIR`` x the fraction kept x the sum
of the squared class sizes (N^2 for one class), the fraction kept extrapolated from the step's exact result
on its best boxes (``_estimated_kept``); the sparse kernel's time is predicted from its IoU work, counted
once the grid is built, and the grid is built only where it costs a small share of torchvision's predicted
time. Both paths compute IoU in the operation order of torchvision's kernel (``_nms_iou``), so every
comparison with the threshold comes out as its own. ``bench/nms_cost_model.py`` measures both paths and
refits the constants on a machine.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

import numpy as np
import torch
import torchvision
from torch import Tensor

from structured.boxes import nms_triton
from structured.boxes.formats import has_nan

NmsKernel = Callable[[Tensor, Tensor, float], Tensor]
BatchedNmsKernel = Callable[[Tensor, Tensor, Tensor, float], Tensor]

SPARSE_MIN_BOXES = 2000
"""Below this many boxes torchvision's kernel is used: it is faster than building the overlap graph, and
ranking the boxes and settling the best of them first costs more than the filtering saves."""

SPARSE_MIN_CLASS_SIZE = 400
"""In ``batched_nms``, the typical class size below which one torchvision call per class is used.

Measured (2 threads): on random sets of 250 boxes a class the sparse kernel is only 10-20 % faster than
per-class calls, but on SSD300's candidates (its 200 best boxes per class, crowded over the same regions)
it was 2.7x slower (36 against 13 ms for 90 classes); from 1,000 a class it is 1.1-3.3x faster."""

PILOT_BOXES = 256
PILOT_FRACTION_INVERSE = 16
"""Each step of ``_ranked_nms`` settles the best ``max(PILOT_BOXES, N / PILOT_FRACTION_INVERSE)`` boxes with
torchvision's kernel (``_prefix_size``), whose result also estimates how many boxes the whole set keeps
(``_estimated_kept``): at most a 256th of torchvision's work on the whole set, and fewer doublings to
extrapolate over on large sets."""

MIN_DECELERATION = 0.05
"""Least fall of the kept count's log-log slope per doubling of the boxes (``_extrapolated_count``). On 90
sets of 2,000-10,000 boxes (spread and clustered, thresholds 0.3-0.7) the slope fell 0.05-0.1 per doubling
on clustered sets and stayed near 1 on spread ones; with 0.05 the estimate was 0.72-1.44x the kept count
(10th-90th percentile), with 0 it was 0.73-1.68x."""

TORCHVISION_NS_PER_KEPT_PAIR = 4.6
"""torchvision's kernel costs about this many ns per (kept box, box of its class): median of 90 sets of
2,000-10,000 boxes, spread and clustered, thresholds 0.3-0.7 (3.7-5.5 from the 10th to the 90th percentile;
AMD EPYC, 2 threads)."""

SPARSE_NS_PER_BOX = 1300
SPARSE_NS_PER_EVALUATION = 20
"""The sparse kernel costs about ``SPARSE_NS_PER_BOX x N + SPARSE_NS_PER_EVALUATION x its IoU evaluations``
(least squares over the same 90 sets; within 0.7-1.3x of the time for 80 % of them)."""

GRID_NS_FIXED = 1_000_000
GRID_NS_PER_BOX = 550
"""Building the grid (ranking the boxes, bucketing their cores, counting the IoU work) takes about
``GRID_NS_FIXED + GRID_NS_PER_BOX x N``: 2.5 ms at 2,000 boxes, 4 at 5,000, 10-13 at 20,000, 52 at 90,000."""

GRID_SHARE_OF_TORCHVISION = 0.15
"""The grid is built only when it costs at most this share of torchvision's predicted time: the grid alone
says whether the sparse kernel wins, and where it does not, the call costs the grid on top."""

SPARSE_COST_MARGIN = 2.0
"""The sparse kernel runs only when predicted faster than torchvision's by this factor. Simulated on the 90
sets' measured times: 2 sent no set to the sparse kernel where it was the slower (1.5 sent one, at 0.81x)
and lost 1 % of the best total time. The alternative is now the prefix steps, 0.3-0.6 of torchvision's time
where they are chosen: on 45 sets (``bench/nms_cost_model.py``, two runs, 2026-12-04) the path chosen was
within 0.1 of torchvision's time of the faster one on 43; the worst miss, 2,000 spread boxes at 0.3, took
the steps (0.68-0.80 of torchvision's time) where the sparse kernel gave 0.39."""

DENSE_CHUNK_ELEMENTS = 1 << 16
"""IoU matrix elements evaluated at once: bounds memory and keeps the working set in cache."""

CORE_MARGIN = 1e-3
"""Relative slack on the core size, far above the float rounding of an IoU."""

GRID_ENTRIES_PER_BOX = 4
"""Grid cells are grown until the boxes cover at most this many cells each on average."""

PARALLEL_ROUNDS = 24
"""Vectorised resolution rounds before the remaining chain is resolved one box at a time."""

COORDINATE_TRICK_MAX_ELEMENTS = 4000
COORDINATE_TRICK_MAX_ELEMENTS_GPU = 100_000
"""torchvision's ``batched_nms`` offsets boxes per class up to this ``boxes.numel()`` (CPU, GPU)."""

_INDEX_DTYPES = frozenset({torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64})
_TORCHVISION_CPU_NMS = getattr(torch.ops.torchvision.nms, "_op", torch.ops.torchvision.nms)
"""torchvision's operator as the C++ function its Python packet forwards to (the packet where that attribute is
missing): 0.3-0.5 us less a call, the margin by which the small-set path keeps up with ``torchvision.ops.nms``."""
_TORCHVISION_CPU_DTYPES = frozenset({torch.float32, torch.float64})
"""What torchvision's CPU kernel takes, boxes and scores of one dtype (``_in_kernel_dtypes`` makes them so)."""

_DEVICE_KERNELS: dict[str, NmsKernel] = {}
_BATCHED_KERNELS: dict[str, BatchedNmsKernel] = {}


def register_nms_kernel(device_type: str, kernel: NmsKernel, batched: BatchedNmsKernel | None = None) -> None:
    """Use ``kernel(boxes, scores, iou_threshold) -> keep`` for tensors on ``device_type`` (e.g. "cuda").

    ``batched(boxes, scores, idxs, iou_threshold) -> keep``, when given, runs ``batched_nms`` there in one
    call (it receives torchvision's per-category shifted coordinates wherever torchvision shifts them).
    """
    _DEVICE_KERNELS[device_type] = kernel
    if batched is None:
        _BATCHED_KERNELS.pop(device_type, None)
    else:
        _BATCHED_KERNELS[device_type] = batched


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices (int64) of the ``xyxy`` ``boxes [N, 4]`` kept by greedy NMS, by decreasing ``scores [N]``."""
    keep = _small_cpu_nms(boxes, scores, iou_threshold)
    if keep is not None:
        return keep
    _check_nms_inputs(boxes, scores, iou_threshold)
    if boxes.shape[0] <= 1:  # nothing to suppress: every box is kept
        return torch.arange(boxes.shape[0], device=boxes.device)
    boxes, scores = _in_kernel_dtypes(boxes, scores)
    return _kernel_for(boxes)(boxes, scores, float(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS applied independently within each category ``idxs [N]``; indices by decreasing score.

    While tracing (``structured.export``) it is torchvision's ``batched_nms``, the same indices, which
    exporters know (an ONNX ``NonMaxSuppression``); the checks and the kernel choice read the data, which a
    traced graph cannot.
    """
    if torch.jit.is_tracing():
        return torchvision.ops.batched_nms(boxes, scores, idxs, float(iou_threshold))
    keep = _small_cpu_nms(boxes, scores, iou_threshold, idxs)
    if keep is not None:
        return keep
    _check_nms_inputs(boxes, scores, iou_threshold)
    _check_idxs(idxs, boxes)
    if boxes.shape[0] <= 1:
        return torch.arange(boxes.shape[0], device=boxes.device)
    boxes, scores = _in_kernel_dtypes(boxes, scores)
    on_cpu = boxes.device.type == "cpu"
    if not on_cpu and boxes.device.type not in _DEVICE_KERNELS:
        return torchvision.ops.batched_nms(boxes, scores, idxs, float(iou_threshold))
    shifts = boxes.numel() <= (COORDINATE_TRICK_MAX_ELEMENTS if on_cpu else COORDINATE_TRICK_MAX_ELEMENTS_GPU)
    if boxes.device.type in _BATCHED_KERNELS:
        boxes = _offset_by_category(boxes, idxs) if shifts else boxes
        return _BATCHED_KERNELS[boxes.device.type](boxes, scores, idxs, float(iou_threshold))
    if shifts:
        return _kernel_for(boxes)(_offset_by_category(boxes, idxs), scores, float(iou_threshold))
    order, class_sizes = _class_segments(idxs)
    squared_sizes = float((class_sizes.double() ** 2).sum())
    if on_cpu and squared_sizes / len(idxs) >= SPARSE_MIN_CLASS_SIZE:
        keep = _grouped_sparse_nms(boxes, scores, idxs, float(iou_threshold), (order, class_sizes))
        if keep is not None:
            return keep
    return _batched_nms_by_class(boxes, scores, order, class_sizes, float(iou_threshold))


def _small_cpu_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, idxs: Tensor | None = None) -> Tensor | None:
    """torchvision's CPU kernel on a valid set of fewer than ``SPARSE_MIN_BOXES`` CPU boxes; ``None`` otherwise.

    With ``idxs``, torchvision's coordinate trick makes it ``batched_nms``. This is the common call of a
    detector's post-processing, so it costs as little as the checks allow: it tests here only what the kernel
    would not refuse (the threshold, the device, the size, NaNs, the category indices' dtype), each read once,
    and lets the kernel refuse the rest itself (shapes, dtypes, non-tensors: a ``RuntimeError`` before it
    computes anything). Any refusal returns ``None``, which sends the call to the general path: it checks one
    by one and names what is wrong, or widens the dtypes the kernel does not take (fp16, mixed).
    """
    if type(iou_threshold) is not float or not 0.0 <= iou_threshold <= 1.0 or "cpu" in _DEVICE_KERNELS:
        return None
    try:
        if not (boxes.is_cpu and scores.is_cpu and 1 < scores.numel() < SPARSE_MIN_BOXES):
            return None
        if not (torch.equal(boxes, boxes) and torch.equal(scores, scores)):  # has_nan's test, without its call
            return None
        if idxs is not None:
            if not _are_category_indices(idxs, boxes):
                return None
            boxes = _offset_by_category(boxes, idxs)
        return _TORCHVISION_CPU_NMS(boxes, scores, iou_threshold)
    except (AttributeError, TypeError, RuntimeError):
        return None


def _are_category_indices(idxs: Tensor, boxes: Tensor) -> bool:
    """Whether ``idxs`` passes ``_check_idxs`` and ``boxes`` are few enough for the coordinate trick."""
    return (
        isinstance(idxs, Tensor)
        and idxs.shape == boxes.shape[:1]
        and idxs.dtype in _INDEX_DTYPES
        and boxes.numel() <= COORDINATE_TRICK_MAX_ELEMENTS
    )


def _check_nms_inputs(boxes: Tensor, scores: Tensor, iou_threshold: float) -> None:
    if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4:
        shape = list(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be a tensor of shape [N, 4], got {shape}")
    if not boxes.is_floating_point():
        raise ValueError(f"boxes must be a floating-point tensor, got {boxes.dtype}")
    if not isinstance(scores, Tensor) or scores.shape != boxes.shape[:1]:
        shape = list(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a tensor of shape [{boxes.shape[0]}] (one per box), got {shape}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be a floating-point tensor, got {scores.dtype}")
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


def _in_kernel_dtypes(boxes: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """Boxes and scores in one dtype, float32 or float64, with the same NMS result: what every kernel takes.

    fp16 and bf16 boxes are widened (exactly) to float32: IoU in float32 on every device (torchvision's CPU
    kernel refuses them). Scores only rank the boxes: they are widened to the boxes' dtype where that is
    exact; otherwise (float64 scores of float32 boxes, which narrowing could tie) they are replaced by their
    ranks, which order the boxes the same way, ties to the lower index.
    """
    if boxes.dtype not in _TORCHVISION_CPU_DTYPES:
        boxes = boxes.float()
    if scores.dtype == boxes.dtype:
        return boxes, scores
    if torch.promote_types(scores.dtype, boxes.dtype) == boxes.dtype:
        return boxes, scores.to(boxes.dtype)
    order = torch.sort(scores, stable=True, descending=True).indices
    ranks = torch.empty(len(scores), dtype=boxes.dtype, device=scores.device)
    ranks[order] = -torch.arange(len(scores), dtype=boxes.dtype, device=scores.device)
    return boxes, ranks


def _cpu_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    if boxes.shape[0] < SPARSE_MIN_BOXES:
        return _TORCHVISION_CPU_NMS(boxes, scores, iou_threshold)
    order = torch.sort(scores, stable=True, descending=True).indices
    return order[_ranked_nms(boxes.index_select(0, order), scores.index_select(0, order), iou_threshold)]


def _ranked_nms(ranked_boxes: Tensor, ranked_scores: Tensor, iou_threshold: float) -> Tensor:
    """Kept ranks, ascending, of boxes already in torchvision's order (decreasing score, ties by index).

    Greedy NMS decides a box by the kept boxes ranked above it only. So torchvision's kernel settles the best
    boxes (``_prefix_size`` of them) exactly; every later box that a kept one of them suppresses is dropped in
    one vectorised pass (``_suppressed_by``); and the survivors are the same problem, smaller, solved the same
    way. At each step the prefix's result also predicts torchvision's time on the whole (``_estimated_kept``),
    against which the sparse kernel may take all the boxes at once (``_sparse_kept_ranks``).
    """
    num_boxes = ranked_boxes.shape[0]
    if num_boxes < SPARSE_MIN_BOXES:
        return _TORCHVISION_CPU_NMS(ranked_boxes, ranked_scores, iou_threshold)
    prefix = _prefix_size(num_boxes)
    prefix_kept = _TORCHVISION_CPU_NMS(ranked_boxes[:prefix], ranked_scores[:prefix], iou_threshold)
    if prefix == num_boxes:
        return prefix_kept
    torchvision_ns = TORCHVISION_NS_PER_KEPT_PAIR * _estimated_kept(prefix_kept, prefix, num_boxes) * num_boxes
    kept = _sparse_kept_ranks(ranked_boxes, None, iou_threshold, torchvision_ns)
    if kept is not None:
        return kept
    suppressed = _suppressed_by(ranked_boxes[prefix_kept], ranked_boxes[prefix:], iou_threshold)
    survivors = prefix + torch.nonzero(~suppressed).squeeze(1)
    rest = _ranked_nms(ranked_boxes.index_select(0, survivors), ranked_scores.index_select(0, survivors), iou_threshold)
    return torch.cat((prefix_kept, survivors[rest]))


def _suppressed_by(kept_boxes: Tensor, boxes: Tensor, iou_threshold: float) -> Tensor:
    """``[N]``: whether each of ``boxes [N, 4]`` has an IoU above the threshold with one of ``kept_boxes``.

    A box's largest IoU with the kept boxes decides (a NaN IoU, of two empty boxes, counts as 0: it never
    exceeds the threshold); reducing before comparing saves two passes over the ``[K, N]`` matrix.
    """
    kept = kept_boxes.t()[:, :, None]  # [4, K, 1]
    coordinates = boxes.t().contiguous()  # [4, N]: each coordinate contiguous for the broadcast arithmetic
    step = max(1, DENSE_CHUNK_ELEMENTS // kept_boxes.shape[0])
    largest = [_nms_iou(kept, coordinates[:, None, start : start + step]).nan_to_num_(0.0).amax(dim=0)
               for start in range(0, boxes.shape[0], step)]
    return _exceeds(torch.cat(largest), iou_threshold)


def _offset_by_category(boxes: Tensor, idxs: Tensor) -> Tensor:
    """torchvision's coordinate trick: each category's boxes shifted by ``idx * (max coordinate + 1)``."""
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return boxes + offsets[:, None]


def _class_segments(idxs: Tensor) -> tuple[Tensor, Tensor]:
    """Box indices grouped by category (ascending within each) and the size of each group."""
    order = torch.sort(idxs, stable=True).indices
    return order, torch.unique_consecutive(idxs[order], return_counts=True)[1]


def _batched_nms_by_class(
    boxes: Tensor, scores: Tensor, order: Tensor, class_sizes: Tensor, iou_threshold: float
) -> Tensor:
    """One kernel call per category (``order`` and ``class_sizes`` from ``_class_segments``)."""
    kernel = _kernel_for(boxes)
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for members in order.split(class_sizes.tolist()):
        keep_mask[members[kernel(boxes[members], scores[members], iou_threshold)]] = True
    return _sort_kept_by_score(torch.where(keep_mask)[0], scores)


def _in_score_order(keep: Tensor, scores: Tensor) -> Tensor:
    """Kept indices already in stable score order, reordered as torchvision's only when scores tie."""
    kept_scores = scores[keep]
    if bool((kept_scores[1:] != kept_scores[:-1]).all()):
        return keep
    return _sort_kept_by_score(keep, scores)


def _sort_kept_by_score(keep: Tensor, scores: Tensor) -> Tensor:
    """Kept indices by decreasing score, ordered exactly as torchvision's per-class ``batched_nms``."""
    keep = keep.sort().values
    return keep[scores[keep].sort(descending=True)[1]]


def _grouped_sparse_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float,
                        class_segments: tuple[Tensor, Tensor]) -> Tensor | None:
    """``batched_nms`` by the sparse kernel over all groups at once; ``None`` where one torchvision call per group
    is predicted faster (``class_segments = _class_segments(groups)``, which the caller has already)."""
    torchvision_ns = _predicted_per_class_ns(boxes, scores, iou_threshold, *class_segments)
    if not _sparse_may_win(boxes.shape[0], torchvision_ns):
        return None
    order = torch.sort(scores, stable=True, descending=True).indices
    kept = _sparse_kept_ranks(boxes[order].contiguous(), groups[order].to(torch.int64), iou_threshold, torchvision_ns)
    return None if kept is None else _in_score_order(order[kept], scores)


def _sparse_may_win(num_boxes: int, torchvision_ns: float) -> bool:
    """Whether the sparse kernel can beat torchvision's predicted time by the margin whatever its IoU work, with a
    grid that costs a small share of that time."""
    grid_ns = GRID_NS_FIXED + GRID_NS_PER_BOX * num_boxes
    return (SPARSE_COST_MARGIN * SPARSE_NS_PER_BOX * num_boxes < torchvision_ns
            and grid_ns <= GRID_SHARE_OF_TORCHVISION * torchvision_ns)


def _sparse_kept_ranks(ranked_boxes: Tensor, ranked_groups: Tensor | None, iou_threshold: float,
                       torchvision_ns: float) -> Tensor | None:
    """Kept ranks (ascending) by greedy NMS over the sparse overlap graph; ``None`` where it is not predicted to
    beat ``torchvision_ns`` by ``SPARSE_COST_MARGIN``.

    Boxes come in torchvision's order, in one dtype, float32 or float64 (``_in_kernel_dtypes``); with
    ``ranked_groups`` boxes of different groups never suppress each other. The grid is built only where
    ``_sparse_may_win``, and its cells count the IoU work that decides.
    """
    if not _sparse_may_win(ranked_boxes.shape[0], torchvision_ns) or not torch.isfinite(ranked_boxes).all():
        return None
    cells = _grid_cells(ranked_boxes, ranked_groups, iou_threshold)
    if cells is None:
        return None
    sparse_ns = SPARSE_NS_PER_BOX * ranked_boxes.shape[0] + SPARSE_NS_PER_EVALUATION * _dense_work(cells[1])
    if SPARSE_COST_MARGIN * sparse_ns >= torchvision_ns:
        return None
    higher, lower = _suppressing_pairs(ranked_boxes, *cells, iou_threshold)
    return _resolve_greedy(ranked_boxes.shape[0], higher, lower)


def _predicted_per_class_ns(boxes: Tensor, scores: Tensor, iou_threshold: float, class_order: Tensor,
                            class_sizes: Tensor) -> float:
    """torchvision's time for one call per class, predicted.

    Its kernel compares each kept box with the boxes of its class: ``TORCHVISION_NS_PER_KEPT_PAIR`` x the
    fraction kept x the sum of the squared class sizes. The fraction kept is estimated on the largest class,
    where that cost lies.
    """
    members = _largest_class(class_order, class_sizes)
    member_order = torch.sort(scores[members], stable=True, descending=True).indices
    ranked_boxes, ranked_scores = boxes[members[member_order]], scores[members[member_order]]
    prefix = _prefix_size(len(members))
    prefix_kept = _TORCHVISION_CPU_NMS(ranked_boxes[:prefix], ranked_scores[:prefix], iou_threshold)
    kept_fraction = _estimated_kept(prefix_kept, prefix, len(members)) / len(members)
    return TORCHVISION_NS_PER_KEPT_PAIR * kept_fraction * float((class_sizes.double() ** 2).sum())


def _largest_class(order: Tensor, class_sizes: Tensor) -> Tensor:
    """Indices of the boxes of the largest class (``order`` and ``class_sizes`` from ``_class_segments``)."""
    largest = int(class_sizes.argmax())
    start = int(class_sizes[:largest].sum())
    return order[start : start + int(class_sizes[largest])]


def _prefix_size(num_boxes: int) -> int:
    """How many of the best boxes ``_ranked_nms`` settles with torchvision's kernel: ``PILOT_BOXES``, or a
    ``PILOT_FRACTION_INVERSE``-th of a large set, or all of a set smaller than that."""
    return min(num_boxes, max(PILOT_BOXES, num_boxes // PILOT_FRACTION_INVERSE))


def _estimated_kept(prefix_kept: Tensor, prefix: int, num_boxes: int) -> float:
    """How many of ``num_boxes`` greedy NMS keeps, extrapolated from the ranks it keeps among the best ``prefix``.

    Greedy NMS decides a box by the boxes ranked above it only, so torchvision's kernel on the best ``prefix``
    boxes keeps what the whole run keeps among them, and so among the best quarter and half of them.
    """
    kept_ranks = prefix_kept.tolist()  # ascending
    if prefix == num_boxes:
        return float(len(kept_ranks))
    counts = [max(bisect.bisect_left(kept_ranks, prefix // 4), 1), max(bisect.bisect_left(kept_ranks, prefix // 2), 1),
              len(kept_ranks)]
    return _extrapolated_count(counts, prefix, num_boxes)


def _extrapolated_count(counts: list[int], measured_size: int, target_size: int) -> float:
    """Kept boxes among ``target_size``, from the counts among the best quarter, half and all of ``measured_size``.

    Each doubling of the boxes multiplies the count by 2 ** slope, the slope (log-log, between 1, every box
    kept, and 0, the clusters already covered) falling from doubling to doubling by as much as it fell over
    the last measured one, and at least ``MIN_DECELERATION``: the count flattens as clusters fill up.
    """
    slope = min(max(math.log2(counts[2] / counts[1]), 0.0), 1.0)
    deceleration = max(math.log2(counts[1] / counts[0]) - slope, MIN_DECELERATION)
    size, count = float(measured_size), float(counts[2])
    while size < target_size and slope > 0:
        step = min(2.0, target_size / size)
        count *= step**slope
        size *= step
        slope -= deceleration
    return count


def core_shrink(iou_threshold: float) -> float:
    """Factor by which boxes shrink about their centres so that any pair with IoU > t has overlapping cores.

    With k = 2t / (1 + t), IoU > t implies an overlap along x of more than k * sqrt(w1 * w2) (and a
    width ratio above k^2), hence centres closer than s * (w1 + w2) / 2 with s = (1 - k^2) / (1 + k^2);
    likewise along y. A margin far above float rounding is added.
    """
    k = 2 * iou_threshold / (1 + iou_threshold)
    return min(1.0, (1 - k * k) / (1 + k * k) + CORE_MARGIN)


def _grid_cells(boxes: Tensor, groups: Tensor | None, iou_threshold: float) -> tuple[Tensor, Tensor] | None:
    """Box indices grouped by the grid cell (and group) their cores cover.

    Returns ``entry_box`` (box index per entry, entries sorted by cell) and ``run_lengths`` (entries
    per cell, in that order). Boxes without positive width and height never suppress: left out.
    """
    x1, y1, x2, y2 = boxes.double().unbind(1)
    valid = torch.nonzero((x2 > x1) & (y2 > y1)).squeeze(1)
    if valid.numel() < 2:
        return valid, torch.ones_like(valid)
    shrink = core_shrink(iou_threshold)
    half_w, half_h = (x2 - x1)[valid] * (shrink / 2), (y2 - y1)[valid] * (shrink / 2)
    centre_x, centre_y = (x1 + x2)[valid] / 2, (y1 + y2)[valid] / 2
    core = torch.stack((centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h), dim=1)
    cell = _grid_cell_size(2 * half_w, 2 * half_h)
    cell_range = ((core - core[:, :2].amin(dim=0).repeat(2)) / cell).floor().long()  # [V, 4] first/last x, y
    cells_x, cells_y = (cell_range[:, 2:].amax(dim=0) + 1).tolist()
    num_groups = 1 if groups is None else int(groups.max() - groups.min()) + 1
    if cells_x * cells_y * num_groups >= 2**62:
        return None
    entry_box, entry_x, entry_y = _grid_entries(valid, cell_range)
    cell_key = entry_x * cells_y + entry_y
    if groups is not None:
        cell_key += (groups - groups.min())[entry_box] * (cells_x * cells_y)
    cell_key, sort_index = cell_key.sort()
    _, run_lengths = torch.unique_consecutive(cell_key, return_counts=True)
    return entry_box[sort_index], run_lengths


def _grid_cell_size(widths: Tensor, heights: Tensor) -> Tensor:
    """A cell side about the median core side, grown until cores cover few cells on average."""
    cell = torch.maximum(widths, heights).median().clamp(min=torch.finfo(torch.float64).tiny)
    budget = GRID_ENTRIES_PER_BOX * widths.numel()
    while True:
        covered = ((widths / cell).floor() + 2) * ((heights / cell).floor() + 2)
        if covered.sum() <= budget:
            return cell
        cell = cell * 2


def _grid_entries(valid: Tensor, cell_range: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(box, cell x, cell y) for every grid cell each valid box's core covers."""
    first_x, first_y, last_x, last_y = cell_range.unbind(1)
    span_y = last_y - first_y + 1
    counts = (last_x - first_x + 1) * span_y
    owner = torch.repeat_interleave(torch.arange(valid.numel()), counts)
    local = torch.arange(owner.numel()) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    span_y = span_y[owner]
    return valid[owner], first_x[owner] + local // span_y, first_y[owner] + local % span_y


def _padded_size(run_lengths: Tensor) -> Tensor:
    """Cell occupancy rounded up (to 2, 4, 8, then multiples of 8): cells of one size are batched."""
    power_of_two = torch.pow(2, torch.log2(run_lengths.clamp(min=1).double()).ceil()).long()
    return torch.where(run_lengths <= 8, power_of_two, (run_lengths + 7) // 8 * 8)


def _dense_work(run_lengths: Tensor) -> int:
    """IoU evaluations the per-cell matrices will take, padding included."""
    crowded = run_lengths[run_lengths > 1]
    return int((_padded_size(crowded) ** 2).sum())


def _suppressing_pairs(
    boxes: Tensor, entry_box: Tensor, run_lengths: Tensor, iou_threshold: float
) -> tuple[Tensor, Tensor]:
    """(higher, lower) rank pairs whose IoU exceeds the threshold, found cell by cell.

    Cells are batched by padded occupancy G, and each batch evaluates [cells, G, G] IoU matrices with
    torchvision's float arithmetic, so every comparison comes out as in torchvision's kernel.
    """
    run_starts = run_lengths.cumsum(0) - run_lengths
    padded = _padded_size(run_lengths)
    found: list[Tensor] = []
    for size in padded[run_lengths > 1].unique().tolist():
        starts, lengths = run_starts[padded == size], run_lengths[padded == size]
        for chunk in range(0, starts.numel(), max(1, DENSE_CHUNK_ELEMENTS // (size * size))):
            members = _cell_members(entry_box, starts[chunk:], lengths[chunk:], size, DENSE_CHUNK_ELEMENTS)
            found.append(_pairs_over_threshold(boxes, members, iou_threshold))
    if not found:
        return entry_box[:0], entry_box[:0]
    pair_keys = torch.cat(found).unique()
    return pair_keys // boxes.shape[0], pair_keys % boxes.shape[0]


def _cell_members(entry_box: Tensor, starts: Tensor, lengths: Tensor, size: int, max_elements: int) -> Tensor:
    """``[cells, size]`` box indices of the cells' entries, ``-1`` where a cell has fewer than ``size``."""
    cells = min(starts.numel(), max(1, max_elements // (size * size)))
    slot = torch.arange(size)
    members = entry_box[(starts[:cells, None] + slot).clamp(max=entry_box.numel() - 1)]
    return torch.where(slot < lengths[:cells, None], members, -1)


def _pairs_over_threshold(boxes: Tensor, members: Tensor, iou_threshold: float) -> Tensor:
    """Keys ``higher * N + lower`` of the member pairs whose IoU exceeds the threshold."""
    coordinates = torch.cat((boxes, boxes.new_zeros(1, 4)))[members].permute(2, 0, 1)  # [4, C, G]; -1: a zero box
    iou = _nms_iou(coordinates[..., :, None], coordinates[..., None, :])  # [C, G, G]
    cell, row, column = _exceeds(iou, iou_threshold).triu_(diagonal=1).nonzero().unbind(1)
    first, second = members[cell, row], members[cell, column]
    return torch.minimum(first, second) * boxes.shape[0] + torch.maximum(first, second)


def _nms_iou(first: Tensor, second: Tensor) -> Tensor:
    """IoU between boxes given as coordinate stacks ``[4, ...]`` (x1, y1, x2, y2) that broadcast together, in the
    float arithmetic of torchvision's kernel, so that every comparison with a threshold comes out as its own."""
    x1, y1, x2, y2 = first
    u1, v1, u2, v2 = second
    widths = torch.minimum(x2, u2).sub_(torch.maximum(x1, u1))
    heights = torch.minimum(y2, v2).sub_(torch.maximum(y1, v1))
    intersection = widths.clamp_(min=0).mul_(heights.clamp_(min=0))
    union = ((x2 - x1) * (y2 - y1) + (u2 - u1) * (v2 - v1)).sub_(intersection)
    return intersection.div_(union)


def _exceeds(values: Tensor, threshold: float) -> Tensor:
    """``values > threshold`` with the threshold taken in double precision, as torchvision compares."""
    if values.dtype == torch.float64:
        return values > threshold
    just_above = np.nextafter(np.float32(threshold), np.float32(np.inf))
    smallest_above = np.float32(threshold) if float(np.float32(threshold)) > threshold else just_above
    return values >= float(smallest_above)


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


register_nms_kernel("cuda", nms_triton.nms, batched=nms_triton.batched_nms)
