"""Mask pasting: Mask R-CNN's per-detection M x M mask probabilities -> full-image probability maps.

Contract: ``paste_masks(masks [K, M, M] or [K, 1, M, M], boxes [K, 4] xyxy in the image frame,
(H, W)) -> [K, H, W]`` probabilities in the masks' dtype and on the masks' device, zero outside each
mask's box. The semantics are torchvision's ``paste_masks_in_image(masks[:, None], boxes, (H, W),
padding=1)``, to float rounding: each mask gets a 1-pixel zero border, its box is widened by the
matching factor (M + 2) / M about its centre in the boxes' dtype and truncated to integers
``(x1, y1, x2, y2)``; the bordered mask is resized bilinearly (``align_corners=False``) to
``(y2 - y1 + 1) x (x2 - x1 + 1)`` pixels (at least 1 x 1) with its top-left pixel at ``(x1, y1)``,
and whatever falls outside the image is dropped. A box wholly outside the image gives an all-zero
map (torchvision raises on some of these: its slices go negative).

How: all K masks at once, with no per-mask Python loop. The values are computed only inside each
box, clipped to the image: bilinear resizing is separable, so each crop is two gathers and a lerp
along the columns of the small bordered mask, then two row gathers and a lerp down the rows. Crops
of similar sizes are grouped into chunks, each padded to its largest crop, and each chunk is written
into the zero canvas by one indexed assignment through a view of all the canvas's windows of that
size. Every value written, padding included, is the final value of its pixel.

Memory: the output is ``K * H * W * itemsize`` bytes (unavoidable); the chunks' crop buffers stay
within ``memory_bound_bytes`` (a box taller than the bound allows is cut into bands of rows), beside
per-mask tap tables of ``K * (H + W) * (8 + itemsize)`` bytes (6.7 MB for 300 masks on 800 x 1066). The
canvas is ``torch.zeros``: filling the whole output, not the interpolation, is what dominates a CPU paste
(100 masks on 800 x 1066: the zeros alone take 0.40-0.44x of torchvision's whole paste, the crops 20 ms more;
with PyTorch's ``THP_MEM_ALLOC_ENABLE=1``, huge pages, the zeros take a sixth of that; docs/benchmarks.md).
A canvas from ``calloc`` (pages faulted in only where a box writes) was faster alone, in a loop that reuses
the same memory, but about 10x slower inside a Mask R-CNN forward (800-1000 ms against 70-85 ms for 100
masks on 480 x 640, docs/benchmarks.md): there every paste gets fresh pages, and faulting them in one
scattered crop at a time costs far more than one sequential fill.

Host synchronisation, per call: one device-to-host copy (the boxes, to plan the chunks on the host)
and two host-to-device copies (the integer boxes, then every chunk's placement at once).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from structured.boxes.formats import check_boxes

DEFAULT_MEMORY_BOUND_BYTES = 256 * 2**20
MASK_PADDING = 1
# A chunk stops growing when its padded crops hold more than this many times their real pixels:
# padding costs interpolation and, on the CPU, faults in canvas pages that no box reaches.
MAX_PADDING_RATIO = 1.5
# Crop-sized buffers alive at once (two row gathers, lerped in place) and mask-height ones (the
# two column gathers and their lerp), per crop pixel and per column.
CROP_BUFFERS = 2
COLUMN_BUFFERS = 3


class Chunk(NamedTuple):
    """Crops pasted together: which mask each is, the top-left of its window, and the window's size."""

    mask_index: Tensor  # [n] int64
    top: Tensor  # [n] int64, window's first image row
    left: Tensor  # [n] int64, window's first image column
    rows: int
    cols: int


