"""YOLO datasets: ultralytics data.yaml (names list or dict, path/train/val), Roboflow paths, classes.txt."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from structured.data.recipes import DataConfig, build_datasets
from structured.data.summary import detect_format, open_dataset
from structured.data.yolo import label_folder, read_data_file, read_yolo

SPLITS = {"train": 3, "val": 2}


def _write_split(images: Path, labels: Path, split: str, count: int) -> None:
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for index in range(count):
        cv2.imwrite(str(images / f"{split}{index}.png"), np.full((40, 60, 3), 100, dtype=np.uint8))
        (labels / f"{split}{index}.txt").write_text(f"{index % 2} 0.5 0.5 0.25 0.5\n")


def _ultralytics(root: Path, names_yaml: str, path_entry: str = "path: .\n") -> Path:
    """``root/images/<split>`` + ``root/labels/<split>`` and ``root/data.yaml``, as ultralytics lays them out."""
    for split, count in SPLITS.items():
        _write_split(root / "images" / split, root / "labels" / split, split, count)
    data_file = root / "data.yaml"
    data_file.write_text(f"{path_entry}train: images/train\nval: images/val\n{names_yaml}")
    return data_file


@pytest.mark.parametrize("names_yaml", ["names: [cat, dog]\n", "names:\n  0: cat\n  1: dog\nnc: 2\n"])
def test_data_yaml_names_as_list_or_mapping(tmp_path: Path, names_yaml: str) -> None:
    data_file = _ultralytics(tmp_path, names_yaml)
    data = read_data_file(data_file)
    assert data.class_names == ["cat", "dog"]
    assert data.splits == {"train": [tmp_path / "images" / "train"], "val": [tmp_path / "images" / "val"]}
    val = read_yolo(data_file, split="val")
    assert [record.path.name for record in val.records] == ["val0.png", "val1.png"]
    assert val.records[1].labels.tolist() == [2]
    np.testing.assert_allclose(val.records[0].boxes, [[22.5, 10.0, 37.5, 30.0]])


def test_path_entry_is_relative_to_the_yaml_folder(tmp_path: Path) -> None:
    dataset_root = tmp_path / "datasets" / "pets"
    for split, count in SPLITS.items():
        _write_split(dataset_root / "images" / split, dataset_root / "labels" / split, split, count)
    data_file = tmp_path / "pets.yaml"
    data_file.write_text("path: datasets/pets\ntrain: images/train\nval: images/val\nnames: [cat, dog]\n")
    assert detect_format(data_file) == "yolo"
    assert len(open_dataset(data_file)) == 3 and len(open_dataset(data_file, split="val")) == 2


def test_build_datasets_trains_on_train_and_validates_on_val(tmp_path: Path) -> None:
    data_file = _ultralytics(tmp_path, "names: [cat, dog]\n")
    for given in (data_file, tmp_path):
        train, val = build_datasets(DataConfig(train=str(given), augment="none", image_size=None, val_fraction=0.5))
        assert [record.path.parent.name for record in train.records] == ["train"] * 3
        assert [record.path.parent.name for record in val.records] == ["val"] * 2
        assert train.class_names == val.class_names == ["__background__", "cat", "dog"]


def test_roboflow_yolo_paths_and_label_folders(tmp_path: Path) -> None:
    for split, count in (("train", 3), ("valid", 2)):
        _write_split(tmp_path / split / "images", tmp_path / split / "labels", split, count)
    (tmp_path / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 2\nnames: ['a', 'b']\n")
    assert label_folder(tmp_path / "valid" / "images") == tmp_path / "valid" / "labels"
    val = read_yolo(tmp_path, split="val")
    assert len(val.records) == 2 and all(len(record.labels) == 1 for record in val.records)


def test_bad_data_yaml_errors_name_the_file(tmp_path: Path) -> None:
    data_file = _ultralytics(tmp_path, "names: {0: cat, 2: dog}\n")
    with pytest.raises(ValueError, match=rf"{data_file}: 'names' must be a list"):
        read_yolo(data_file)
    data_file.write_text("train: images/train\nnames: [cat, dog]\nnc: 3\n")
    with pytest.raises(ValueError, match="nc is 3 but 'names' lists 2 classes"):
        read_yolo(data_file)
    data_file.write_text("train: images/missing\nnames: [cat, dog]\n")
    with pytest.raises(ValueError, match=r"train image folder .*images/missing not found"):
        read_yolo(data_file)
    data_file.write_text("train: images/train\nnames: [cat, dog]\n")
    with pytest.raises(ValueError, match=r"no 'val' split; it lists \['train'\]"):
        read_yolo(data_file, split="val")
    (tmp_path / "classes.txt").write_text("cat\nbird\n")
    with pytest.raises(ValueError, match=r"classes.txt lists \['cat', 'bird'\] but .*data.yaml names"):
        read_yolo(data_file)
