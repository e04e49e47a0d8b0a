"""The semantic path end to end: a tiny UNet trained by tools/train_det.py (a subprocess), evaluated and run by
tools/eval.py and tools/infer.py (their ``main``, in this process) on generated shapes, and the Segmenter API
on the checkpoint they wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import structured
from structured import Detector, Segmenter
from structured.data.loading import read_image, read_index_png, write_palette_png
from structured.engine import load_checkpoint, read_log
from structured.inference import run_inference
from tests.conftest import REPO_ROOT
from tools import eval as eval_tool
from tools import infer as infer_tool

UNET_RECIPE = REPO_ROOT / "configs" / "unet" / "unet_original.yaml"
TINY = ["model.encoder.width=4", "model.encoder.depth=2", "model.decoder.channels=[8,4]", "data.image_size=64",
        "data.max_size=64", "data.workers=0", "data.batch_size=2", "train.epochs=1", "train.eval_every_epochs=1",
        "train.warmup_iters=0", "train.log_every=1"]


def run_train_tool(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "train_det.py"), *map(str, arguments)], cwd=cwd,
                               capture_output=True, text=True, env=environment, timeout=600, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with generated shapes (``shapes/``) and the run folder of a tiny UNet trained on them (``run/``)."""
    root = tmp_path_factory.mktemp("semantic_tools")
    structured.data.generate_dataset(root / "shapes", num_train=4, num_val=2, image_size=64, formats=("semantic",))
    run_train_tool(UNET_RECIPE, "--data", root / "shapes", "--out", root / "run", "--set", *TINY, cwd=root)
    return root


def test_training_writes_the_semantic_run_folder(trained: Path) -> None:
    run = trained / "run"
    assert (run / "miou.png").is_file() and (run / "loss.png").is_file() and not (run / "map.png").exists()
    epoch = [entry for entry in read_log(run / "log.jsonl") if entry["kind"] == "epoch"][-1]
    assert 0 <= epoch["mIoU"] <= 1 and "fg_IoU" in epoch and "loss_dice" in epoch
    checkpoint = load_checkpoint(run / "best.pt")
    assert checkpoint["task"] == "semantic" and checkpoint["best"]["metric"] == "mIoU"
    assert checkpoint["class_names"][1:] == list(structured.data.SHAPE_CLASSES)


def test_eval_prints_per_class_iou_and_writes_metrics_and_the_confusion_matrix(trained: Path, capsys) -> None:
    out = trained / "eval"
    arguments = [trained / "run" / "config.yaml", "--weights", trained / "run" / "best.pt", "--data",
                 trained / "shapes", "--split", "val", "--out", out, "--speed-iters", "1"]
    assert eval_tool.main(list(map(str, arguments))) == 0
    printed = capsys.readouterr().out
    assert "triangle" in printed and "mIoU" in printed and "FPS" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 2 and set(metrics["metrics"]) >= {"mIoU", "fg_IoU", "Dice", "pixel_accuracy"}
    assert metrics["model"] == {"recipe": "run", "model": "unet_original", "config": str(arguments[0]),
                                "checkpoint": str(trained / "run" / "best.pt"), "dataset": str(trained / "shapes")}
    assert (out / "confusion_matrix.png").is_file()


def test_eval_without_data_scores_the_run_s_own_validation_split(trained: Path) -> None:
    out = trained / "eval_own_split"
    arguments = [trained / "run" / "config.yaml", "--weights", trained / "run" / "best.pt", "--out", out,
                 "--speed-iters", "0", "--no-optimize"]
    assert eval_tool.main(list(map(str, arguments))) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    epoch = [entry for entry in read_log(trained / "run" / "log.jsonl") if entry["kind"] == "epoch"][-1]
    assert metrics["images"] == 2  # the generated data's val split, what training validated on
    assert metrics["metrics"]["mIoU"] == pytest.approx(epoch["mIoU"], abs=1e-9)


def _write_video(path: Path, frames: int = 2) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 48))
    for index in range(frames):
        writer.write(np.full((48, 64, 3), 40 * index, np.uint8))
    writer.release()