def paste_masks(masks: Tensor, boxes: Tensor, image_size: tuple[int, int],
                memory_bound_bytes: int = DEFAULT_MEMORY_BOUND_BYTES) -> Tensor:
    """Paste each mask into its box of an ``image_size`` canvas: ``[K, H, W]`` probabilities (see the module)."""
    if torch.jit.is_tracing():
        return paste_masks_whole(masks, boxes, image_size)
    masks = _masks_as_3d(masks)
    height, width = _check_image_size(image_size)
    side = masks.shape[-1] + 2 * MASK_PADDING
    _check_memory_bound(memory_bound_bytes, side, width, masks.element_size())
    boxes_on_host = _boxes_on_host(boxes, len(masks))
    canvas = torch.zeros((len(masks), height, width), dtype=masks.dtype, device=masks.device)
    if len(masks) == 0:
        return canvas
    integer_boxes = expanded_integer_boxes(boxes_on_host, masks.shape[-1])
    on_device = integer_boxes.to(masks.device)
    row_taps = axis_taps(on_device[:, 1], on_device[:, 3], height, side, masks.dtype)
    column_taps = axis_taps(on_device[:, 0], on_device[:, 2], width, side, masks.dtype)
    bordered = F.pad(masks, (MASK_PADDING,) * 4)
    for chunk in plan_chunks(integer_boxes.numpy(), (height, width), memory_bound_bytes,
                             CROP_BUFFERS * masks.element_size(), COLUMN_BUFFERS * side * masks.element_size(),
                             masks.device):
        crops = interpolate_crops(bordered, row_taps, column_taps, chunk)
        windows = canvas.unfold(1, chunk.rows, 1).unfold(2, chunk.cols, 1)  # [K, H-rows+1, W-cols+1, rows, cols]
        windows[chunk.mask_index, chunk.top, chunk.left] = crops
    return canvas


def paste_masks_whole(masks: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """``paste_masks`` as one chunk, every mask over the whole image, with no host planning: the path a traced
    graph takes (``structured.export``), the same values; memory ``K * (M + 2 + H) * W`` elements."""
    masks = masks[:, 0] if masks.ndim == 4 else masks
    height, width = image_size
    side = masks.shape[-1] + 2 * MASK_PADDING
    integer_boxes = expanded_integer_boxes(boxes, masks.shape[-1])
    row_taps = axis_taps(integer_boxes[:, 1], integer_boxes[:, 3], height, side, masks.dtype)
    column_taps = axis_taps(integer_boxes[:, 0], integer_boxes[:, 2], width, side, masks.dtype)
    everything = torch.arange(masks.shape[0], device=masks.device)
    whole_image = Chunk(everything, torch.zeros_like(everything), torch.zeros_like(everything), height, width)
    return interpolate_crops(F.pad(masks, (MASK_PADDING,) * 4), row_taps, column_taps, whole_image)


def _masks_as_3d(masks: Tensor) -> Tensor:
    if not isinstance(masks, Tensor) or not masks.is_floating_point():
        raise ValueError(f"masks must be a floating-point torch.Tensor, got {getattr(masks, 'dtype', type(masks))}")
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2] or masks.shape[1] == 0:
        raise ValueError(f"masks must have shape [K, M, M] or [K, 1, M, M] with M >= 1, got {list(masks.shape)}")
    return masks


