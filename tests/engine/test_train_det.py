"""tools/train_det.py end to end with the real Faster R-CNN: synthetic COCO, raccoon (flat VOC), DSB2018 masks."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import yaml

from structured.config import build_model, load_config
from structured.engine import load_checkpoint, read_log

REPO_ROOT = Path(__file__).resolve().parents[2]
SMOKE_RECIPE = REPO_ROOT / "configs" / "smoke" / "faster_rcnn_r18_fpn_tiny.yaml"


def _train_det():
    spec = importlib.util.spec_from_file_location("train_det", REPO_ROOT / "tools" / "train_det.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_train_resume_evaluate_and_reload_on_synthetic_coco(tiny_shapes: Path, tmp_path: Path, capsys) -> None:
    tool = _train_det()
    recipe = yaml.safe_load(SMOKE_RECIPE.read_text())
    recipe["data"].update(train=str(tiny_shapes / "annotations" / "instances_train.json"),
                          val=str(tiny_shapes / "annotations" / "instances_val.json"), val_fraction=0.0,
                          image_size=64, max_size=64)
    recipe["train"].update(log_every=1, checkpoint_every_iters=1)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    common = [str(tmp_path / "recipe.yaml"), "--out", str(run), "--device", "cpu"]
    assert tool.main([*common, "--set", "train.max_iters=2"]) == 0
    assert load_checkpoint(run / "last.pt")["iteration"] == 2

    assert tool.main([*common, "--resume"]) == 0  # the rest of the epoch (8 images / batch 2), then mAP
    assert "best AP50" in capsys.readouterr().out
    last = load_checkpoint(run / "last.pt")
    assert (last["iteration"], last["epoch"], last["batch_in_epoch"]) == (4, 1, 0)
    log = read_log(run / "log.jsonl")
    assert [entry["iteration"] for entry in log if entry["kind"] == "train"] == [1, 2, 3, 4]
    epoch = [entry for entry in log if entry["kind"] == "epoch"]
    assert len(epoch) == 1 and 0.0 <= epoch[0]["AP50"] <= 1.0 and math.isfinite(epoch[0]["loss"])
    assert {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"} <= set(epoch[0])

    best = load_checkpoint(run / "best.pt")
    model = build_model(load_config(best["config"]))
    model.load_state_dict(best["model"])
    prediction = model.eval()([torch.rand(3, 64, 64)])[0]
    assert prediction["boxes"].shape[1] == 4 and len(prediction["scores"]) == len(prediction["labels"])

    assert tool.main([*common, "--resume", "--weights", str(run / "best.pt")]) == 2
    assert "Pick one" in capsys.readouterr().err
    assert tool.main(common) == 2  # the folder already holds a run
    assert "--resume" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize("name", ["raccoon", "dsb2018_nuclei"])
def test_train_det_accepts_the_real_folders_directly(shared_data: Path, tmp_path: Path, name: str) -> None:
    run = tmp_path / name
    code = _train_det().main([str(SMOKE_RECIPE), "--data", str(shared_data / name), "--out", str(run),
                              "--device", "cpu", "--set", "train.max_iters=2", "train.log_every=1",
                              "data.batch_size=1"])
    assert code == 0
    assert load_checkpoint(run / "last.pt")["iteration"] == 2
    steps = [entry for entry in read_log(run / "log.jsonl") if entry["kind"] == "train"]
    assert [entry["iteration"] for entry in steps] == [1, 2] and all(math.isfinite(e["loss"]) for e in steps)
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["model"]["num_classes"] == 1 and resolved["data"]["train"] == str(shared_data / name)
