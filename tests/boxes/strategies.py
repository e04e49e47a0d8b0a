"""Hypothesis strategies for boxes: random, adversarial (ties, duplicates, nesting, degenerate)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

COORDINATE_SCALES = (1.0, 10.0, 1000.0, 1e5)


@st.composite
def xyxy_boxes(draw, min_boxes: int = 0, max_boxes: int = 40, allow_degenerate: bool = False,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[N, 4]`` boxes mixing continuous, integer-grid (exact IoU ties), duplicated and nested boxes."""
    count = draw(st.integers(min_boxes, max_boxes))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["continuous", "grid", "clustered"]))
    scale = draw(st.sampled_from(COORDINATE_SCALES))
    if kind == "grid":
        corners = rng.integers(0, 8, size=(count, 2)).astype(np.float64)
        sizes = rng.integers(0 if allow_degenerate else 1, 5, size=(count, 2)).astype(np.float64)
    elif kind == "clustered":
        centres = rng.uniform(0, 1, size=(max(count // 5, 1), 2))
        corners = centres[rng.integers(0, len(centres), count)] + rng.normal(0, 0.02, size=(count, 2))
        sizes = rng.uniform(0.05, 0.3, size=(count, 2))
    else:
        corners = rng.uniform(0, 1, size=(count, 2))
        sizes = rng.uniform(1e-4, 0.5, size=(count, 2))
    boxes = np.concatenate([corners, corners + sizes], axis=1) * scale
    if count and draw(st.booleans()):
        duplicates = rng.integers(0, count, size=count // 3 + 1)
        boxes[rng.integers(0, count, size=duplicates.size)] = boxes[duplicates]
    if allow_degenerate and count:
        flipped = rng.random(count) < 0.15
        boxes[flipped] = boxes[flipped][:, [2, 3, 0, 1]]
    return torch.from_numpy(boxes).to(dtype)


@st.composite
def scores_for(draw, count: int) -> torch.Tensor:
    """Scores with many exact ties (few distinct levels) or continuous values."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):
        levels = rng.uniform(0, 1, size=draw(st.integers(1, 4)))
        values = levels[rng.integers(0, levels.size, size=count)]
    else:
        values = rng.uniform(0, 1, size=count)
    return torch.from_numpy(values).float()
