"""Every tool on unusable input ends with one ``error:`` line naming the culprit and exit status 2, never a
traceback (``structured.cli``). The cases call each tool's ``main`` in this process (an interpreter start
and the torch import per case cost more than the cases); one case runs the tool as a subprocess, end to end."""

from __future__ import annotations

import errno
import importlib
import json
import os
import pathlib
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from structured.cli import reports_usage_errors
from structured.config import build_model, load_config
from structured.data.loading import write_palette_png
from structured.data.synthetic import generate_dataset
from structured.engine.checkpoint import save_checkpoint
from tests.conftest import REPO_ROOT

SMOKE_RECIPE = REPO_ROOT / "configs" / "smoke" / "faster_rcnn_r18_fpn_tiny.yaml"
UNET_RECIPE = REPO_ROOT / "configs" / "unet" / "unet_original.yaml"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny COCO set, a good checkpoint and the broken inputs, all under one folder."""
    root = tmp_path_factory.mktemp("cli_inputs")
    generate_dataset(root / "shapes", num_train=2, num_val=1, image_size=64, formats=("coco",))
    config = load_config(SMOKE_RECIPE, ["model.num_classes=5"])
    model = build_model(config)
    save_checkpoint({"model": model.state_dict(), "config": config.data,
                     "class_names": ["__background__", *"abcde"]}, root / "good.pt")
    (root / "cut.pt").write_bytes((root / "good.pt").read_bytes()[:4096])
    torch.save({"path": pathlib.PurePosixPath("x")}, root / "pickle.pt")
    content = json.loads((root / "shapes" / "annotations" / "instances_train.json").read_text())
    content["annotations"][0]["bbox"][1] = "ten"
    (root / "bad_bbox.json").write_text(json.dumps(content))
    (root / "typed.yaml").write_text(SMOKE_RECIPE.read_text().replace("batch_size: 2", "batch_size: two"))
    (root / "yolo_without_classes" / "images").mkdir(parents=True)
    (root / "yolo_without_classes" / "labels").mkdir()
    unet = load_config(UNET_RECIPE, ["model.num_classes=2", "model.encoder.width=4", "model.encoder.depth=2",
                                     "model.decoder.channels=[8,4]"])
    unet.dump(root / "unet.yaml")
    save_checkpoint({"model": build_model(unet).state_dict(), "config": unet.data, "task": "semantic",
                     "class_names": ["__background__", "a", "b"]}, root / "unet.pt")
    for folder in ("images", "masks"):
        (root / "bad_masks" / folder).mkdir(parents=True)
    (root / "bad_masks" / "labelmap.txt").write_text("background\na\nb\n")
    cv2.imwrite(str(root / "bad_masks" / "images" / "x.png"), np.zeros((40, 30, 3), np.uint8))
    write_palette_png(root / "bad_masks" / "masks" / "x.png", np.ones((20, 30), np.uint8))
    return root


CASES = {
    "missing checkpoint": (["infer.py", "{shapes}/JPEGImages", "--weights", "{root}/missing.pt"],
                           "checkpoint not found: {root}/missing.pt"),
    "truncated checkpoint": (["infer.py", "{shapes}/JPEGImages", "--weights", "{root}/cut.pt"],
                             "cannot read checkpoint {root}/cut.pt: it is empty, truncated"),
    "pickle refused by weights_only": (["infer.py", "{shapes}/JPEGImages", "--weights", "{root}/pickle.pt"],
                                       "{root}/pickle.pt: it holds Python objects (pathlib.PurePosixPath)"),
    "missing source": (["infer.py", "{root}/nothing.jpg", "--weights", "{root}/good.pt", "--out", "{root}/out"],
                       "input not found: {root}/nothing.jpg"),
    "--set train.lr=abc": (["train_det.py", str(SMOKE_RECIPE), "--set", "train.lr=abc", "--out", "{root}/run"],
                           "(--set train.lr=abc): 'lr' in train must be float, got 'abc' (str)"),
    "wrong-typed recipe value": (["train_det.py", "{root}/typed.yaml", "--out", "{root}/run"],
                                 "{root}/typed.yaml: 'batch_size' in data must be int, got 'two' (str)"),
    "unknown key": (["eval.py", str(SMOKE_RECIPE), "--weights", "{root}/good.pt", "--data",
                     "{shapes}/annotations/instances_val.json", "--set", "data.batchsize=2"],
                    "unknown key 'batchsize' in data"),
    "COCO bbox string": (["inspect_dataset.py", "{root}/bad_bbox.json", "--images", "{shapes}/JPEGImages"],
                         "bad_bbox.json annotation id=1 (image_id=1, 000001.jpg): bbox must be 4 numbers"),
    "YOLO folder without classes": (["convert_dataset.py", "{root}/yolo_without_classes", "{root}/converted",
                                     "--from", "yolo", "--to", "coco"],
                                    "{root}/yolo_without_classes/classes.txt not found"),
    "semantic mask of another size": (["eval.py", "{root}/unet.yaml", "--weights", "{root}/unet.pt", "--data",
                                       "{root}/bad_masks", "--out", "{root}/out", "--speed-iters", "0"],
                                      "{root}/bad_masks/masks/x.png: mask is 20x30 (HxW) but the image"),
    "checkpoint of another task": (["eval.py", str(REPO_ROOT / "configs" / "mask_rcnn" / "mask_rcnn_r18_fpn.yaml"),
                                    "--weights", "{root}/unet.pt", "--data", "{shapes}/annotations/instances_val.json"],
                                   "{root}/unet.pt holds a semantic model but the recipe "
                                   f"{REPO_ROOT}/configs/mask_rcnn/mask_rcnn_r18_fpn.yaml describes an instance model"),
    "checkpoint of other classes": (["eval.py", str(SMOKE_RECIPE), "--weights", "{root}/good.pt", "--data",
                                     "{shapes}/annotations/instances_val.json"],
                                    "the weights {root}/good.pt were trained on classes ['a', 'b', 'c', 'd', 'e'], "
                                    "the dataset {shapes}/annotations/instances_val.json has ['circle'"),
    "eval of a recipe without data": (["eval.py", str(SMOKE_RECIPE), "--weights", "{root}/good.pt"],
                                      "the recipe names no data (data.train and data.val are null); pass the "
                                      "dataset to evaluate with --data"),
    "split without data": (["eval.py", str(SMOKE_RECIPE), "--weights", "{root}/good.pt", "--split", "val"],
                           "--split val chooses a split of --data; without --data the recipe's own validation set"),
    "folder without images": (["infer.py", "{root}/yolo_without_classes", "--weights", "{root}/good.pt"],
                              "no image or video in folder {root}/yolo_without_classes (looked for .jpg"),
    "unknown device": (["infer.py", "{shapes}/JPEGImages", "--weights", "{root}/good.pt", "--device", "gpu"],
                       "unknown device 'gpu'; expected cpu, cuda, cuda:<index> or mps"),
    "unknown class": (["infer.py", "{shapes}/JPEGImages", "--weights", "{root}/good.pt", "--classes", "dog",
                       "--out", "{root}/out"], "unknown class 'dog'; classes: a, b, c, d, e"),
    "score threshold out of range": (["infer.py", "{shapes}/JPEGImages", "--weights", "{root}/good.pt",
                                      "--score-thr", "1.5", "--out", "{root}/out"],
                                     "score_threshold (--score-thr) must be a number in [0, 1], got 1.5"),
    "run folder that is a file": (["train_det.py", str(SMOKE_RECIPE), "--data", "{shapes}/annotations/instances_train.json",
                                   "--out", "{root}/good.pt"],
                                  "the run folder {root}/good.pt is a file; pass --out a folder (new or a run's)"),
    "missing torchvision file": (["convert_torchvision.py", "{root}/none.pth", "{root}/out.pt", "--model",
                                  "faster_rcnn_r50_fpn"], "torchvision checkpoint not found: {root}/none.pth"),
}


def expected_line(case: str, inputs: Path) -> tuple[list[str], str]:
    """The tool's arguments of ``case`` and the text its error line must hold, with the paths filled in."""
    arguments, culprit = CASES[case]
    fields = {"root": inputs, "shapes": inputs / "shapes"}
    return [arguments[0], *(a.format(**fields) for a in arguments[1:])], culprit.format(**fields)


