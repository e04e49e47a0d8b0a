"""Assigning ground-truth boxes to anchors or proposals, and sampling a balanced training mini-batch.

``IoUMatcher`` turns a ``[M, N]`` quality matrix (IoU of M ground-truth boxes with N anchors) into one
label per anchor: the index of its ground-truth box when its best IoU is at least ``high_threshold``,
``BELOW_LOW_THRESHOLD`` (-1, background) when it is below ``low_threshold``, ``BETWEEN_THRESHOLDS``
(-2, ignored) otherwise. With ``allow_low_quality_matches`` every ground-truth box also keeps the
anchors that overlap it best (ties included), whatever their IoU, so that no object is left without a
positive anchor. With no ground-truth box every anchor is background.

``DefaultBoxMatcher`` is SSD's rule (Liu et al. 2016, section 2.2): every default box whose best IoU reaches
``threshold`` (0.5) takes that ground truth, and each ground-truth box also takes the default box it
overlaps best (that box is assigned to it, overriding its own best match), so every object has at least
one positive. There is no ignored band: the rest are background.

``BalancedSampler`` draws, per image, at most ``batch_size_per_image`` labels of which at most
``positive_fraction`` are positive (label >= 1) and the rest negative (label 0); label -1 is never
drawn. It uses ``torch.randperm`` (seed with ``torch.manual_seed``).
"""

from __future__ import annotations

import torch
from torch import Tensor

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


class IoUMatcher:
    """Match each of N predictions to at most one of M ground-truth boxes by a ``[M, N]`` quality matrix.

    Args:
        high_threshold: quality at or above which a prediction is matched (foreground).
        low_threshold: quality below which a prediction is background; in between it is ignored.
        allow_low_quality_matches: also match, for each ground-truth box, its best predictions.
    """

    def __init__(
        self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False
    ) -> None:
        if low_threshold > high_threshold:
            raise ValueError(
                f"low_threshold ({low_threshold}) must not exceed high_threshold ({high_threshold})"
            )
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(high_threshold={self.high_threshold}, low_threshold={self.low_threshold}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )

    def __call__(self, quality: Tensor) -> Tensor:
        """``[N]`` int64: matched ground-truth index, ``BELOW_LOW_THRESHOLD`` or ``BETWEEN_THRESHOLDS``."""
        if quality.ndim != 2:
            raise ValueError(
                f"quality must be a [num_gt, num_predictions] matrix, got shape {list(quality.shape)}"
            )
        num_gt, num_predictions = quality.shape
        if num_gt == 0 or num_predictions == 0:
            return torch.full(
                (num_predictions,), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=quality.device
            )
        best_quality, best_gt = quality.max(dim=0)
        matches = best_gt.clone()
        matches[best_quality < self.low_threshold] = BELOW_LOW_THRESHOLD
        matches[(best_quality >= self.low_threshold) & (best_quality < self.high_threshold)] = (
            BETWEEN_THRESHOLDS
        )
        if self.allow_low_quality_matches:
            best_for_each_gt = quality.max(dim=1, keepdim=True).values
            is_best_for_some_gt = (quality == best_for_each_gt).any(dim=0)
            matches = torch.where(is_best_for_some_gt, best_gt, matches)
        return matches


class DefaultBoxMatcher(IoUMatcher):
    """SSD's matching of ground-truth boxes to default boxes (see the module docstring).

    Args:
        threshold: IoU at or above which a default box takes its best ground-truth box.
    """

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__(threshold, threshold, allow_low_quality_matches=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threshold={self.high_threshold})"

    def __call__(self, quality: Tensor) -> Tensor:
        """``[N]`` int64: the ground-truth index of each default box, or ``BELOW_LOW_THRESHOLD``."""
        matches = super().__call__(quality)
        if quality.shape[0] == 0 or quality.shape[1] == 0:
            return matches
        best_box_of_each_gt = quality.max(dim=1).indices
        matches[best_box_of_each_gt] = torch.arange(quality.shape[0], device=quality.device)
        return matches


class BalancedSampler:
    """Sample positives (label >= 1) and negatives (label 0) per image in a fixed proportion.

    Args:
        batch_size_per_image: number of labels drawn per image (fewer when not enough are available).
        positive_fraction: largest share of positives in the draw; negatives fill the rest.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        if batch_size_per_image <= 0:
            raise ValueError(f"batch_size_per_image must be positive, got {batch_size_per_image}")
        if not 0 <= positive_fraction <= 1:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(batch_size_per_image={self.batch_size_per_image}, "
            f"positive_fraction={self.positive_fraction})"
        )

    def sample(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Indices ``(positive, negative)`` drawn from one image's ``[N]`` labels (-1 ignored, 0, >= 1)."""
        positive = torch.where(labels >= 1)[0]
        negative = torch.where(labels == 0)[0]
        num_positive = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
        num_negative = min(negative.numel(), self.batch_size_per_image - num_positive)
        positive = positive[torch.randperm(positive.numel(), device=labels.device)[:num_positive]]
        negative = negative[torch.randperm(negative.numel(), device=labels.device)[:num_negative]]
        return positive, negative

    def __call__(self, labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per-image lists of positive and negative indices for a batch of label vectors."""
        drawn = [self.sample(labels_per_image) for labels_per_image in labels]
        return [positive for positive, _ in drawn], [negative for _, negative in drawn]
