"""The model table: counts against independent ones, metrics.json read back into the right rows, the tool's files."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from structured.config import build_model, load_config
from structured.evaluation.metrics_file import EvaluatedModel, read_accuracy, recipe_label, save_metrics
from structured.evaluation.profiling import ProfileSettings, format_models, model_spec, profile_model
from structured.measures import count_flops, count_parameters, fp32_mib
from tests.conftest import REPO_ROOT
from tools import benchmark

SHAPES_UNET = REPO_ROOT / "configs" / "demo" / "shapes_unet.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_counts_of_a_tiny_network_equal_the_hand_computed_ones() -> None:
    network = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(8, 4))
    assert count_parameters(network) == (8 * 3 * 3 * 3 + 8) + (8 * 4 + 4)
    assert fp32_mib(count_parameters(network)) == 260 * 4 / 2**20
    convolution = 2 * (8 * 16 * 16) * (3 * 3 * 3)  # 2 FLOPs per multiply-add, 27 per output value
    assert count_flops(network, torch.rand(1, 3, 16, 16)) == convolution + 2 * 8 * 4


def test_a_model_profile_equals_independent_counts() -> None:
    row = profile_model(model_spec(str(SHAPES_UNET), data_classes=5), ProfileSettings((64, 96), timing=False))
    config = load_config(SHAPES_UNET)
    config.set("model.num_classes", 5)
    model = build_model(config)
    assert row.params == sum(parameter.numel() for parameter in model.parameters())
    assert row.size_mib == row.params * 4 / 2**20
    model.optimize_for_inference()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model([torch.rand(3, 64, 96)])
    assert row.gflops == counter.get_total_flops() / 1e9
    assert (row.task, row.classes, row.network_input, row.architecture) == ("semantic", 5, "64x96", "UNet: UNetEncoder")
    assert row.detections is None and row.cpu_ms is None


def test_recipe_labels() -> None:
    assert recipe_label("ssd300_vgg16") == "ssd300_vgg16"
    assert recipe_label("configs/demo/shapes_unet.yaml") == "shapes_unet"
    assert recipe_label("runs/shapes/config.yaml") == "shapes"


def _metrics_file(folder, recipe: str, metrics: dict) -> str:
    evaluated = EvaluatedModel(recipe, recipe, f"{recipe}.yaml", "best.pt", "data")
    return str(save_metrics({"metrics": metrics}, evaluated, folder / recipe))


def _detection_metrics(ap: float, ap50: float) -> dict:
    return {"bbox": {"stats": {"AP": ap, "AP50": ap50, "AP75": 0.1}}}


def test_read_accuracy_takes_the_headline_metrics(tmp_path) -> None:
    instance = _metrics_file(tmp_path, "mask", {**_detection_metrics(0.4, 0.6), "segm": {"stats": {"AP": 0.3}}})
    assert read_accuracy(instance).metrics == {"AP": 0.4, "AP50": 0.6, "mask_AP": 0.3}
    semantic = read_accuracy(_metrics_file(tmp_path, "unet", {"mIoU": 0.5, "Dice": 0.7}))
    assert (semantic.recipe, semantic.metrics) == ("unet", {"mIoU": 0.5})
    with pytest.raises(ValueError, match="neither detection stats"):
        read_accuracy(_metrics_file(tmp_path, "other", {"accuracy": 0.9}))
    with pytest.raises(ValueError, match=r"metrics \['AP', 'AP50'\] are -1, undefined: the evaluation data had no"):
        read_accuracy(_metrics_file(tmp_path, "unlabelled", _detection_metrics(-1.0, -1.0)))


def test_models_table_fills_the_accuracy_of_the_right_rows(tmp_path, capsys) -> None:
    metrics = [_metrics_file(tmp_path, "shapes_unet", {"mIoU": 0.25}),
               _metrics_file(tmp_path, "ssdlite320_mobilenet_v3_large", _detection_metrics(0.2, 0.35)),
               _metrics_file(tmp_path, "unet_nuclei", {"mIoU": 0.8})]
    arguments = ["models", "--names", "ssdlite320_mobilenet_v3_large", str(SHAPES_UNET), "--data-classes", "5",
                 "--image-size", "48", "64", "--repeats", "1", "--threads", "1", "--device", "cpu",
                 "--metrics", *metrics, "--md", str(tmp_path / "t.md"), "--csv", str(tmp_path / "t.csv"),
                 "--plot", str(tmp_path / "t.png")]
    assert benchmark.main(arguments) == 0
    printed = capsys.readouterr()
    assert f"{metrics[2]} is for recipe 'unet_nuclei', which is not in the table" in printed.err
    ssd, unet = csv.DictReader((tmp_path / "t.csv").open())
    assert (ssd["recipe"], ssd["AP"], ssd["AP50"], ssd["mIoU"]) == ("ssdlite320_mobilenet_v3_large", "0.2", "0.35", "")
    assert (unet["recipe"], unet["AP"], unet["mIoU"], unet["network_input"]) == (str(SHAPES_UNET), "", "0.25", "48x64")
    assert math.isclose(float(unet["cpu_fps"]), 1000 / float(unet["cpu_ms"]))
    markdown = (tmp_path / "t.md").read_text()
    assert markdown == printed.out and "| `ssdlite320_mobilenet_v3_large` | detection |" in markdown
    assert "one 48x64 (HxW) RGB image" in markdown and "1 torch threads" in markdown
    assert (tmp_path / "t.png").read_bytes().startswith(PNG_SIGNATURE)


def test_models_table_reports_unusable_input_in_one_line(tmp_path, capsys) -> None:
    assert benchmark.main(["models", "--names", "no_such_model", "--no-timing"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "no_such_model" in error and "ssd300_vgg16" in error
    assert len(error.strip().splitlines()) == 1
    unlabelled = tmp_path / "metrics.json"
    unlabelled.write_text('{"metrics": {"mIoU": 0.5}}')
    assert benchmark.main(["models", "--names", "unet_nuclei", "--no-timing", "--metrics", str(unlabelled)]) == 2
    assert f"error: {unlabelled}: no 'model' entry naming the evaluated recipe" in capsys.readouterr().err


def test_a_plot_needs_a_row_with_an_accuracy(tmp_path, capsys) -> None:
    arguments = ["models", "--names", str(SHAPES_UNET), "--image-size", "32", "32", "--repeats", "1",
                 "--device", "cpu", "--plot", str(tmp_path / "t.png")]
    assert benchmark.main(arguments) == 0
    assert "no timed row has an accuracy" in capsys.readouterr().err and not (tmp_path / "t.png").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_gpu_row_has_the_gpu_latency_and_the_table_its_columns() -> None:
    settings = ProfileSettings((64, 96), repeats=2, gpu=torch.device("cuda"))
    row = profile_model(model_spec(str(SHAPES_UNET), data_classes=5), settings)
    assert row.gpu_ms is not None and row.gpu_ms > 0 and row.gpu_fps == pytest.approx(1000.0 / row.gpu_ms)
    assert row.cpu_ms is not None
    table = format_models([row])
    assert "GPU ms" in table and "GPU FPS" in table
