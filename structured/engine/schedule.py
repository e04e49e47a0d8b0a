"""Learning-rate schedule as a pure function of where training stands: linear warm-up, then step or cosine.

Two forms of the same schedule: ``lr_factor`` follows the optimizer step over a number of steps, and
``progress_lr_factor`` follows a fraction of the run done (``train.time_limit`` anneals over a wall-clock
budget: progress = elapsed seconds / budget seconds). Warm-up counts steps in both. Because the factor
depends only on the step and the progress, resuming them resumes the schedule exactly; there is no
scheduler state to save.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

SCHEDULES = ("step", "cosine", "constant")


def progress_lr_factor(progress: float, iteration: int, schedule: str = "step",
                       milestones: Sequence[float] = (), gamma: float = 0.1, warmup_iterations: int = 0,
                       warmup_factor: float = 0.001, min_factor: float = 0.0) -> float:
    """Multiplier of the base learning rate at fraction ``progress`` of the run and optimizer step ``iteration``.

    - warm-up: for ``iteration < warmup_iterations`` (steps, 0-based) the factor rises linearly from
      ``warmup_factor`` to 1 and multiplies the schedule below;
    - ``step``: ``gamma ** (number of milestones <= progress)`` (milestones as fractions of the run);
    - ``cosine``: ``min_factor + (1 - min_factor) * 0.5 * (1 + cos(pi * min(progress, 1)))``, from 1 down to
      ``min_factor``;
    - ``constant``: 1.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "step":
        factor = gamma ** sum(1 for milestone in milestones if milestone <= progress)
    elif schedule == "cosine":
        factor = min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    else:
        factor = 1.0
    if iteration < warmup_iterations:
        factor *= warmup_factor + (1.0 - warmup_factor) * iteration / warmup_iterations
    return factor


def lr_factor(iteration: int, total_iterations: int, schedule: str = "step", milestones: Sequence[int] = (),
              gamma: float = 0.1, warmup_iterations: int = 0, warmup_factor: float = 0.001,
              min_factor: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimizer step ``iteration`` (0-based) of ``total_iterations``.

    ``progress_lr_factor`` at progress ``iteration / total_iterations``, with ``milestones`` in steps: step
    decays by ``gamma`` at each milestone, cosine is torch's ``CosineAnnealingLR`` with
    ``eta_min = min_factor * lr`` (staying at ``min_factor`` after ``total_iterations``).
    """
    steps = max(1, total_iterations)
    return progress_lr_factor(iteration / steps, iteration, schedule, [milestone / steps for milestone in milestones],
                              gamma, warmup_iterations, warmup_factor, min_factor)
