"""Exact greedy NMS in Triton: a tiled IoU bitmask and an on-device greedy reduction.

``nms`` and ``batched_nms`` return torchvision's indices in torchvision's order, and are what
``structured.boxes.nms`` / ``batched_nms`` run for CUDA tensors (they validate the inputs first; these
functions assume valid ones). They also run on CPU tensors under ``TRITON_INTERPRET=1``, which is how
the tests exercise them without a GPU. Where Triton cannot be imported, and for float64 boxes (the
kernels compute in float32; torchvision's ops in double), they call ``torchvision.ops.nms`` /
``batched_nms``.

How it works:

1. Boxes are ranked on the device: by segment (``batched_nms``'s category) and, within a segment, by
   decreasing score with ties to the lower index (torchvision's stable order). Many images x classes
   are one launch: segments are contiguous runs of the ranked boxes and never suppress each other.
2. ``iou_mask_kernel`` fills a bitmask in 64x64 tiles over the upper triangle of each segment: bit
   ``(i, j)`` is set when ``j`` ranks after ``i`` and their IoU exceeds the threshold. IoU is float32
   (fp16 and bf16 boxes are widened exactly first) in torchvision's operation order; on CUDA the area
   sum is the fused multiply-add torchvision's CUDA build uses, and the threshold is compared in
   float32 as there; on the CPU (interpreter) both follow torchvision's CPU kernel.
3. ``greedy_reduction_kernel`` walks each segment's rows in rank order on the device (one program per
   segment, segments spread over the programs), so the mask never goes to the host.

Memory: the mask holds ``rows x row_words`` 64-bit words, ``row_words`` the most 64-box blocks a
segment spans (``ceil(N / 64)`` for one class). When that exceeds ``MASK_BUDGET_BYTES`` the rows are
processed in chunks (mask, then reduction, chunk after chunk; the suppressed set is carried in
``removed``): at N = 200,000 in one class a row is 25 KB and a 1 GiB chunk holds 42,944 rows (5
chunks). The bound is then time, not memory: up to about ``MASK_BUDGET_BYTES / 8`` boxes per class.

``max_out`` asks for a fixed-size result: ``(indices [max_out] padded with -1, count)`` computed
without a host synchronisation, so post-processing can be captured in a CUDA graph. (The variable-size
result needs one: the number kept; ``batched_nms`` also reads the largest segment size.)
"""

from __future__ import annotations

import functools
from types import ModuleType

import numpy as np
import torch
import torchvision
from torch import Tensor

MASK_BUDGET_BYTES = 1 << 30
"""Largest bitmask allocated at once; bigger problems are processed in row chunks."""

REDUCTION_PROGRAMS = 4096
"""Programs of the greedy reduction; each takes segments ``pid, pid + programs, ...``."""

REDUCTION_WORDS = 64
"""Mask words OR-ed at once when a block's kept rows suppress later blocks."""

TILE = 64


@functools.cache
def _kernels() -> ModuleType | None:
    """The Triton kernels module, or ``None`` when Triton cannot be imported."""
    try:
        from structured.boxes import nms_triton_kernels
    except ImportError:
        return None
    return nms_triton_kernels


def _kernels_take(boxes: Tensor) -> bool:
    """Whether the Triton kernels run these boxes: Triton imports, some boxes, and not float64.

    The kernels compute IoU in float32; float64 boxes go to torchvision's op, which computes in double, so
    the result stays torchvision's.
    """
    return _kernels() is not None and boxes.shape[0] > 0 and boxes.dtype != torch.float64


