"""The two Triton kernels of ``nms_triton``: the IoU bitmask in 64x64 tiles and the greedy reduction.

Imported only by ``structured.boxes.nms_triton`` (which loads it lazily, so the package imports
without Triton). Boxes arrive ranked: sorted by segment, then by decreasing score within a segment, as
float32 ``[N, 4]``; ``segment_end[r]`` is the position one past the last box of row ``r``'s segment.

Mask layout (one launch covers the rows ``[row_offset, row_offset + rows)`` of a chunk): row ``r`` holds
``row_words`` 64-bit words, word ``k`` covering the columns of block ``r // 64 + k``; bit ``j % 64`` of a
word is set when box ``j > r`` of the same segment has IoU above the threshold with box ``r``. Words
past the end of a row's segment are never written nor read.
"""

from __future__ import annotations

import triton
import triton.language as tl

TILE = 64
"""Boxes per tile side: one 64-bit word per row and tile."""


@triton.jit
def iou_mask_kernel(boxes_ptr, segment_end_ptr, mask_ptr, num_boxes, row_offset, row_words, min_suppressing_iou,
                    FUSED_AREA_SUM: tl.constexpr, TILE: tl.constexpr):
    """One 64x64 tile of the suppression bitmask: program (row block, word of the row)."""
    first_row = row_offset + tl.program_id(0) * TILE
    word = tl.program_id(1)
    column_block = first_row // TILE + word
    last_row = tl.minimum(first_row + TILE - 1, num_boxes - 1)
    if column_block * TILE < tl.load(segment_end_ptr + last_row):
        lanes = tl.arange(0, TILE)
        rows = first_row + lanes
        columns = column_block * TILE + lanes
        row_valid = rows < num_boxes
        column_valid = columns < num_boxes
        a0 = tl.load(boxes_ptr + rows * 4 + 0, mask=row_valid, other=0.0)
        a1 = tl.load(boxes_ptr + rows * 4 + 1, mask=row_valid, other=0.0)
        a2 = tl.load(boxes_ptr + rows * 4 + 2, mask=row_valid, other=0.0)
        a3 = tl.load(boxes_ptr + rows * 4 + 3, mask=row_valid, other=0.0)
        b0 = tl.load(boxes_ptr + columns * 4 + 0, mask=column_valid, other=0.0)
        b1 = tl.load(boxes_ptr + columns * 4 + 1, mask=column_valid, other=0.0)
        b2 = tl.load(boxes_ptr + columns * 4 + 2, mask=column_valid, other=0.0)
        b3 = tl.load(boxes_ptr + columns * 4 + 3, mask=column_valid, other=0.0)
        row_end = tl.load(segment_end_ptr + rows, mask=row_valid, other=0)
        iou = _tile_iou(a0[:, None], a1[:, None], a2[:, None], a3[:, None],
                        b0[None, :], b1[None, :], b2[None, :], b3[None, :], FUSED_AREA_SUM)
        suppresses = ((columns[None, :] > rows[:, None]) & (columns[None, :] < row_end[:, None])
                      & (iou >= min_suppressing_iou))
        bits = tl.where(suppresses, tl.full((TILE,), 1, tl.int64)[None, :] << lanes.to(tl.int64)[None, :], 0)
        words = tl.sum(bits, axis=1)  # distinct bits: the sum is their OR
        tl.store(mask_ptr + (rows - row_offset) * row_words + word, words, mask=row_valid)


@triton.jit
def _tile_iou(a0, a1, a2, a3, b0, b1, b2, b3, FUSED_AREA_SUM: tl.constexpr):
    """IoU of rows ``a`` (higher ranked) with columns ``b``, in torchvision's float32 operation order.

    ``FUSED_AREA_SUM``: the union's area sum as torchvision's CUDA build computes it, one fused
    multiply-add ``fma(w_b, h_b, area_a)``; otherwise ``area_a + area_b`` as its CPU kernel does.
    """
    width = tl.maximum(tl.minimum(a2, b2) - tl.maximum(a0, b0), 0.0)
    height = tl.maximum(tl.minimum(a3, b3) - tl.maximum(a1, b1), 0.0)
    intersection = width * height
    area_a = (a2 - a0) * (a3 - a1)
    if FUSED_AREA_SUM:
        area_sum = tl.fma(b2 - b0, b3 - b1, area_a)
    else:
        area_sum = area_a + (b2 - b0) * (b3 - b1)
    return tl.math.div_rn(intersection, area_sum - intersection)


@triton.jit
def greedy_reduction_kernel(mask_ptr, removed_ptr, keep_ptr, segment_starts_ptr, segment_end_ptr,
                            num_segments_ptr, row_offset, row_stop, row_words,
                            TILE: tl.constexpr, WORDS: tl.constexpr):
    """Greedy NMS over the mask rows ``[row_offset, row_stop)``, one segment at a time per program.

    ``removed`` holds one bit per box (word = column block), carried between chunks; its words are
    OR-ed atomically since two segments may share a block. ``keep[r]`` is set for every kept row.
    """
    num_segments = tl.load(num_segments_ptr)
    lanes = tl.arange(0, TILE)
    for segment in range(tl.program_id(0), num_segments, tl.num_programs(0)):
        start = tl.load(segment_starts_ptr + segment)
        end = tl.load(segment_end_ptr + start)
        first = tl.maximum(start, row_offset)
        stop = tl.minimum(end, row_stop)
        for block in range(first // TILE, (stop + TILE - 1) // TILE):
            kept = _reduce_block(mask_ptr, removed_ptr, block, first, stop, row_offset, row_words, TILE)
            rows = block * TILE + lanes
            is_kept = ((kept >> lanes.to(tl.int64)) & 1) != 0
            tl.store(keep_ptr + rows, is_kept.to(tl.int8), mask=(rows >= first) & (rows < stop))
            later_words = (end - 1) // TILE - block
            for word in range(1, later_words + 1, WORDS):
                words = word + tl.arange(0, WORDS)
                in_segment = words <= later_words
                removed_by_block = tl.zeros((WORDS,), tl.int64)
                for lane in tl.static_range(TILE):
                    row_kept = ((kept >> lane) & 1) != 0
                    row_words_ptr = mask_ptr + (block * TILE + lane - row_offset) * row_words
                    removed_by_block |= tl.load(row_words_ptr + words, mask=in_segment & row_kept, other=0)
                tl.atomic_or(removed_ptr + block + words, removed_by_block,
                             mask=in_segment & (removed_by_block != 0))
            tl.debug_barrier()


@triton.jit
def _reduce_block(mask_ptr, removed_ptr, block, first, stop, row_offset, row_words, TILE: tl.constexpr):
    """Greedy pass over one block's rows in ``[first, stop)``: the bits of the kept rows."""
    removed = tl.load(removed_ptr + block, volatile=True)
    kept = removed * 0
    one = kept + 1
    for row in range(tl.maximum(first, block * TILE), tl.minimum(stop, block * TILE + TILE)):
        bit = row - block * TILE
        if ((removed >> bit) & 1) == 0:
            kept = kept | (one << bit)
            removed = removed | tl.load(mask_ptr + (row - row_offset) * row_words)
    return kept
