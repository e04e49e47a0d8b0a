"""COCO <-> VOC <-> YOLO conversion: lossless round trips on integer boxes, and the documented losses."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from structured.data.coco import CocoDetection
from structured.data.convert import crowd_count, read_annotations, write_annotations
from structured.data.synthetic import SHAPE_CLASSES
from tests.data.conftest import CATEGORY_IDS
from tools import convert_dataset


def _source(synthetic_root: Path):
    return read_annotations("coco", synthetic_root / "annotations" / "instances_train.json",
                            image_root=synthetic_root / "JPEGImages")


def _assert_same(first, second, atol: float = 0.0) -> None:
    assert [r.path.name for r in first.records] == [r.path.name for r in second.records]
    for a, b in zip(first.records, second.records, strict=True):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=atol)
        assert [first.class_names[i - 1] for i in a.labels] == [second.class_names[i - 1] for i in b.labels]


def test_coco_voc_coco_is_lossless_on_integer_boxes(tmp_path: Path, synthetic_root: Path) -> None:
    source = _source(synthetic_root)
    assert all(np.array_equal(r.boxes, r.boxes.round()) for r in source.records)
    write_annotations(source, "voc", tmp_path / "voc")
    voc = read_annotations("voc", tmp_path / "voc", class_names=source.class_names, split="all")
    _assert_same(source, voc)
    voc.category_ids = source.category_ids
    json_path = write_annotations(voc, "coco", tmp_path / "coco")
    back = read_annotations("coco", json_path, image_root=tmp_path / "coco" / "images")
    _assert_same(source, back)
    assert back.category_ids == list(CATEGORY_IDS)


@pytest.mark.parametrize("middle", ["yolo", "voc"])
def test_round_trips_through_every_format(tmp_path: Path, synthetic_root: Path, middle: str) -> None:
    source = _source(synthetic_root)
    write_annotations(source, middle, tmp_path / middle)
    if middle == "yolo":
        through = read_annotations("yolo", tmp_path / middle)
    else:
        through = read_annotations("voc", tmp_path / middle, class_names=SHAPE_CLASSES)
    other = "voc" if middle == "yolo" else "yolo"
    write_annotations(through, other, tmp_path / other)
    final = read_annotations(other, tmp_path / other, class_names=SHAPE_CLASSES)
    _assert_same(source, through, atol=1e-3)
    _assert_same(source, final, atol=1e-3)


def test_converted_coco_is_read_by_pycocotools_and_our_loader(tmp_path: Path, synthetic_root: Path) -> None:
    json_path = write_annotations(_source(synthetic_root), "coco", tmp_path / "coco", image_mode="copy")
    coco = COCO(str(json_path))
    assert len(coco.getImgIds()) == 12 and sorted(coco.getCatIds()) == list(CATEGORY_IDS)
    dataset = CocoDetection(json_path, tmp_path / "coco" / "images")
    assert dataset[0][0].shape == (3, 128, 128) and not (tmp_path / "coco" / "images" / "000001.jpg").is_symlink()


def test_yolo_fractional_boxes_within_a_thousandth_of_a_pixel(tmp_path: Path, synthetic_root: Path) -> None:
    source = _source(synthetic_root)
    rng = np.random.default_rng(0)
    for record in source.records:
        record.boxes = np.clip(record.boxes + rng.uniform(-0.4, 0.4, record.boxes.shape), 0, 128).astype(np.float32)
    write_annotations(source, "yolo", tmp_path / "yolo", image_mode="none")
    (tmp_path / "yolo" / "images").symlink_to(synthetic_root / "JPEGImages")
    through = read_annotations("yolo", tmp_path / "yolo")
    names = {r.path.name for r in source.records}
    through.records = [r for r in through.records if r.path.name in names]
    _assert_same(source, through, atol=1e-3)


def test_bad_yolo_lines_and_arguments_are_explained(tmp_path: Path, synthetic_root: Path) -> None:
    write_annotations(_source(synthetic_root), "yolo", tmp_path / "yolo")
    label = sorted((tmp_path / "yolo" / "labels").glob("*.txt"))[0]
    label.write_text("9 0.5 0.5 0.1 0.1\n")
    with pytest.raises(ValueError, match=rf"{label.name} line 1: .*class in 0\.\.4"):
        read_annotations("yolo", tmp_path / "yolo")
    label.write_text("0 0.5 half 0.1 0.1\n")
    with pytest.raises(ValueError, match="line 1: expected 'class cx cy w h' numbers"):
        read_annotations("yolo", tmp_path / "yolo")
    with pytest.raises(ValueError, match="format must be one of"):
        read_annotations("csv", tmp_path)
    with pytest.raises(ValueError, match="image_root"):
        read_annotations("coco", tmp_path / "x.json")
    with pytest.raises(ValueError, match="image_mode"):
        write_annotations(_source(synthetic_root), "voc", tmp_path / "v", image_mode="hardlink")


def _edited_coco(tmp_path: Path, synthetic_root: Path, edit) -> Path:
    """A copy of the synthetic training JSON changed by ``edit(content)``."""
    content = json.loads((synthetic_root / "annotations" / "instances_train.json").read_text())
    edit(content)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(content))
    return path


def _convert(*args: str) -> tuple[int, str, str]:
    output, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(errors):
        status = convert_dataset.main(list(args))
    return status, output.getvalue(), errors.getvalue()


def test_cli_lists_the_boxes_the_reader_dropped_or_clipped(tmp_path: Path, synthetic_root: Path) -> None:
    def break_two_boxes(content: dict) -> None:
        content["annotations"][0]["bbox"] = [10, 10, 0, 0]
        content["annotations"][1]["bbox"] = [100, 100, 50, 10]

    source = _edited_coco(tmp_path, synthetic_root, break_two_boxes)
    total = len(json.loads(source.read_text())["annotations"])
    status, output, errors = _convert(str(source), str(tmp_path / "out"), "--to", "yolo",
                                      "--images", str(synthetic_root / "JPEGImages"))
    assert status == 0 and f"{total - 1} boxes" in output
    assert "1 clipped_box, 1 degenerate_box" in errors and "has zero area" in errors


@pytest.mark.parametrize(("target", "kept"), [("coco", 1), ("voc", 0), ("yolo", 0)])
def test_crowd_regions_are_kept_only_by_coco(tmp_path: Path, synthetic_root: Path, target: str, kept: int) -> None:
    source = _source(synthetic_root)
    record = source.records[0]
    record.iscrowd = np.zeros(len(record.labels), dtype=np.int64)
    record.iscrowd[0] = 1
    before = sum(len(r.labels) for r in source.records)
    write_annotations(source, target, tmp_path / target)
    if target == "coco":
        back = read_annotations("coco", tmp_path / target / "annotations.json", image_root=tmp_path / target / "images")
    else:
        back = read_annotations(target, tmp_path / target, class_names=source.class_names)
    assert sum(len(r.labels) for r in back.records) == before - 1 + kept
    assert crowd_count(source, target) == 1 - kept


def test_cli_says_how_many_crowd_regions_it_left_out(tmp_path: Path, synthetic_root: Path) -> None:
    source = _edited_coco(tmp_path, synthetic_root, lambda content: content["annotations"][0].update(iscrowd=1))
    total = len(json.loads(source.read_text())["annotations"])
    status, output, errors = _convert(str(source), str(tmp_path / "out"), "--to", "yolo",
                                      "--images", str(synthetic_root / "JPEGImages"))
    assert status == 0 and f"{total - 1} boxes" in output
    assert "left out 1 crowd region(s) (iscrowd=1): yolo has no crowd flag" in errors


def test_a_missing_image_is_named_before_anything_is_written(tmp_path: Path, synthetic_root: Path) -> None:
    source = _edited_coco(tmp_path, synthetic_root,
                          lambda content: content["images"][0].update(file_name="does_not_exist.jpg"))
    annotations = read_annotations("coco", source, image_root=synthetic_root / "JPEGImages")
    with pytest.raises(FileNotFoundError, match=r"1 annotated image\(s\) not found, e.g. .*does_not_exist\.jpg"):
        write_annotations(annotations, "yolo", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    write_annotations(annotations, "coco", tmp_path / "labels_only", image_mode="none")


def test_a_non_empty_destination_is_refused(tmp_path: Path, synthetic_root: Path) -> None:
    source = _source(synthetic_root)
    write_annotations(source, "yolo", tmp_path / "out")
    stale = tmp_path / "out" / "labels" / "stale.txt"
    stale.write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(FileExistsError, match="destination .*out is not empty"):
        write_annotations(source, "yolo", tmp_path / "out")
    assert stale.exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        write_annotations(source, "voc", tmp_path / "file")
    (tmp_path / "empty").mkdir()
    write_annotations(source, "voc", tmp_path / "empty")
