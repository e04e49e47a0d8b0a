"""tools/train_det.py end to end with the real Faster R-CNN: synthetic COCO, raccoon (flat VOC), DSB2018 masks,
and an exact resume after a real SIGKILL."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from structured.config import build_model, load_config
from structured.engine import load_checkpoint, read_log
from tests.conftest import REPO_ROOT
from tests.engine.conftest import TRAIN_DET, train_det_tool

SMOKE_RECIPE = REPO_ROOT / "configs" / "smoke" / "faster_rcnn_r18_fpn_tiny.yaml"


@pytest.mark.slow
def test_train_resume_evaluate_and_reload_on_synthetic_coco(tiny_shapes: Path, tmp_path: Path, capsys) -> None:
    tool = train_det_tool()
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
    steps = [entry for entry in log if entry["kind"] == "train"]
    # The box head learns the background prior within the 4 steps (2 before the resume, 2 after).
    assert steps[-1]["loss_classifier"] < 0.75 * steps[0]["loss_classifier"], steps  # measured 0.50
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
    code = train_det_tool().main([str(SMOKE_RECIPE), "--data", str(shared_data / name), "--out", str(run),
                              "--device", "cpu", "--set", "train.max_iters=2", "train.log_every=1",
                              "data.batch_size=1"])
    assert code == 0
    assert load_checkpoint(run / "last.pt")["iteration"] == 2
    steps = [entry for entry in read_log(run / "log.jsonl") if entry["kind"] == "train"]
    assert [entry["iteration"] for entry in steps] == [1, 2] and all(math.isfinite(e["loss"]) for e in steps)
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["model"]["num_classes"] == 1 and resolved["data"]["train"] == str(shared_data / name)


KILL_WAIT_S = 300
"""Longest wait for the first checkpoint of the run to be killed (a bound, not a measured figure)."""


def _exact_resume_recipe(tiny_shapes: Path, path: Path) -> Path:
    """The smoke recipe at 64 px with standard augmentation, 2 workers and AdamW, deterministic on the CPU.

    8 images, batch 2, 2 epochs: 8 steps, a checkpoint every 3 (mid-epoch) and at each epoch's end.
    """
    recipe = yaml.safe_load(SMOKE_RECIPE.read_text())
    model = recipe["model"]
    model["transform"].update(min_size=64, max_size=64)
    model["rpn"].update(pre_nms_top_n_train=100, post_nms_top_n_train=50, batch_size_per_image=32)
    model["roi_heads"].update(batch_size_per_image=32)
    recipe["data"].update(format="coco", train=str(tiny_shapes / "annotations" / "instances_train.json"),
                          val_fraction=0.0, augment="standard", image_size=64, max_size=64, workers=2)
    recipe["train"].update(optimizer="adamw", lr=0.001, epochs=2, warmup_iters=2, eval_every_epochs=0,
                           checkpoint_every_iters=3, deterministic=True, device="cpu", log_every=1)
    path.write_text(yaml.safe_dump(recipe))
    return path


def _start_training(recipe: Path, run: Path, *options: str) -> subprocess.Popen:
    """``tools/train_det.py`` in its own process group (its data workers die with it), output to ``run``.out."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    with run.with_suffix(".out").open("w") as output:
        return subprocess.Popen([sys.executable, str(TRAIN_DET), str(recipe), "--out", str(run), *options],
                                cwd=REPO_ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _finish(process: subprocess.Popen, run: Path) -> None:
    assert process.wait() == 0, run.with_suffix(".out").read_text()


def _kill_at_first_checkpoint(process: subprocess.Popen, run: Path) -> None:
    """SIGKILL the training process group as soon as ``run/last.pt`` exists (it is written atomically)."""
    deadline = time.monotonic() + KILL_WAIT_S
    while not (run / "last.pt").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"no checkpoint before the run ended or {KILL_WAIT_S} s passed: "
                        f"{run.with_suffix('.out').read_text()}")
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