def triton_available() -> bool:
    """Whether Triton imports here (otherwise ``nms`` and ``batched_nms`` use torchvision's ops)."""
    return _kernels() is not None


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, max_out: int | None = None
        ) -> Tensor | tuple[Tensor, Tensor]:
    """Indices (int64) of the ``xyxy`` ``boxes [N, 4]`` kept by greedy NMS, by decreasing ``scores [N]``.

    With ``max_out``: ``(indices [max_out] padded with -1, count)``, no host synchronisation.
    """
    if not _kernels_take(boxes):
        return _fixed_size(torchvision.ops.nms(boxes, scores, iou_threshold), max_out)
    order = torch.sort(scores, descending=True, stable=True).indices
    ranked = _Ranked.single_segment(boxes[order])
    keep = _keep_flags(ranked, iou_threshold, row_words=ranked.blocks, programs=1)
    return _kept_indices(order, keep, max_out)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float,
                max_out: int | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """NMS within each category ``idxs [N]`` in one launch; kept indices by decreasing score.

    Boxes of different categories never suppress each other. With ``max_out``: ``(indices [max_out]
    padded with -1, count)``, no host synchronisation (the mask is then sized for one category
    holding every box).
    """
    if not _kernels_take(boxes):
        return _fixed_size(torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold), max_out)
    order = torch.sort(scores, descending=True, stable=True).indices
    by_segment = torch.sort(idxs[order], stable=True).indices
    ranked = _Ranked.segmented(boxes[order[by_segment]], idxs[order[by_segment]])
    if max_out is None:
        largest, num_segments = ranked.largest_segment_and_count()
        row_words, programs = _most_blocks_spanned(largest), min(num_segments, REDUCTION_PROGRAMS)
    else:
        row_words, programs = ranked.blocks, min(ranked.count, REDUCTION_PROGRAMS)
    keep = torch.empty(ranked.count, dtype=torch.int8, device=boxes.device)
    keep[by_segment] = _keep_flags(ranked, iou_threshold, row_words, programs)
    return _kept_indices(order, keep, max_out)