def _check_image_size(image_size: tuple[int, int]) -> tuple[int, int]:
    if len(image_size) != 2 or any(int(side) != side or side < 1 for side in image_size):
        raise ValueError(f"image_size must be (height, width), two positive integers, got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def _check_memory_bound(memory_bound_bytes: int, side: int, width: int, element_size: int) -> None:
    smallest = (CROP_BUFFERS + COLUMN_BUFFERS * side) * width * element_size
    if memory_bound_bytes < smallest:
        raise ValueError(f"memory_bound_bytes must be at least {smallest} (one image row of crops for width "
                         f"{width} and {side - 2 * MASK_PADDING}-pixel masks), got {memory_bound_bytes}")


def _boxes_on_host(boxes: Tensor, count: int) -> Tensor:
    """The boxes copied to the CPU (the call's one device-to-host copy), checked there."""
    if isinstance(boxes, Tensor):
        boxes = boxes.detach().cpu()
    check_boxes(boxes)
    if boxes.shape != (count, 4):
        raise ValueError(f"boxes must have shape [K, 4] with K = {count} (one per mask), got {list(boxes.shape)}")
    if not bool(torch.isfinite(boxes).all()):
        raise ValueError("boxes contain infinite coordinates; expected finite numbers")
    return boxes


def expanded_integer_boxes(boxes: Tensor, mask_side: int) -> Tensor:
    """Boxes widened by ``(M + 2) / M`` about their centres (in their dtype), truncated to int64 ``[K, 4]``."""
    scale = (mask_side + 2 * MASK_PADDING) / mask_side
    x1, y1, x2, y2 = boxes.unbind(1)
    half_width, half_height = (x2 - x1) * 0.5 * scale, (y2 - y1) * 0.5 * scale
    centre_x, centre_y = (x2 + x1) * 0.5, (y2 + y1) * 0.5
    widened = torch.stack((centre_x - half_width, centre_y - half_height, centre_x + half_width,
                           centre_y + half_height), dim=1)
    return widened.to(torch.int64)


def plan_chunks(integer_boxes: np.ndarray, image_size: tuple[int, int], memory_bound_bytes: int,
                crop_bytes_per_pixel: int, column_bytes: int, device: torch.device) -> list[Chunk]:
    """Group the boxes' pasted regions (clipped to the image, cut into bands of rows) into chunks (on the host)."""
    height, width = image_size
    top, left, rows, cols = _pasted_regions(integer_boxes, image_size)
    band_rows = ((memory_bound_bytes - column_bytes * cols) // (crop_bytes_per_pixel * cols.clip(min=1))).clip(min=1)
    mask_index, band_top, band_height = _row_bands(top, rows, band_rows)
    if len(mask_index) == 0:
        return []
    order = np.argsort(-band_height, kind="stable")
    mask_index, band_top, band_height = mask_index[order], band_top[order], band_height[order]
    band_left, band_width = left[mask_index], cols[mask_index]
    ends = _chunk_ends(band_height, band_width, memory_bound_bytes, crop_bytes_per_pixel, column_bytes)
    starts = np.concatenate(([0], ends[:-1]))
    window_rows, window_cols = band_height[starts], np.maximum.reduceat(band_width, starts)
    chunk_sizes = ends - starts
    placement = np.stack((mask_index, np.minimum(band_top, height - np.repeat(window_rows, chunk_sizes)),
                          np.minimum(band_left, width - np.repeat(window_cols, chunk_sizes))))
    mask_index, top, left = torch.from_numpy(placement).to(device)  # one copy for every chunk
    return [Chunk(mask_index[start:end], top[start:end], left[start:end], int(chunk_rows), int(chunk_cols))
            for start, end, chunk_rows, chunk_cols in zip(starts, ends, window_rows, window_cols, strict=True)]


def _pasted_regions(integer_boxes: np.ndarray, image_size: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """First row, first column, rows and columns of each integer box clipped to the image (0 x 0 when outside)."""
    height, width = image_size
    top = integer_boxes[:, 1].clip(0, height)
    left = integer_boxes[:, 0].clip(0, width)
    rows = ((integer_boxes[:, 3] + 1).clip(0, height) - top).clip(min=0)
    cols = ((integer_boxes[:, 2] + 1).clip(0, width) - left).clip(min=0)
    return top, left, rows * (cols > 0), cols * (rows > 0)


def _row_bands(top: np.ndarray, rows: np.ndarray, band_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut each region into bands of at most ``band_rows`` rows: mask index, first row and height of each band."""
    band_count = (rows + band_rows - 1) // band_rows
    mask_index = np.repeat(np.arange(len(rows)), band_count)
    first_band = np.cumsum(band_count) - band_count
    offset = (np.arange(len(mask_index)) - first_band[mask_index]) * band_rows[mask_index]
    band_top = top[mask_index] + offset
    band_height = np.minimum(band_rows[mask_index], rows[mask_index] - offset)
    return mask_index, band_top, band_height


def _chunk_ends(band_height: np.ndarray, band_width: np.ndarray, memory_bound_bytes: int,
                crop_bytes_per_pixel: int, column_bytes: int) -> np.ndarray:
    """Where each chunk of the bands (tallest first) ends: within the memory bound and the padding ratio."""
    ends = []
    start = 0
    while start < len(band_height):
        start += _chunk_length(band_height[start:], band_width[start:], memory_bound_bytes, crop_bytes_per_pixel,
                               column_bytes)
        ends.append(start)
    return np.array(ends)


def _chunk_length(band_height: np.ndarray, band_width: np.ndarray, memory_bound_bytes: int,
                  crop_bytes_per_pixel: int, column_bytes: int) -> int:
    """How many of the next bands form one chunk: the longest run within the memory bound and the padding ratio."""
    count = np.arange(1, len(band_height) + 1)
    chunk_cols = np.maximum.accumulate(band_width)
    padded_pixels = count * int(band_height[0]) * chunk_cols
    real_pixels = np.cumsum(band_height * band_width)
    chunk_bytes = padded_pixels * crop_bytes_per_pixel + count * chunk_cols * column_bytes
    fits = (chunk_bytes <= memory_bound_bytes) & (padded_pixels <= MAX_PADDING_RATIO * real_pixels)
    return max(int(np.cumprod(fits).sum()), 1)


class AxisTaps(NamedTuple):
    """Bilinear taps of every image pixel along one axis, per mask: ``[K, length]``."""

    first: Tensor  # int64 source index; the second tap is the next one (clamped to the mask)
    weight: Tensor  # weight of the second tap


def axis_taps(box_start: Tensor, box_end: Tensor, length: int, side: int, dtype: torch.dtype) -> AxisTaps:
    """The taps of pixels ``0..length-1`` for masks of ``side`` pixels resized onto ``[box_start, box_end]``.

    The box (inclusive integer bounds) holds the bordered mask resized to ``box_end - box_start + 1``
    pixels as ``F.interpolate(align_corners=False)`` resizes; pixels outside it get source index 0, the
    zero border, with weight 0, so they come out 0. The source coordinate ``scale * (j + 0.5) - 0.5`` is
    rounded once, as PyTorch's fused multiply-add rounds it.
    """
    compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    resized = (box_end - box_start + 1).clamp(min=1).to(compute_dtype)
    scale = torch.full_like(resized, side) / resized  # not side / tensor: that is side * reciprocal
    position = torch.arange(length, device=box_start.device) - box_start[:, None]  # [K, length]
    source = (scale.double()[:, None] * (position.double() + 0.5) - 0.5).to(compute_dtype).clamp(min=0)
    first = source.floor().clamp(max=side - 1)
    weight = (source - first).clamp(0, 1)
    inside = (position >= 0) & (position <= (box_end - box_start)[:, None])
    return AxisTaps(first.to(torch.int64) * inside, (weight * inside).to(dtype))


def interpolate_crops(bordered: Tensor, row_taps: AxisTaps, column_taps: AxisTaps, chunk: Chunk) -> Tensor:
    """The resized masks over each chunk window, zero outside their boxes: ``[n, rows, cols]``."""
    side = bordered.shape[-1]
    n = chunk.mask_index.shape[0]  # not len(): a traced graph follows the shape
    mask_index = chunk.mask_index[:, None]
    columns = chunk.left[:, None] + torch.arange(chunk.cols, device=bordered.device)  # [n, cols]
    column_first = column_taps.first[mask_index, columns][:, None, :]  # [n, 1, cols]
    column_second = (column_first + 1).clamp(max=side - 1)
    masks = bordered[chunk.mask_index]  # [n, side, side]
    column_shape = (n, side, chunk.cols)
    along_columns = torch.lerp(torch.gather(masks, 2, column_first.expand(column_shape)),
                               torch.gather(masks, 2, column_second.expand(column_shape)),
                               column_taps.weight[mask_index, columns][:, None, :])  # [n, side, cols]
    rows = chunk.top[:, None] + torch.arange(chunk.rows, device=bordered.device)  # [n, rows]
    row_first = row_taps.first[mask_index, rows]
    row_offset = torch.arange(n, device=bordered.device)[:, None] * side
    mask_rows = along_columns.reshape(n * side, chunk.cols)
    crops = mask_rows.index_select(0, (row_offset + row_first).flatten()).view(n, chunk.rows, chunk.cols)
    second_rows = (row_offset + (row_first + 1).clamp(max=side - 1)).flatten()
    second = mask_rows.index_select(0, second_rows).view(n, chunk.rows, chunk.cols)
    return crops.lerp_(second, row_taps.weight[mask_index, rows][:, :, None])