@pytest.mark.slow
def test_real_recipe_killed_and_resumed_ends_with_the_weights_of_a_straight_run(tiny_shapes: Path,
                                                                                tmp_path: Path) -> None:
    recipe = _exact_resume_recipe(tiny_shapes, tmp_path / "recipe.yaml")
    straight_run, killed_run = tmp_path / "straight", tmp_path / "killed"
    straight = _start_training(recipe, straight_run)
    _kill_at_first_checkpoint(_start_training(recipe, killed_run), killed_run)
    interrupted = load_checkpoint(killed_run / "last.pt")
    assert (interrupted["iteration"], interrupted["epoch"], interrupted["batch_in_epoch"]) == (3, 0, 3)

    _finish(_start_training(recipe, killed_run, "--resume"), killed_run)
    _finish(straight, straight_run)
    expected, resumed = load_checkpoint(straight_run / "last.pt"), load_checkpoint(killed_run / "last.pt")
    assert resumed["iteration"] == expected["iteration"] == 8
    assert any(not torch.equal(value, expected["model"][key]) for key, value in interrupted["model"].items())
    assert resumed["model"].keys() == expected["model"].keys()
    for key, value in resumed["model"].items():
        assert torch.equal(value, expected["model"][key]), key
    assert resumed["optimizer"]["state"].keys() == expected["optimizer"]["state"].keys()
    for index, state in resumed["optimizer"]["state"].items():
        assert state.keys() == {"step", "exp_avg", "exp_avg_sq"}
        for name, value in state.items():
            assert torch.equal(value, expected["optimizer"]["state"][index][name]), (index, name)
    steps = [entry["iteration"] for entry in read_log(killed_run / "log.jsonl") if entry["kind"] == "train"]
    assert steps == list(range(1, 9))


def test_eval_without_data_scores_the_split_training_held_out(tiny_shapes: Path, tmp_path: Path, capsys) -> None:
    from tools import eval as eval_tool

    recipe = yaml.safe_load(SMOKE_RECIPE.read_text())
    recipe["data"].update(train=str(tiny_shapes / "annotations" / "instances_train.json"), val=None,
                          val_fraction=0.5, hold_out="random", image_size=64, max_size=64)
    recipe["train"].update(epochs=1, seed=11)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    assert train_det_tool().main([str(tmp_path / "recipe.yaml"), "--out", str(run), "--device", "cpu"]) == 0
    [trained] = [entry for entry in read_log(run / "log.jsonl") if entry["kind"] == "epoch"]

    out = tmp_path / "eval"
    arguments = [str(run / "config.yaml"), "--weights", str(run / "best.pt"), "--out", str(out), "--device", "cpu",
                 "--speed-iters", "0", "--no-optimize"]
    assert eval_tool.main(arguments) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 4 and metrics["model"]["dataset"].endswith("(the recipe's validation set)")
    # the same 4 images as the trainer's validation (seed 11's draw), so the same figures
    assert metrics["metrics"]["bbox"]["stats"]["AP50"] == pytest.approx(trained["AP50"], abs=1e-12)
    assert metrics["metrics"]["bbox"]["stats"]["AR100"] == pytest.approx(trained["AR100"], abs=1e-12)
    train_ids = {image["id"] for image in json.loads((tiny_shapes / "annotations" / "instances_train.json").read_text())["images"]}
    predicted_ids = {entry["image_id"] for entry in json.loads((out / "predictions.json").read_text())}
    assert predicted_ids <= train_ids
    other_seed = tmp_path / "other_seed"
    assert eval_tool.main([*arguments[:4], str(other_seed), *arguments[5:], "--set", "train.seed=12"]) == 0
    assert {entry["image_id"] for entry in json.loads((other_seed / "predictions.json").read_text())} != predicted_ids

    recipe["data"].update(val_fraction=0.0)
    (tmp_path / "no_val.yaml").write_text(yaml.safe_dump(recipe))
    capsys.readouterr()
    assert eval_tool.main([str(tmp_path / "no_val.yaml"), *arguments[1:]]) == 2
    error = capsys.readouterr().err
    assert "names no validation data" in error and "--data" in error and "Traceback" not in error
