"""Shared test set-up: marker handling and the location of the real data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs two workers), one torch thread per worker and per child process,
    so the workers share the cores instead of oversubscribing them."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def shared_data_root() -> Path:
    """``../shared/data`` beside the checkout, or ``$STRUCTURED_SHARED_DATA`` when set."""
    override = os.environ.get("STRUCTURED_SHARED_DATA")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests without CUDA and ``real_data`` tests without ../shared/data."""
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    skip_data = pytest.mark.skip(reason=f"real data not found at {shared_data_root()}")
    has_data = shared_data_root().is_dir()
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "real_data" in item.keywords and not has_data:
            item.add_marker(skip_data)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the real labelled data (``raccoon/``, ``dsb2018_nuclei/``); skips when absent."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root}")
    return root