def check_one_error_line(status: int | None, stdout: str, stderr: str, culprit: str) -> None:
    """Status 2, no traceback, and exactly one ``error:`` line, naming ``culprit``."""
    output = stdout + stderr
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert status == 2, output
    assert "Traceback" not in output
    assert len(error_lines) == 1 and culprit in error_lines[0], output


@pytest.mark.parametrize("case", list(CASES))
def test_tool_reports_unusable_input_in_one_line_with_status_2(inputs: Path, case: str, monkeypatch, capsys) -> None:
    arguments, culprit = expected_line(case, inputs)
    tool = importlib.import_module(f"tools.{Path(arguments[0]).stem}")
    monkeypatch.chdir(inputs)
    try:
        status = tool.main(arguments[1:])
    except SystemExit as exit_request:
        status = exit_request.code
    captured = capsys.readouterr()
    check_one_error_line(status, captured.out, captured.err, culprit)


def test_a_tool_run_as_a_process_reports_unusable_input_the_same_way(inputs: Path) -> None:
    arguments, culprit = expected_line("truncated checkpoint", inputs)
    command = [sys.executable, str(REPO_ROOT / "tools" / arguments[0]), *arguments[1:]]
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, cwd=inputs, capture_output=True, text=True, env=environment, timeout=300,
                               check=False)
    check_one_error_line(completed.returncode, completed.stdout, completed.stderr, culprit)


