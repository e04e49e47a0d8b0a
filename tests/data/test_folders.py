"""Mask-folder datasets: DSB2018 layout (one PNG per instance) and image + index-PNG pairs."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from structured.data.folders import MaskFolderDataset, SemanticFolderDataset
from structured.data.summary import format_summary, summarize_dataset
from structured.data.synthetic import iter_samples, semantic_map


def _write_instance_folders(root: Path, count: int) -> list:
    samples = iter_samples(count, seed=4, image_size=96, min_objects=2)
    for index, sample in enumerate(samples):
        folder = root / f"id{index}"
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
        alpha = np.full((96, 96, 1), 255, np.uint8)
        Image.fromarray(np.concatenate((sample.image, alpha), axis=2), mode="RGBA").save(folder / "images" / f"id{index}.png")
        for number, mask in enumerate(sample.masks):
            cv2.imwrite(str(folder / "masks" / f"m{number:03d}.png"), mask * 255)
    return samples


def test_boxes_labels_and_masks_come_from_the_instance_pngs(tmp_path: Path) -> None:
    samples = _write_instance_folders(tmp_path, 3)
    dataset = MaskFolderDataset(tmp_path, class_name="shape")
    assert len(dataset) == 3 and dataset.class_names == ["__background__", "shape"]
    for index, sample in enumerate(samples):
        image, target = dataset[index]
        np.testing.assert_array_equal((image * 255).round().byte().permute(1, 2, 0).numpy(), sample.image)
        np.testing.assert_array_equal(target["boxes"].numpy(), sample.boxes)
        np.testing.assert_array_equal(target["masks"].numpy(), sample.masks)
        assert target["labels"].tolist() == [1] * len(sample.boxes)
    assert "masks" not in MaskFolderDataset(tmp_path, with_masks=False)[0][1]


def test_empty_mask_is_dropped_and_counted_and_size_mismatch_is_an_error(tmp_path: Path) -> None:
    samples = _write_instance_folders(tmp_path, 1)
    cv2.imwrite(str(tmp_path / "id0" / "masks" / "zzz_empty.png"), np.zeros((96, 96), np.uint8))
    dataset = MaskFolderDataset(tmp_path)
    assert len(dataset[0][1]["boxes"]) == len(samples[0].boxes)
    assert dataset.report.counts["empty_mask"] == 1 and "zzz_empty.png" in dataset.report.messages[0]
    cv2.imwrite(str(tmp_path / "id0" / "masks" / "zzz_empty.png"), np.ones((50, 96), np.uint8))
    with pytest.raises(ValueError, match=r"zzz_empty\.png: mask is"):
        dataset[0]


def test_wrong_layouts_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        MaskFolderDataset(tmp_path / "nothing")
    with pytest.raises(ValueError, match=r"<id>/images/<id>\.png"):
        MaskFolderDataset(tmp_path)
    (tmp_path / "x" / "images").mkdir(parents=True)
    with pytest.raises(ValueError, match="exactly one image"):
        MaskFolderDataset(tmp_path)


def test_semantic_folder_pairs(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    samples = iter_samples(2, seed=2, image_size=64)
    for index, sample in enumerate(samples):
        cv2.imwrite(str(tmp_path / "img" / f"s{index}.png"), sample.image[..., ::-1])
        cv2.imwrite(str(tmp_path / "lbl" / f"s{index}.png"), semantic_map(sample))
    dataset = SemanticFolderDataset(tmp_path / "img", tmp_path / "lbl", class_names=[f"c{i}" for i in range(5)])
    assert len(dataset) == 2
    np.testing.assert_array_equal(dataset[1][1]["semantic"].numpy(), semantic_map(samples[1]))
    cv2.imwrite(str(tmp_path / "img" / "s9.png"), samples[0].image)
    with pytest.raises(ValueError, match=r"s9\.png"):
        SemanticFolderDataset(tmp_path / "img", tmp_path / "lbl", class_names=["a"])


def test_summary_lists_the_empty_masks_found_while_loading(tmp_path: Path) -> None:
    _write_instance_folders(tmp_path, 1)
    cv2.imwrite(str(tmp_path / "id0" / "masks" / "zzz_empty.png"), np.zeros((96, 96), np.uint8))
    summary = summarize_dataset(MaskFolderDataset(tmp_path))
    assert summary.problems.counts["empty_mask"] == 1 and "zzz_empty.png" in format_summary(summary, "masks")


def test_a_mask_of_several_instance_labels_is_refused_naming_it(tmp_path: Path) -> None:
    _write_instance_folders(tmp_path, 1)
    labels = np.zeros((96, 96), np.uint8)
    labels[:10, :10], labels[50:60, 50:60] = 1, 2
    cv2.imwrite(str(tmp_path / "id0" / "masks" / "labels.png"), labels)
    with pytest.raises(ValueError, match=r"labels\.png: the mask holds 2 different foreground values \[1, 2\]; "
                                         "expected one binary mask per instance"):
        MaskFolderDataset(tmp_path)[0]


def test_a_sample_without_a_masks_folder_is_counted(tmp_path: Path) -> None:
    _write_instance_folders(tmp_path, 2)
    shutil.rmtree(tmp_path / "id1" / "masks")
    with pytest.warns(UserWarning, match="1 no_masks_folder"):
        dataset = MaskFolderDataset(tmp_path)
    assert "id1: no masks/ folder; read as an image without objects" in dataset.report.messages[0]
    assert len(dataset[1][1]["boxes"]) == 0


def test_semantic_masks_of_only_0_and_255_are_refused_saying_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    for index, sample in enumerate(iter_samples(2, seed=2, image_size=64)):
        cv2.imwrite(str(tmp_path / "img" / f"s{index}.png"), sample.image[..., ::-1])
        cv2.imwrite(str(tmp_path / "lbl" / f"s{index}.png"), (semantic_map(sample) > 0).astype(np.uint8) * 255)
    with pytest.raises(ValueError, match=r"lbl: the masks hold only 0 and 255, and 255 means ignore here, so no "
                                         r"pixel is of class 'object'; save the foreground as its class index"):
        SemanticFolderDataset(tmp_path / "img", tmp_path / "lbl", class_names=["object"])
