"""The segmentation losses against a direct per-pixel computation, with ignored and all-ignored pixels."""

from __future__ import annotations

import math

import pytest
import torch

from structured.segmentation.losses import binary_losses, multiclass_losses, segmentation_losses
from structured.types import IGNORE_INDEX


def random_case(classes: int, ignore_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, 5, 7, generator=generator) * 3
    target = torch.randint(0, max(classes, 2), (2, 5, 7), generator=generator)
    target[torch.rand(2, 5, 7, generator=generator) < ignore_fraction] = IGNORE_INDEX
    return logits, target


def direct_dice(probabilities: list[list[float]], truths: list[list[float]]) -> float:
    """Mean over classes of 1 - (2 sum pg + 1) / (sum p + sum g + 1), from per-pixel lists per class."""
    losses = []
    for p, g in zip(probabilities, truths, strict=True):
        overlap = sum(a * b for a, b in zip(p, g, strict=True))
        losses.append(1 - (2 * overlap + 1) / (sum(p) + sum(g) + 1))
    return sum(losses) / len(losses)


def direct_multiclass(logits: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    classes = logits.shape[1]
    ce, count = 0.0, 0
    probabilities, truths = [[] for _ in range(classes)], [[] for _ in range(classes)]
    for b in range(target.shape[0]):
        for y in range(target.shape[1]):
            for x in range(target.shape[2]):
                label = int(target[b, y, x])
                if label == IGNORE_INDEX:
                    continue
                scores = [float(v) for v in logits[b, :, y, x]]
                normaliser = math.log(sum(math.exp(s) for s in scores))
                ce += normaliser - scores[label]
                count += 1
                for c in range(classes):
                    probabilities[c].append(math.exp(scores[c] - normaliser))
                    truths[c].append(float(c == label))
    return ce / max(count, 1), direct_dice(probabilities, truths)


def direct_binary(logits: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    bce, count, probabilities, truths = 0.0, 0, [], []
    for logit, label in zip(logits[:, 0].flatten().tolist(), target.flatten().tolist(), strict=True):
        if label == IGNORE_INDEX:
            continue
        p = 1 / (1 + math.exp(-logit))
        bce -= math.log(p) if label == 1 else math.log(1 - p)
        count += 1
        probabilities.append(p)
        truths.append(float(label == 1))
    return bce / max(count, 1), direct_dice([probabilities], [truths])


@pytest.mark.parametrize("ignore_fraction", [0.0, 0.3, 1.0])
def test_multiclass_losses_match_the_direct_computation(ignore_fraction):
    logits, target = random_case(4, ignore_fraction)
    losses = multiclass_losses(logits, target)
    ce, dice = direct_multiclass(logits, target)
    assert losses["loss_ce"].item() == pytest.approx(ce, rel=1e-5, abs=1e-6)
    assert losses["loss_dice"].item() == pytest.approx(dice, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("ignore_fraction", [0.0, 0.3, 1.0])
def test_binary_losses_match_the_direct_computation(ignore_fraction):
    logits, target = random_case(1, ignore_fraction, seed=1)
    losses = binary_losses(logits, target)
    ce, dice = direct_binary(logits, target)
    assert losses["loss_ce"].item() == pytest.approx(ce, rel=1e-5, abs=1e-6)
    assert losses["loss_dice"].item() == pytest.approx(dice, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("classes", [1, 3])
def test_all_ignored_targets_give_zero_losses_with_zero_gradients(classes):
    logits = torch.randn(2, classes, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGNORE_INDEX)
    losses = segmentation_losses(logits, target)
    assert set(losses) == {"loss_ce", "loss_dice"}
    assert all(value.item() == 0 for value in losses.values())
    sum(losses.values()).backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_segmentation_losses_choose_binary_for_one_channel():
    logits, target = random_case(1, 0.2, seed=2)
    assert segmentation_losses(logits, target)["loss_ce"] == binary_losses(logits, target)["loss_ce"]
    logits, target = random_case(3, 0.2, seed=2)
    assert segmentation_losses(logits, target)["loss_ce"] == multiclass_losses(logits, target)["loss_ce"]


def test_a_perfect_prediction_has_low_losses():
    target = torch.randint(0, 3, (1, 6, 6))
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 30
    losses = multiclass_losses(logits, target)
    assert losses["loss_ce"].item() < 1e-6 and losses["loss_dice"].item() < 0.05
