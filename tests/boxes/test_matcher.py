"""IoU matcher and balanced sampler against torchvision's Matcher and BalancedPositiveNegativeSampler."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher
from torchvision.ops import box_iou

from structured.boxes.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, BalancedSampler, IoUMatcher


def random_boxes(generator: torch.Generator, count: int, extent: float = 100.0) -> torch.Tensor:
    corners = torch.rand(count, 2, generator=generator) * extent
    sizes = torch.rand(count, 2, generator=generator) * extent / 3 + 1
    return torch.cat((corners, corners + sizes), dim=1)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    ("high", "low", "low_quality"), [(0.7, 0.3, True), (0.5, 0.5, False), (0.6, 0.4, False)]
)
def test_matcher_equals_torchvision_on_random_boxes(seed, high, low, low_quality):
    generator = torch.Generator().manual_seed(seed)
    gt = random_boxes(generator, 1 + seed * 3)
    anchors = random_boxes(generator, 500)
    quality = box_iou(gt, anchors)
    expected = Matcher(high, low, allow_low_quality_matches=low_quality)(quality.clone())
    assert torch.equal(IoUMatcher(high, low, low_quality)(quality), expected)


@pytest.mark.parametrize("low_quality", [True, False])
def test_matcher_with_ties_equals_torchvision(low_quality):
    quality = torch.tensor([[0.2, 0.2, 0.1, 0.0, 0.8], [0.2, 0.5, 0.5, 0.35, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    expected = Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)(quality.clone())
    assert torch.equal(IoUMatcher(0.7, 0.3, low_quality)(quality), expected)


def test_matcher_labels_by_threshold():
    quality = torch.tensor([[0.9, 0.5, 0.1]])
    matches = IoUMatcher(0.7, 0.3)(quality)
    assert matches.tolist() == [0, BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD]


def test_matcher_without_ground_truth_makes_everything_background():
    matches = IoUMatcher(0.7, 0.3, True)(torch.zeros(0, 7))
    assert matches.tolist() == [BELOW_LOW_THRESHOLD] * 7
    assert IoUMatcher(0.7, 0.3)(torch.zeros(3, 0)).shape == (0,)


def test_matcher_rejects_bad_arguments():
    with pytest.raises(ValueError, match="low_threshold"):
        IoUMatcher(0.3, 0.7)
    with pytest.raises(ValueError, match="quality"):
        IoUMatcher(0.7, 0.3)(torch.zeros(5))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("batch", "fraction"), [(256, 0.5), (512, 0.25), (8, 1.0), (16, 0.0)])
def test_sampler_draws_what_torchvision_draws_with_the_same_seed(seed, batch, fraction):
    generator = torch.Generator().manual_seed(seed)
    labels = [torch.randint(-1, 3, (n,), generator=generator) for n in (1000, 30, 0)]
    torch.manual_seed(seed)
    expected_pos, expected_neg = BalancedPositiveNegativeSampler(batch, fraction)(labels)
    torch.manual_seed(seed)
    positive, negative = BalancedSampler(batch, fraction)(labels)
    for mine, mask in zip(positive + negative, expected_pos + expected_neg, strict=True):
        assert torch.equal(torch.sort(mine).values, torch.where(mask.bool())[0])


def test_sampler_respects_budget_and_fraction():
    labels = torch.cat(
        (torch.ones(300, dtype=torch.int64), torch.zeros(1000, dtype=torch.int64), -torch.ones(50))
    )
    positive, negative = BalancedSampler(256, 0.25).sample(labels.long())
    assert positive.numel() == 64 and negative.numel() == 192
    assert bool((labels[positive] >= 1).all()) and bool((labels[negative] == 0).all())
    assert positive.unique().numel() == 64 and negative.unique().numel() == 192


def test_sampler_fills_with_negatives_when_positives_are_few():
    labels = torch.tensor([1, 0, 0, 0, -1, 2])
    positive, negative = BalancedSampler(5, 0.5).sample(labels)
    assert sorted(positive.tolist()) == [0, 5]
    assert sorted(negative.tolist()) == [1, 2, 3]


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="positive_fraction"):
        BalancedSampler(10, 1.5)
    with pytest.raises(ValueError, match="batch_size_per_image"):
        BalancedSampler(0, 0.5)
