"""Evaluating a detector on a dataset: the shared prediction loop, ground truth, report files, tools/eval.py."""

from __future__ import annotations

import json

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from structured.config import build_model, load_config
from structured.data.synthetic import generate_dataset
from structured.engine.checkpoint import save_checkpoint
from structured.evaluation.detector import coco_ground_truth, evaluate_detector_on_dataset, predict_dataset
from tools import eval as eval_tool

RECIPE = "configs/smoke/faster_rcnn_r18_fpn_tiny.yaml"


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("shapes"), num_train=2, num_val=6, image_size=128, seed=3)


@pytest.fixture(scope="module")
def trained(dataset_root, tmp_path_factory):
    """An (untrained) tiny detector saved as a training checkpoint, with its recipe and classes."""
    from structured.data.recipes import data_config, open_evaluation_dataset

    config = load_config(RECIPE, ["model.box_score_thresh=0.0"])
    dataset = open_evaluation_dataset(dataset_root / "annotations/instances_val.json",
                                      data_config(config, require_train=False))
    config.set("model.num_classes", len(dataset.class_names) - 1)
    torch.manual_seed(0)
    model = build_model(config)
    path = tmp_path_factory.mktemp("run") / "best.pt"
    save_checkpoint({"model": model.state_dict(), "config": config.data, "class_names": dataset.class_names}, path)
    return model, dataset, path


def test_metrics_equal_pycocotools_on_the_written_files(trained, tmp_path):
    model, dataset, _ = trained
    evaluation = evaluate_detector_on_dataset(model, dataset, tmp_path, torch.device("cpu"), speed_iterations=2)
    samples, _ = predict_dataset(model, dataset, range(len(dataset)), torch.device("cpu"))
    ground_truth = COCO()
    ground_truth.dataset = coco_ground_truth(samples, dataset.class_names)
    ground_truth.createIndex()
    results = json.loads((tmp_path / "predictions.json").read_text())
    assert results, "the untrained detector at score threshold 0 must still output boxes"
    reference = COCOeval(ground_truth, ground_truth.loadRes(results), "bbox")
    reference.evaluate()
    reference.accumulate()
    reference.summarize()
    assert evaluation.results["bbox"].stats.tolist() == pytest.approx(reference.stats.tolist(), abs=1e-12)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"metrics", "speed", "images"} and metrics["images"] == len(dataset)
    assert (tmp_path / "pr_curves.png").stat().st_size > 0
    report = evaluation.report(dataset.class_names)
    assert "Average Precision" in report and dataset.class_names[1] in report and "timed" in report


def test_ground_truth_masks_become_rle():
    target = {"boxes": torch.tensor([[1.0, 1.0, 3.0, 4.0]]), "labels": torch.tensor([2]),
              "masks": torch.zeros(1, 6, 5, dtype=torch.uint8)}
    target["masks"][0, 1:4, 1:3] = 1
    document = coco_ground_truth([(1, 6, 5, target)], ["__background__", "a", "b"])
    annotation = document["annotations"][0]
    assert annotation["category_id"] == 2 and annotation["bbox"] == [1.0, 1.0, 2.0, 3.0]
    assert annotation["segmentation"]["size"] == [6, 5]
    assert [c["name"] for c in document["categories"]] == ["a", "b"]


def test_eval_tool_writes_reports_and_rejects_other_classes(trained, dataset_root, tmp_path, capsys):
    _, _, checkpoint = trained
    data = str(dataset_root / "annotations/instances_val.json")
    code = eval_tool.main([RECIPE, "--weights", str(checkpoint), "--data", data, "--out", str(tmp_path / "e"),
                           "--speed-iters", "2", "--device", "cpu"])
    assert code == 0
    output = capsys.readouterr().out
    assert "AP50" in output and "Average Precision  (AP) @[ IoU=0.50:0.95" in output
    assert (tmp_path / "e" / "metrics.json").is_file()
    state = torch.load(checkpoint, weights_only=True)
    state["class_names"] = ["__background__", "cat"]
    torch.save(state, tmp_path / "other.pt")
    assert eval_tool.main([RECIPE, "--weights", str(tmp_path / "other.pt"), "--data", data]) == 2
    assert "trained on classes ['cat']" in capsys.readouterr().err
