"""Fixtures of the engine tests: the toy detector in MODELS, a small synthetic dataset on disk, the train tool."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from structured.data.synthetic import generate_dataset
from structured.registry import MODELS
from tests.conftest import REPO_ROOT
from tests.engine.toy import TOY_NAME, build_toy_detector

TRAIN_DET = REPO_ROOT / "tools" / "train_det.py"


@pytest.fixture
def toy_model(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register the toy detector for one test (removed afterwards); returns its name."""
    monkeypatch.setitem(MODELS._builders, TOY_NAME, build_toy_detector)
    return TOY_NAME


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8 + 4 image, 64 px synthetic COCO dataset (5 shape classes)."""
    return generate_dataset(tmp_path_factory.mktemp("engine_shapes"), num_train=8, num_val=4, image_size=64,
                            seed=3, formats=("coco",))


def toy_recipe(root: Path, **train: object) -> dict:
    """A recipe training the toy on ``root``'s COCO files (tiny images, deterministic CPU)."""
    settings = {"epochs": 2, "lr": 0.05, "seed": 7, "deterministic": True, "device": "cpu", "log_every": 1,
                "warmup_iters": 2, "milestones": [1]}
    settings.update(train)
    return {
        "model": {"name": TOY_NAME},
        "data": {"format": "coco", "train": str(root / "annotations" / "instances_train.json"),
                 "val": str(root / "annotations" / "instances_val.json"), "augment": "flip", "image_size": 48,
                 "max_size": 64, "batch_size": 2},
        "train": settings,
    }


def train_det_tool() -> ModuleType:
    """``tools/train_det.py`` loaded as a module, so that its ``main(argv)`` runs inside the test process."""
    spec = importlib.util.spec_from_file_location("train_det", TRAIN_DET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
