"""ResumableSampler against torch's DistributedSampler; lr_factor against torch's LR schedulers."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler

from structured.data.loading import ResumableSampler
from structured.engine.schedule import lr_factor


@pytest.mark.parametrize("size", [1, 7, 10, 33])
@pytest.mark.parametrize("replicas", [1, 2, 3, 8])
@pytest.mark.parametrize("shuffle", [True, False])
def test_order_equals_distributed_sampler(size: int, replicas: int, shuffle: bool) -> None:
    for rank in range(replicas):
        ours = ResumableSampler(size, shuffle=shuffle, seed=11, rank=rank, num_replicas=replicas)
        reference = DistributedSampler(range(size), num_replicas=replicas, rank=rank, shuffle=shuffle, seed=11)
        for epoch in (0, 1, 5):
            ours.set_epoch(epoch)
            reference.set_epoch(epoch)
            assert list(ours) == list(reference)
            assert len(ours) == len(reference)


def test_skip_starts_mid_epoch_and_the_order_depends_only_on_seed_and_epoch() -> None:
    sampler = ResumableSampler(20, seed=3)
    full = sampler.epoch_order(4)
    sampler.set_epoch(4, skip=6)
    assert list(sampler) == full[6:] and len(sampler) == 14
    assert ResumableSampler(20, seed=3).epoch_order(4) == full
    assert sampler.epoch_order(5) != full
    with pytest.raises(ValueError, match="skip must be in 0..20"):
        sampler.set_epoch(0, skip=21)


def _torch_factors(scheduler_factory, steps: int) -> list[float]:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = scheduler_factory(optimizer)
    factors = []
    for _ in range(steps):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return factors


def test_warmup_then_step_matches_torch_linear_and_multistep() -> None:
    def factory(optimizer):
        return torch.optim.lr_scheduler.ChainedScheduler([
            torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=10),
            torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[30, 45], gamma=0.2),
        ])

    expected = _torch_factors(factory, 60)
    ours = [lr_factor(step, 60, "step", [30, 45], 0.2, warmup_iterations=10, warmup_factor=0.01) for step in range(60)]
    assert ours == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("min_factor", [0.0, 0.2])
def test_cosine_matches_torch_cosine_annealing(min_factor: float) -> None:
    def factory(optimizer):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=50, eta_min=min_factor)

    expected = _torch_factors(factory, 60)
    ours = [lr_factor(step, 50, "cosine", min_factor=min_factor) for step in range(60)]
    assert ours[:51] == pytest.approx(expected[:51], rel=1e-6, abs=1e-9)
    assert ours[50:] == pytest.approx([min_factor] * 10)
