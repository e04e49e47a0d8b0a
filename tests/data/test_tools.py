"""The thin CLIs: tools/inspect_dataset.py and tools/convert_dataset.py, called through their main()."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from structured.data.loading import read_image
from structured.data.summary import detect_format, open_dataset, summarize_dataset

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_inspect_prints_counts_and_writes_a_mosaic(tmp_path: Path, synthetic_root: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    mosaic = tmp_path / "mosaic.png"
    status = _tool("inspect_dataset").main([str(synthetic_root / "annotations" / "instances_train.json"),
                                            "--images", str(synthetic_root / "JPEGImages"),
                                            "--mosaic", str(mosaic), "--samples", "6"])
    output = capsys.readouterr().out
    content = json.loads((synthetic_root / "annotations" / "instances_train.json").read_text())
    assert status == 0 and "images: 12" in output and f"boxes: {len(content['annotations'])}" in output
    assert "problems: none" in output
    assert read_image(mosaic).shape == (2 * 256, 4 * 256, 3)


def test_inspect_reports_problems_with_exit_status_1(tmp_path: Path, synthetic_root: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    content = json.loads((synthetic_root / "annotations" / "instances_val.json").read_text())
    content["images"][0]["file_name"] = "gone.jpg"
    content["annotations"][0]["bbox"][2] = -3
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(content))
    status = _tool("inspect_dataset").main([str(path), "--images", str(synthetic_root / "JPEGImages"), "--mosaic", ""])
    output = capsys.readouterr().out
    assert status == 1 and "1 bad_sample" in output and "1 degenerate_box" in output and "gone.jpg" in output
    assert _tool("inspect_dataset").main([str(tmp_path / "nothing_here")]) == 2


def test_convert_cli_coco_to_yolo_and_back_to_voc(tmp_path: Path, synthetic_root: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    convert = _tool("convert_dataset").main
    assert convert([str(synthetic_root / "annotations" / "instances_val.json"), str(tmp_path / "yolo"),
                    "--from", "coco", "--to", "yolo", "--images", str(synthetic_root / "JPEGImages")]) == 0
    assert convert([str(tmp_path / "yolo"), str(tmp_path / "voc"), "--from", "yolo", "--to", "voc"]) == 0
    assert "4 images" in capsys.readouterr().out
    original = open_dataset(synthetic_root / "annotations" / "instances_val.json", image_root=synthetic_root / "JPEGImages")
    converted = open_dataset(tmp_path / "voc", split="all")
    for a, b in zip(original.records, converted.records, strict=True):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
    assert detect_format(tmp_path / "yolo") == "yolo" and detect_format(tmp_path / "voc") == "voc"
    assert convert([str(tmp_path / "missing.json"), str(tmp_path / "x"), "--from", "coco", "--to", "voc",
                    "--images", str(tmp_path)]) == 2


def test_summary_of_a_yolo_folder(tmp_path: Path, synthetic_root: Path) -> None:
    _tool("convert_dataset").main([str(synthetic_root / "annotations" / "instances_val.json"), str(tmp_path / "y"),
                                   "--from", "coco", "--to", "yolo", "--images", str(synthetic_root / "JPEGImages")])
    summary = summarize_dataset(open_dataset(tmp_path / "y"))
    assert summary.num_images == 4 and not summary.problems


def test_convert_cli_detects_the_source_format_and_finds_a_coco_files_images(
        tmp_path: Path, synthetic_root: Path, capsys: pytest.CaptureFixture) -> None:
    convert = _tool("convert_dataset").main
    # no --from, no --images: the COCO file's images are found beside its folder (JPEGImages/), as training finds them
    assert convert([str(synthetic_root / "annotations" / "instances_val.json"), str(tmp_path / "yolo"), "--to", "yolo"]) == 0
    assert convert([str(tmp_path / "yolo"), str(tmp_path / "coco"), "--to", "coco"]) == 0
    assert convert([str(tmp_path / "coco" / "annotations.json"), str(tmp_path / "voc"), "--to", "voc"]) == 0
    original = open_dataset(synthetic_root / "annotations" / "instances_val.json", image_root=synthetic_root / "JPEGImages")
    converted = open_dataset(tmp_path / "voc", split="all")
    for a, b in zip(original.records, converted.records, strict=True):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
    (tmp_path / "masks" / "a" / "images").mkdir(parents=True)
    (tmp_path / "masks" / "a" / "masks").mkdir()
    capsys.readouterr()
    assert convert([str(tmp_path / "masks"), str(tmp_path / "out"), "--to", "coco"]) == 2
    assert "is a mask folder dataset (<id>/images + <id>/masks); box annotations convert between coco, voc, yolo" in (
        capsys.readouterr().err)


@pytest.mark.parametrize("count", ["0", "-3"])
def test_inspect_refuses_a_sample_count_below_one(synthetic_root: Path, count: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _tool("inspect_dataset").main([str(synthetic_root / "annotations" / "instances_val.json"), "--samples", count])
    assert exit_info.value.code == 2
    assert f"argument --samples: must be an integer >= 1, got '{count}'" in capsys.readouterr().err


def test_inspect_says_loudly_that_no_image_has_an_object_and_draws_around_bad_samples(
        tmp_path: Path, synthetic_root: Path, capsys: pytest.CaptureFixture) -> None:
    content = json.loads((synthetic_root / "annotations" / "instances_val.json").read_text())
    del content["annotations"]
    content["images"][0]["width"] = 64  # not the size of the file: a bad sample, left out of the mosaic
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(content))
    mosaic = tmp_path / "mosaic.png"
    status = _tool("inspect_dataset").main([str(path), "--images", str(synthetic_root / "JPEGImages"),
                                            "--mosaic", str(mosaic)])
    output = capsys.readouterr().out
    assert status == 1 and "1 bad_sample, 1 no_objects" in output
    assert "none of the 4 images has an object; a training set needs annotated objects" in output
    assert read_image(mosaic).shape == (256, 4 * 256, 3)