class _Ranked:
    """Ranked float32 boxes and their segments: ``segment_end`` per row, segment starts and count."""

    def __init__(self, boxes: Tensor, segment_end: Tensor, segment_first: Tensor, segment_starts: Tensor,
                 num_segments: Tensor):
        self.boxes = boxes.to(torch.float32).contiguous()
        self.segment_end = segment_end.to(torch.int32).contiguous()
        self.segment_first = segment_first
        self.segment_starts = segment_starts.to(torch.int32).contiguous()
        self.num_segments = num_segments.to(torch.int32).reshape(1)
        self.count = boxes.shape[0]
        self.blocks = -(-self.count // TILE)

    @classmethod
    def single_segment(cls, boxes: Tensor) -> _Ranked:
        """All boxes in one segment."""
        count, device = boxes.shape[0], boxes.device
        return cls(boxes, torch.full((count,), count, device=device), torch.zeros(count, device=device),
                   torch.zeros(1, device=device), torch.ones(1, device=device))

    @classmethod
    def segmented(cls, boxes: Tensor, segment_ids: Tensor) -> _Ranked:
        """Segments = runs of equal ``segment_ids`` (already grouped), found without a host sync."""
        count = boxes.shape[0]
        positions = torch.arange(count, device=boxes.device)
        is_last = torch.ones(count, dtype=torch.bool, device=boxes.device)
        is_last[:-1] = segment_ids[1:] != segment_ids[:-1]
        segment_end = torch.where(is_last, positions + 1, count).flip(0).cummin(0).values.flip(0)
        is_first = torch.ones_like(is_last)
        is_first[1:] = is_last[:-1]
        segment_first = torch.where(is_first, positions, 0).cummax(0).values
        segment_starts = torch.where(is_first, positions, count).sort().values  # the starts, then `count`s
        return cls(boxes, segment_end, segment_first, segment_starts, is_first.sum())

    def largest_segment_and_count(self) -> tuple[int, int]:
        """Boxes in the largest segment and the number of segments (one host synchronisation)."""
        largest = (self.segment_end - self.segment_first).max().to(torch.int32)
        return tuple(torch.stack((largest, self.num_segments[0])).tolist())


def _most_blocks_spanned(segment_size: int) -> int:
    """The most 64-box blocks a run of ``segment_size`` consecutive boxes can touch."""
    return (segment_size + TILE - 2) // TILE + 1


def _keep_flags(ranked: _Ranked, iou_threshold: float, row_words: int, programs: int) -> Tensor:
    """``[N]`` int8: 1 where the ranked box is kept, filled chunk of rows by chunk of rows.

    ``row_words``: mask words per row (the most blocks a segment spans); ``programs``: reduction programs.
    """
    kernels = _kernels()
    device = ranked.boxes.device
    keep = torch.zeros(ranked.count, dtype=torch.int8, device=device)
    if ranked.count == 0:
        return keep
    removed = torch.zeros(ranked.blocks + 1, dtype=torch.int64, device=device)
    chunk_rows = max(TILE, MASK_BUDGET_BYTES // (8 * row_words) // TILE * TILE)
    mask = torch.empty(min(chunk_rows, ranked.blocks * TILE) * row_words, dtype=torch.int64, device=device)
    fused = device.type == "cuda"
    threshold = min_suppressing_iou(iou_threshold, float32_threshold=fused)
    words_at_once = min(REDUCTION_WORDS, triton_next_power_of_2(row_words))
    for row_offset in range(0, ranked.count, chunk_rows):
        row_stop = min(row_offset + chunk_rows, ranked.count)
        grid = (-(-(row_stop - row_offset) // TILE), row_words)
        kernels.iou_mask_kernel[grid](ranked.boxes, ranked.segment_end, mask, ranked.count, row_offset,
                                      row_words, threshold, FUSED_AREA_SUM=fused, TILE=TILE,
                                      enable_fp_fusion=False)
        kernels.greedy_reduction_kernel[(programs,)](
            mask, removed, keep, ranked.segment_starts, ranked.segment_end, ranked.num_segments,
            row_offset, row_stop, row_words, TILE=TILE, WORDS=words_at_once)
    return keep


def triton_next_power_of_2(value: int) -> int:
    """The smallest power of two at least ``value`` (Triton's block sizes are powers of two)."""
    return 1 << max(0, value - 1).bit_length()


def min_suppressing_iou(iou_threshold: float, float32_threshold: bool) -> float:
    """The smallest float32 IoU that suppresses: ``iou > t`` as ``iou >= this``.

    torchvision's CPU kernel compares the float32 IoU with the threshold in double precision; its
    CUDA kernel first rounds the threshold to float32 (``float32_threshold``). They differ only when
    the IoU equals float32(t) > t, e.g. t = 1/3.
    """
    rounded = np.float32(iou_threshold)
    if float32_threshold or float(rounded) <= iou_threshold:
        return float(np.nextafter(rounded, np.float32(np.inf)))
    return float(rounded)


def _kept_indices(order: Tensor, keep: Tensor, max_out: int | None) -> Tensor | tuple[Tensor, Tensor]:
    """Original indices of the kept boxes, ``keep`` given per global score rank ``order``."""
    if max_out is None:
        return order[keep.bool()]
    kept = keep.bool()
    slot = kept.cumsum(0) - 1
    fits = kept & (slot < max_out)
    padded = torch.full((max_out + 1,), -1, dtype=torch.int64, device=order.device)
    padded.scatter_(0, torch.where(fits, slot, max_out), torch.where(fits, order, -1))
    return padded[:max_out], fits.sum()


def _fixed_size(keep: Tensor, max_out: int | None) -> Tensor | tuple[Tensor, Tensor]:
    """torchvision's result in the form ``max_out`` asks for."""
    if max_out is None:
        return keep
    padded = torch.full((max_out,), -1, dtype=torch.int64, device=keep.device)
    count = min(max_out, keep.numel())
    padded[:count] = keep[:count]
    return padded, torch.tensor(count, device=keep.device)
