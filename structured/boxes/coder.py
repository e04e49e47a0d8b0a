"""Box encoding: the regression targets of R-CNN heads (weighted deltas) and SSD (variances).

A box ``b`` is encoded relative to an anchor ``a`` (both ``xyxy``) as the deltas

    dx = wx * (cx_b - cx_a) / w_a        dw = ww * log(w_b / w_a)
    dy = wy * (cy_b - cy_a) / h_a        dh = wh * log(h_b / h_a)

and decoding inverts this, after clamping ``dw / ww`` and ``dh / wh`` at ``clamp`` so that ``exp`` cannot
overflow (a decoded box is at most ``exp(clamp)`` times its anchor's size, 62.5 by default). SSD's
variances ``(v0, v1)`` are the same coding with weights ``(1/v0, 1/v0, 1/v1, 1/v1)``.

Contract: ``encode`` and ``decode`` work elementwise on ``[..., 4]`` tensors whose leading dims broadcast,
keep dtype and device, are differentiable, and are exact inverses (up to rounding) whenever the size
ratio stays within the clamp. Class-specific deltas of an R-CNN box head, ``[N, K*4]`` for ``N``
proposals, are decoded by broadcasting: ``decode(deltas.view(N, K, 4), proposals[:, None, :])`` gives
boxes ``[N, K, 4]``. Boxes or anchors with zero or negative width or height give non-finite deltas
(``log 0``, division by 0) exactly as torchvision's coder does; callers mask such rows out (for example
the dummy targets of background anchors) rather than train on them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from structured.boxes.formats import check_boxes

DEFAULT_CLAMP = math.log(1000.0 / 16)


def _check_positive_numbers(values: Sequence[float], length: int, name: str) -> tuple[float, ...]:
    values = tuple(float(value) for value in values)
    if len(values) != length or not all(math.isfinite(value) and value > 0 for value in values):
        raise ValueError(f"{name} must be {length} positive finite numbers, got {values}")
    return values


def _check_deltas(deltas: Tensor) -> None:
    if isinstance(deltas, Tensor) and deltas.ndim > 0 and deltas.shape[-1] % 4 == 0 and deltas.shape[-1] > 4:
        raise ValueError(
            f"deltas must have shape [..., 4], got {list(deltas.shape)}; for class-specific deltas "
            "[N, K*4] pass deltas.view(N, K, 4) with anchors[:, None, :]"
        )
    check_boxes(deltas, "deltas")


def _check_broadcastable(first: Tensor, second: Tensor, first_name: str, second_name: str) -> None:
    try:
        torch.broadcast_shapes(first.shape, second.shape)
    except RuntimeError as error:
        raise ValueError(
            f"{first_name} {list(first.shape)} and {second_name} {list(second.shape)} must broadcast "
            "(same or size-1 leading dims, last dim 4)"
        ) from error


def _centers_and_sizes(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * widths, boxes[..., 1] + 0.5 * heights, widths, heights


class BoxCoder:
    """Encode ``xyxy`` boxes as deltas relative to anchors, and decode deltas back into boxes.

    Args:
        weights: ``(wx, wy, ww, wh)`` multiplying the centre and log-size deltas; torchvision's Faster
            R-CNN uses ``(1, 1, 1, 1)`` in the RPN and ``(10, 10, 5, 5)`` in the box head.
        clamp: upper bound applied to the unweighted log-size deltas before ``exp`` in ``decode``.
    """

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), clamp: float = DEFAULT_CLAMP) -> None:
        self.weights = _check_positive_numbers(weights, 4, "weights")
        if math.isnan(clamp) or clamp <= 0:
            raise ValueError(f"clamp must be a positive number (math.inf to disable), got {clamp}")
        self.clamp = float(clamp)

    @classmethod
    def from_variances(
        cls, variances: Sequence[float] = (0.1, 0.2), clamp: float = DEFAULT_CLAMP
    ) -> BoxCoder:
        """The SSD coder: centre deltas divided by ``variances[0]``, log-size deltas by ``variances[1]``."""
        center_variance, size_variance = _check_positive_numbers(variances, 2, "variances")
        weights = (1 / center_variance, 1 / center_variance, 1 / size_variance, 1 / size_variance)
        return cls(weights, clamp)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weights={self.weights}, clamp={self.clamp})"

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """Deltas ``[..., 4]`` that turn ``anchors`` into ``boxes`` (both ``[..., 4]``, broadcastable)."""
        check_boxes(boxes, "boxes")
        check_boxes(anchors, "anchors")
        _check_broadcastable(boxes, anchors, "boxes", "anchors")
        wx, wy, ww, wh = self.weights
        box_x, box_y, box_w, box_h = _centers_and_sizes(boxes)
        anchor_x, anchor_y, anchor_w, anchor_h = _centers_and_sizes(anchors)
        dx = wx * (box_x - anchor_x) / anchor_w
        dy = wy * (box_y - anchor_y) / anchor_h
        dw = ww * torch.log(box_w / anchor_w)
        dh = wh * torch.log(box_h / anchor_h)
        return torch.stack((dx, dy, dw, dh), dim=-1)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes ``[..., 4]`` obtained by applying ``deltas`` to ``anchors`` (both ``[..., 4]``, broadcastable).

        For class-specific deltas ``[N, K*4]``, call ``decode(deltas.view(N, K, 4), anchors[:, None, :])``.
        """
        _check_deltas(deltas)
        check_boxes(anchors, "anchors")
        _check_broadcastable(deltas, anchors, "deltas", "anchors")
        wx, wy, ww, wh = self.weights
        anchor_x, anchor_y, anchor_w, anchor_h = _centers_and_sizes(anchors)
        center_x = deltas[..., 0] / wx * anchor_w + anchor_x
        center_y = deltas[..., 1] / wy * anchor_h + anchor_y
        half_w = 0.5 * torch.exp((deltas[..., 2] / ww).clamp(max=self.clamp)) * anchor_w
        half_h = 0.5 * torch.exp((deltas[..., 3] / wh).clamp(max=self.clamp)) * anchor_h
        return torch.stack(
            (center_x - half_w, center_y - half_h, center_x + half_w, center_y + half_h), dim=-1
        )