def test_infer_writes_overlays_and_class_index_pngs_for_images_and_videos(trained: Path) -> None:
    source = trained / "infer_inputs"
    source.mkdir()
    for name in ("000005.jpg", "000006.jpg"):
        (source / name).write_bytes((trained / "shapes" / "JPEGImages" / name).read_bytes())
    _write_video(source / "clip.mp4")
    out = trained / "infer"
    assert infer_tool.main(list(map(str, [source, "--weights", trained / "run" / "best.pt", "--out", out]))) == 0
    entries = json.loads((out / "predictions.json").read_text())
    assert [entry["mask_file"] for entry in entries] == ["masks/000005.png", "masks/000006.png",
                                                         "masks/clip_000000.png", "masks/clip_000001.png"]
    for entry in entries:
        mask = read_index_png(out / entry["mask_file"])
        assert sum(entry["areas"].values()) == mask.size and mask.max() <= 5
    assert read_image(out / "000005.jpg").shape == (64, 64, 3) and (out / "clip_annotated.mp4").is_file()


def test_the_segmenter_api_on_the_trained_checkpoint(trained: Path, tmp_path: Path) -> None:
    checkpoint = trained / "run" / "best.pt"
    segmenter = Segmenter.from_checkpoint(checkpoint, optimize=False)
    assert isinstance(structured.load(checkpoint), Segmenter)
    image = read_image(trained / "shapes" / "JPEGImages" / "000005.jpg")[:61, :47]
    result = segmenter.predict(image)
    assert result.mask.shape == (61, 47) and result.probabilities.shape == (6, 61, 47)
    assert torch.equal(result.mask, result.probabilities.argmax(dim=0))
    assert sum(result.areas.values()) == 61 * 47 and list(result.areas) == segmenter.class_names
    np.testing.assert_array_equal(read_index_png(result.save_png(tmp_path / "classes.png")), result.mask.numpy())
    assert result.plot().shape == (61, 47, 3) and result.save(tmp_path / "overlay.jpg").is_file()
    only = segmenter.predict(image, classes=["circle"]).mask
    assert set(only.unique().tolist()) <= {0, 1} and torch.equal(only == 1, result.mask == 1)
    confident = segmenter.predict(image, score_threshold=0.99).mask
    assert torch.equal(confident, torch.where(result.probabilities.max(dim=0).values >= 0.99, result.mask, 0))
    with pytest.raises(ValueError, match=r"score_threshold \(--score-thr\) must be a number in \[0, 1\], got 1.01"):
        segmenter.predict(image, score_threshold=1.01)
    optimized = Segmenter.from_checkpoint(checkpoint).predict(image)
    assert (optimized.mask == result.mask).float().mean() > 0.99
    with pytest.raises(ValueError, match="holds a semantic model, which Detector does not serve; load it with Segmenter"):
        Detector.from_checkpoint(checkpoint)


def test_inference_over_a_glob_with_the_segmenter(trained: Path, tmp_path: Path) -> None:
    segmenter = structured.load(trained / "run" / "best.pt")
    summary = run_inference(segmenter, str(trained / "shapes" / "JPEGImages" / "00000[12].jpg"), tmp_path,
                            report=lambda line: None)
    assert summary.images == 2 and not summary.skipped
    assert sorted(path.name for path in (tmp_path / "masks").iterdir()) == ["000001.png", "000002.png"]
    catalogue = json.loads((tmp_path / "images.json").read_text())
    assert [category["name"] for category in catalogue["categories"]] == list(structured.data.SHAPE_CLASSES)


def _bad_mask_folder(root: Path, problem: str) -> Path:
    """An images/ + masks/ folder with the shapes' classes and one broken mask ``problem``."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "labelmap.txt").write_text("\n".join(("background", *structured.data.SHAPE_CLASSES)))
    cv2.imwrite(str(root / "images" / "x.png"), np.zeros((40, 30, 3), np.uint8))
    if problem != "missing":
        write_palette_png(root / "masks" / "x.png", np.full((40, 30) if problem == "index" else (20, 30),
                                                            9 if problem == "index" else 1, np.uint8))
    return root


@pytest.mark.parametrize(("problem", "message"), [
    ("index", "masks/x.png: class indices [9] outside 0..5"),
    ("size", "masks/x.png: mask is 20x30 (HxW) but the image {root}/images/x.png is 40x30"),
    ("missing", "{root}/masks: no mask <stem>.png for 1 image(s), e.g. ['x.png']"),
])
def test_bad_semantic_input_is_one_error_line_naming_the_file(trained: Path, tmp_path: Path, capsys, problem: str,
                                                             message: str) -> None:
    root = _bad_mask_folder(tmp_path / problem, problem)
    arguments = [trained / "run" / "config.yaml", "--weights", trained / "run" / "best.pt", "--data", root,
                 "--out", tmp_path / "out", "--speed-iters", "0"]
    assert eval_tool.main(list(map(str, arguments))) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ") and message.format(root=root) in errors[0], errors