def test_a_bug_keeps_its_traceback() -> None:
    @reports_usage_errors
    def main(argv: list[str] | None = None) -> int:
        raise RuntimeError("a genuine bug")

    with pytest.raises(RuntimeError, match="a genuine bug"):
        main([])


def test_the_system_refusing_a_path_is_one_line_naming_it(tmp_path: Path, capsys) -> None:
    @reports_usage_errors
    def main(argv: list[str] | None = None) -> int:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "run" / "log.jsonl"))

    assert main([]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'run' / 'log.jsonl'}: Read-only file system\n"


def test_an_oserror_without_a_path_keeps_its_traceback() -> None:
    @reports_usage_errors
    def main(argv: list[str] | None = None) -> int:
        raise OSError("a device failed")

    with pytest.raises(OSError, match="a device failed"):
        main([])


def test_ctrl_c_is_one_line_and_status_130(capsys) -> None:
    @reports_usage_errors
    def main(argv: list[str] | None = None) -> int:
        raise KeyboardInterrupt

    assert main([]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_a_tools_warnings_read_warning_then_the_message() -> None:
    shown = []

    @reports_usage_errors
    def main(argv: list[str] | None = None) -> int:
        shown.append(warnings.formatwarning(UserWarning("3 boxes clipped"), UserWarning, "coco.py", 1, "code"))
        return 0

    default_format = warnings.formatwarning
    assert main([]) == 0 and shown == ["warning: 3 boxes clipped\n"]
    assert warnings.formatwarning is default_format


@pytest.mark.parametrize(("arguments", "message"), [
    (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got '0'"),
    (["--speed-iters", "two"], "argument --speed-iters: must be an integer >= 0, got 'two'"),
])
def test_counts_on_the_command_line_are_checked_by_the_parser(inputs: Path, capsys, arguments, message) -> None:
    from tools import eval as eval_tool

    with pytest.raises(SystemExit) as stopped:
        eval_tool.main([str(SMOKE_RECIPE), "--weights", str(inputs / "good.pt"), *arguments])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


# infer outputs


def run_infer(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Status, stdout and stderr of ``tools/infer.py`` run in this process."""
    from tools import infer as infer_tool

    status = infer_tool.main(arguments)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def copy_images(inputs: Path, folder: Path, names: list[str]) -> list[Path]:
    """The first picture of the tiny set copied under ``folder`` once per name."""
    picture = sorted((inputs / "shapes" / "JPEGImages").glob("*.jpg"))[0].read_bytes()
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(picture)
    return [folder / name for name in names]


def test_infer_refuses_to_write_over_its_inputs(inputs: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "pictures"
    first, second = copy_images(inputs, folder, ["a.jpg", "b.jpg"])
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    status, out, err = run_infer([str(folder), "--weights", str(inputs / "good.pt"), "--out", str(folder)], capsys)
    check_one_error_line(status, out, err, f"the output folder {folder} (--out) holds inputs that the outputs would "
                                           f"overwrite ({first}, {second}); write the outputs to another folder")
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


def test_infer_writes_pictures_of_extensions_opencv_cannot_write_as_jpg(inputs: Path, tmp_path: Path, capsys) -> None:
    sources = copy_images(inputs, tmp_path / "in", ["photo.jfif", "noext"])
    out = tmp_path / "out"
    status, _, _ = run_infer([*map(str, sources), "--weights", str(inputs / "good.pt"), "--out", str(out)], capsys)
    assert status == 0
    assert sorted(path.name for path in out.iterdir()) == ["images.json", "noext.jpg", "photo.jpg", "predictions.json"]
    catalogue = json.loads((out / "images.json").read_text())
    assert [entry["file_name"] for entry in catalogue["images"]] == ["photo.jpg", "noext.jpg"]


def test_an_output_that_cannot_be_written_loses_no_other(inputs: Path, tmp_path: Path, capsys) -> None:
    sources = copy_images(inputs, tmp_path / "in", ["a.jpg", "b.jpg"])
    out = tmp_path / "out"
    (out / "a.jpg").mkdir(parents=True)
    status, printed, _ = run_infer([*map(str, sources), "--weights", str(inputs / "good.pt"), "--out", str(out),
                                    "--score-thr", "0", "--save-txt"], capsys)
    assert status == 1
    assert f"skipped {sources[0]}: cannot write image {out / 'a.jpg'}: it is a folder;" in printed
    assert "2 images, median" in printed and "; 1 skipped;" in printed
    assert (out / "b.jpg").is_file() and sorted(path.name for path in (out / "labels").iterdir()) == ["b.txt"]
    catalogue = json.loads((out / "images.json").read_text())
    assert [entry["file_name"] for entry in catalogue["images"]] == ["b.jpg"]
    assert {entry["image_id"] for entry in json.loads((out / "predictions.json").read_text())} == {1}


def test_infer_finds_in_a_folder_the_gif_and_jfif_files_it_takes_by_name(inputs: Path, tmp_path: Path) -> None:
    from structured.inference import list_sources

    listed = copy_images(inputs, tmp_path, ["a.gif", "b.jfif", "c.jpg"])
    (tmp_path / "notes.txt").write_text("not a picture")
    assert list_sources(tmp_path) == listed


def test_infer_says_when_no_image_was_predicted(inputs: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"not a picture")
    status, printed, _ = run_infer([str(tmp_path / "broken.jpg"), "--weights", str(inputs / "good.pt"), "--out",
                                    str(tmp_path / "out")], capsys)
    assert status == 1 and f"no image predicted; 1 skipped; results in {tmp_path / 'out'}" in printed
    assert "nan" not in printed


def test_infer_with_save_txt_says_once_that_a_segmenter_writes_no_labels(inputs: Path, tmp_path: Path, capsys) -> None:
    sources = copy_images(inputs, tmp_path / "in", ["a.jpg", "b.jpg"])
    out = tmp_path / "out"
    status, _, err = run_infer([*map(str, sources), "--weights", str(inputs / "unet.pt"), "--out", str(out),
                                "--save-txt"], capsys)
    assert status == 0 and err.count("note: --save-txt writes detectors' YOLO labels") == 1
    assert not (out / "labels").exists() and sorted(path.name for path in (out / "masks").iterdir()) == ["a.png", "b.png"]
