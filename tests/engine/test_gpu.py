"""The trainer on CUDA: AMP training, an exact resume after a kill, Faster R-CNN through train_det."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from structured.config import load_config
from structured.data.recipes import build_datasets, data_config
from structured.engine import Trainer, load_checkpoint, read_log
from tests.engine.conftest import toy_recipe, train_det_tool
from tests.engine.test_train_det import SMOKE_RECIPE
from tests.engine.test_trainer import FaultyDataset, SimulatedKill

pytestmark = pytest.mark.gpu


def test_amp_training_resumes_exactly_on_cuda(toy_model: str, tiny_shapes: Path, tmp_path: Path) -> None:
    def recipe():
        return load_config(toy_recipe(tiny_shapes, epochs=2, amp=True, device="cuda", checkpoint_every_iters=2))

    Trainer(recipe(), tmp_path / "straight", verbose=False).fit()
    train, val = build_datasets(data_config(recipe()), seed=7)
    killed = Trainer(recipe(), tmp_path / "killed", train_dataset=FaultyDataset(train, kill_at=10), val_dataset=val,
                     verbose=False)
    with pytest.raises(SimulatedKill):
        killed.fit()
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["iteration"] == 4
    Trainer(recipe(), tmp_path / "killed", resume=True, verbose=False).fit()
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert resumed["iteration"] == 8 and "scale" in resumed["scaler"]
    assert resumed["scaler"]["scale"] == straight["scaler"]["scale"]
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def test_faster_rcnn_trains_with_amp_on_cuda_through_train_det(tiny_shapes: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = train_det_tool().main([str(SMOKE_RECIPE), "--data", str(tiny_shapes / "annotations" / "instances_train.json"),
                              "--out", str(run), "--device", "cuda", "--set", "train.amp=true", "train.max_iters=3",
                              "train.log_every=1"])
    assert code == 0
    steps = [entry for entry in read_log(run / "log.jsonl") if entry["kind"] == "train"]
    assert [entry["iteration"] for entry in steps] == [1, 2, 3] and all(math.isfinite(e["loss"]) for e in steps)
    assert load_checkpoint(run / "last.pt")["scaler"]["scale"] > 0
