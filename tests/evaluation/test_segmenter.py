"""Segmenter evaluation and the task layer: named metrics of a confusion matrix, a dataset's matrix and report
files, best_metric by task."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from structured.config import Config, ConfigError, build_model
from structured.data.semantic import open_semantic_dataset
from structured.data.synthetic import generate_dataset
from structured.engine.trainer import train_config
from structured.evaluation.segmentation import ConfusionMatrix
from structured.evaluation.segmenter import (
    confusion_on_dataset,
    evaluate_segmenter_on_dataset,
    semantic_stats,
)
from structured.evaluation.tasks import evaluation_task

TINY_UNET = {"name": "unet_original", "num_classes": 5, "encoder": {"width": 4, "depth": 2},
             "decoder": {"channels": [8, 4]}}


def test_named_metrics_of_a_confusion_matrix() -> None:
    matrix = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 1, 4]])
    stats = semantic_stats(matrix, ["__background__", "a", "b"])
    assert stats["fg_IoU"] == pytest.approx(8 / 11) and stats["fg_Dice"] == pytest.approx(16 / 19)
    assert stats["mIoU"] == pytest.approx((5 / 8 + 3 / 7 + 4 / 5) / 3)
    assert stats["IoU_a"] == pytest.approx(3 / 7) and stats["pixel_accuracy"] == pytest.approx(12 / 16)
    assert "IoU_c" not in semantic_stats(torch.zeros(4, 4, dtype=torch.int64), ["bg", "a", "b", "c"])
    assert math.isnan(semantic_stats(torch.tensor([[3, 0], [0, 0]]), ["bg", "a"])["fg_IoU"])


def test_each_task_names_its_metrics_and_its_default_best_metric() -> None:
    assert evaluation_task("semantic").default_best_metric == "mIoU"
    assert evaluation_task("instance").default_best_metric == "AP50" and "segm_AP" in evaluation_task("instance").metric_names
    assert evaluation_task("semantic").curves.file_name == "miou.png"
    with pytest.raises(ValueError, match="unknown task 'depth'; tasks: detection, instance, semantic"):
        evaluation_task("depth")
    assert train_config(Config({"model": TINY_UNET})).best_metric == "mIoU"
    assert train_config(Config({"model": TINY_UNET, "train": {"best_metric": "fg_IoU"}})).best_metric == "fg_IoU"
    with pytest.raises(ConfigError, match=r"best_metric must be one of \('mIoU', 'fg_IoU'.*\(the semantic metrics\), got 'AP50'"):
        train_config(Config({"model": TINY_UNET, "train": {"best_metric": "AP50"}}))


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("shapes"), num_train=1, num_val=4, image_size=64,
                            formats=("semantic",))


@pytest.fixture(scope="module")
def tiny_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model({"model": TINY_UNET}).eval()


def test_the_dataset_matrix_counts_every_pixel_of_the_predicted_maps(tiny_unet, shapes_root: Path,
                                                                      tmp_path: Path) -> None:
    dataset = open_semantic_dataset(shapes_root, split="val")
    matrix = confusion_on_dataset(tiny_unet, dataset, [0, 2, 3], torch.device("cpu"), batch_size=2)
    expected = ConfusionMatrix(6)
    for index in (0, 2, 3):
        image, target = dataset[index]
        expected.update(tiny_unet([image])[0]["mask"], target["semantic"])
    assert torch.equal(matrix, expected.matrix)
    evaluation = evaluate_segmenter_on_dataset(tiny_unet, dataset, tmp_path, torch.device("cpu"), speed_iterations=1)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["metrics"]["mIoU"] == pytest.approx(evaluation.stats["mIoU"]) and written["images"] == 4
    assert sum(map(sum, written["confusion_matrix"])) == sum(image.shape[-1] * image.shape[-2] for image, _ in dataset)
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 0
    report = evaluation.report()
    assert "rectangle" in report and "mIoU" in report and "FPS" in report
