"""Fixtures of the data tests: one small synthetic dataset on disk, shared by the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from structured.data.synthetic import generate_dataset

CATEGORY_IDS = (3, 7, 11, 20, 42)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12 + 4 image synthetic dataset (COCO, VOC, semantic PNGs) with non-contiguous category ids."""
    root = tmp_path_factory.mktemp("synthetic")
    return generate_dataset(root, num_train=12, num_val=4, image_size=128, seed=5, category_ids=CATEGORY_IDS,
                            rle_fraction=0.3, empty_probability=0.15)
