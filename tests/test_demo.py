"""``make demo`` end to end on a tiny budget: every step runs in its own process and leaves its outputs.

The full-size demo (600 training pictures, a wall-clock training budget, train.time_limit) is measured, not
tested: its figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pycocotools.coco import COCO

from structured.config import build_model, load_config
from structured.engine import read_log

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = REPO_ROOT / "demo" / "shapes_detector.py"
RECIPE = REPO_ROOT / "configs" / "demo" / "shapes_faster_rcnn_r18_fpn.yaml"


def test_demo_recipe_builds_the_small_detector_it_describes():
    config = load_config(RECIPE)
    config.set("model.num_classes", 5)
    model = build_model(config)
    heads = {type(module).__name__ for module in model.modules()}
    assert {"ConvFCHead", "GroupNorm", "FPN"} <= heads
    assert sum(p.numel() for p in model.parameters()) < 2e6  # ResNet-18 up to c3: layer3 and layer4 dropped
    assert yaml.safe_load(RECIPE.read_text())["train"]["optimizer"] == "adamw"


@pytest.mark.slow
def test_demo_generates_trains_evaluates_and_infers(tmp_path: Path):
    out = tmp_path / "demo"
    command = [sys.executable, str(DEMO), "--out", str(out), "--train-images", "8", "--val-images", "4",
               "--fresh-images", "3", "--set", "train.epochs=4", "train.log_every=1"]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    printed = completed.stdout + completed.stderr
    assert completed.returncode == 0, printed
    for step in ("1. generate", "2. train", "3. evaluate", "4. detect"):
        assert f"=== {step}" in printed
    assert "Average Precision  (AP) @[ IoU=0.50 " in printed and "FPS" in printed
    assert (out / "run" / "best.pt").is_file() and (out / "run" / "last.pt").is_file()
    steps = [entry for entry in read_log(out / "run" / "log.jsonl") if entry["kind"] == "train"]
    # Too short a run (8 steps) for a useful AP, long enough for the heads to start learning.
    assert len(steps) == 8
    assert steps[-1]["loss_classifier"] < 0.8 * steps[0]["loss_classifier"], steps  # measured 0.66
    assert (steps[-1]["loss"] + steps[-2]["loss"]) / 2 < steps[0]["loss"], steps  # measured 0.96 (in warm-up)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["metrics"]["bbox"]["stats"]["AP50"] <= 1.0 and metrics["speed"] is not None
    pictures = sorted(path.name for path in (out / "predictions").glob("*.jpg"))
    assert pictures == [f"fresh_{index:02d}.jpg" for index in range(3)]
    assert (out / "predictions_sheet.png").is_file()
    ground_truth = COCO()
    ground_truth.dataset = json.loads((out / "predictions" / "images.json").read_text())
    ground_truth.createIndex()
    results = json.loads((out / "predictions" / "predictions.json").read_text())
    if results:
        ground_truth.loadRes(results)
    assert str(out / "predictions") in printed
