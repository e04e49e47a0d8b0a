"""Learning-rate schedule as a pure function of the optimizer step: linear warm-up, then step or cosine.

Because the factor depends only on the iteration, resuming the iteration resumes the schedule exactly;
there is no scheduler state to save.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

SCHEDULES = ("step", "cosine", "constant")


def lr_factor(iteration: int, total_iterations: int, schedule: str = "step", milestones: Sequence[int] = (),
              gamma: float = 0.1, warmup_iterations: int = 0, warmup_factor: float = 0.001) -> float:
    """Multiplier of the base learning rate at optimizer step ``iteration`` (0-based).

    - warm-up: for ``iteration < warmup_iterations`` the factor rises linearly from ``warmup_factor`` to 1
      and multiplies the schedule below;
    - ``step``: ``gamma ** (number of milestones <= iteration)`` (milestones in iterations);
    - ``cosine``: ``0.5 * (1 + cos(pi * iteration / total_iterations))``, from 1 down to 0;
    - ``constant``: 1.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "step":
        factor = gamma ** sum(1 for milestone in milestones if milestone <= iteration)
    elif schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * min(iteration, total_iterations) / max(1, total_iterations)))
    else:
        factor = 1.0
    if iteration < warmup_iterations:
        progress = iteration / warmup_iterations
        factor *= warmup_factor + (1.0 - warmup_factor) * progress
    return factor
