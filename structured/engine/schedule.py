"""Learning-rate schedule as a pure function of the optimizer step: linear warm-up, then step or cosine.

Because the factor depends only on the iteration, resuming the iteration resumes the schedule exactly;
there is no scheduler state to save.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

SCHEDULES = ("step", "cosine", "constant")


def lr_factor(iteration: int, total_iterations: int, schedule: str = "step", milestones: Sequence[int] = (),
              gamma: float = 0.1, warmup_iterations: int = 0, warmup_factor: float = 0.001,
              min_factor: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimizer step ``iteration`` (0-based).

    - warm-up: for ``iteration < warmup_iterations`` the factor rises linearly from ``warmup_factor`` to 1
      and multiplies the schedule below;
    - ``step``: ``gamma ** (number of milestones <= iteration)`` (milestones in iterations);
    - ``cosine``: ``min_factor + (1 - min_factor) * 0.5 * (1 + cos(pi * iteration / total_iterations))``,
      from 1 down to ``min_factor`` (torch's ``CosineAnnealingLR`` with ``eta_min = min_factor * lr``);
    - ``constant``: 1.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "step":
        factor = gamma ** sum(1 for milestone in milestones if milestone <= iteration)
    elif schedule == "cosine":
        progress = min(iteration, total_iterations) / max(1, total_iterations)
        factor = min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        factor = 1.0
    if iteration < warmup_iterations:
        progress = iteration / warmup_iterations
        factor *= warmup_factor + (1.0 - warmup_factor) * progress
    return factor
