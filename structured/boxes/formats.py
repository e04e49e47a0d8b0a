"""Box forms and the elementary operations on them.

Inside the package boxes are ``xyxy`` in absolute pixels with continuous coordinates (``x2 = x + w``,
no "+1"). The other forms are converted at the edges:

- ``xywh``: top-left corner, width, height (COCO);
- ``cxcywh``: centre, width, height (SSD, DETR);
- normalised: any of the above divided by the image width/height, coordinates in [0, 1];
- corners: 8 coordinates ``(x1, y1, ..., x4, y4)`` of a quadrilateral (DOTA, text detection),
  reduced to the tight axis-aligned box.

Every function works on tensors of shape ``[..., 4]`` (any leading dims), keeps dtype and device, and
is differentiable wherever the operation is (``clip_boxes`` passes no gradient to clipped coordinates).
A box with ``x2 < x1`` or ``y2 < y1`` is *degenerate*: it has area 0 here and is removed by
``remove_small_boxes``, never an error.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")

EQUAL_NAN_CHECK_MAX_ELEMENTS = 2048
"""Up to this many values ``has_nan`` compares a tensor with itself; above, a reduction is faster."""


def check_boxes(boxes: Tensor, name: str = "boxes") -> None:
    """Raise ``ValueError`` unless ``boxes`` is a floating tensor of shape ``[..., 4]`` without NaN."""
    if not isinstance(boxes, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [..., 4], got {type(boxes).__name__}")
    if boxes.ndim == 0 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [..., 4], got {list(boxes.shape)}")
    if not boxes.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {boxes.dtype}")
    if has_nan(boxes):
        raise ValueError(f"{name} contains NaN coordinates; expected finite numbers")


def has_nan(values: Tensor) -> bool:
    """Whether a tensor holds a NaN (integer tensors hold none).

    Small tensors are compared with themselves (``torch.equal``; NaN is the one value unequal to itself):
    one pass answering a Python bool, 0.8 us against 2.3 us for a reduction read back as a float, and it
    does not slow the op that follows the way a reduction did (docs/benchmarks.md, "CPU NMS"). Above
    ``EQUAL_NAN_CHECK_MAX_ELEMENTS`` that comparison is the slower (58 against 16 us at 64k values), so the
    NaN is found by ``amax``, which NaN propagates through.
    """
    if values.numel() <= EQUAL_NAN_CHECK_MAX_ELEMENTS:
        return not torch.equal(values, values)
    return math.isnan(values.amax().item())


def _check_format(fmt: str, argument: str) -> None:
    if fmt not in BOX_FORMATS:
        raise ValueError(f"{argument} must be one of {BOX_FORMATS}, got {fmt!r}")


def _to_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    a, b, c, d = boxes.unbind(-1)
    if fmt == "xywh":
        return torch.stack((a, b, a + c, b + d), dim=-1)
    if fmt == "cxcywh":
        return torch.stack((a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d), dim=-1)
    return boxes


def _from_xyxy(boxes: Tensor, fmt: str) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    if fmt == "xywh":
        return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)
    if fmt == "cxcywh":
        return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)
    return boxes


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert ``[..., 4]`` boxes between ``xyxy``, ``xywh`` and ``cxcywh``."""
    _check_format(in_fmt, "in_fmt")
    _check_format(out_fmt, "out_fmt")
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [..., 4], got {list(boxes.shape)}")
    if in_fmt == out_fmt:
        return boxes.clone()
    return _from_xyxy(_to_xyxy(boxes, in_fmt), out_fmt)


def _image_scale(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    height, width = image_size
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be (height, width) with positive sides, got {tuple(image_size)}")
    return boxes.new_tensor([width, height, width, height])


def normalize_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Divide pixel boxes (any form) by the image ``(height, width)``: coordinates in [0, 1]."""
    return boxes / _image_scale(boxes, image_size)


def denormalize_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Multiply normalised boxes (any form) by the image ``(height, width)``: pixel coordinates."""
    return boxes * _image_scale(boxes, image_size)


def corners_to_boxes(corners: Tensor, out_fmt: str = "xyxy") -> Tensor:
    """Tight axis-aligned boxes around quadrilaterals given as ``[..., 8]`` or ``[..., 4, 2]`` corners."""
    _check_format(out_fmt, "out_fmt")
    if corners.shape[-2:] != (4, 2):
        if corners.shape[-1] != 8:
            raise ValueError(f"corners must have shape [..., 8] or [..., 4, 2], got {list(corners.shape)}")
        corners = corners.unflatten(-1, (4, 2))
    top_left = corners.amin(dim=-2)
    bottom_right = corners.amax(dim=-2)
    return _from_xyxy(torch.cat((top_left, bottom_right), dim=-1), out_fmt)


def boxes_to_corners(boxes: Tensor) -> Tensor:
    """The 8 corner coordinates ``(x1, y1, x2, y1, x2, y2, x1, y2)`` of ``xyxy`` boxes, clockwise."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1, y1, x2, y1, x2, y2, x1, y2), dim=-1)


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clip ``xyxy`` boxes to an image of ``(height, width)``."""
    height, width = image_size
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(
        (x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width), y2.clamp(0, height)), dim=-1
    )


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``xyxy`` boxes, shape ``[...]``; degenerate boxes have area 0."""
    widths = (boxes[..., 2] - boxes[..., 0]).clamp(min=0)
    heights = (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    return widths * heights


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the ``[N, 4]`` ``xyxy`` boxes whose width and height are both at least ``min_size``.

    Degenerate boxes (negative width or height) are always removed.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {list(boxes.shape)}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    keep = (widths >= min_size) & (heights >= min_size) & (widths >= 0) & (heights >= 0)
    return keep.nonzero().squeeze(1)
