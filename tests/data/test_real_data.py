"""The loaders on the real datasets beside the checkout (../shared/data): counts and decoded formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from structured.data.folders import MaskFolderDataset
from structured.data.loading import read_image
from structured.data.voc import VOCDetection

pytestmark = pytest.mark.real_data

GRAYSCALE_RACCOONS = ("raccoon-150", "raccoon-152", "raccoon-161")


def test_raccoon_flat_voc_layout(shared_data: Path) -> None:
    dataset = VOCDetection(shared_data / "raccoon")
    assert len(dataset) == 200 and dataset.class_names == ["__background__", "raccoon"]
    assert sum(len(record.labels) for record in dataset.records) == 217
    assert not dataset.report, dataset.report.summary("raccoon")
    assert [r.image_id for r in dataset.records[:3]] == ["raccoon-1", "raccoon-2", "raccoon-3"]
    for record in dataset.records:
        assert record.path.is_file()
        assert (record.boxes[:, 2:] > record.boxes[:, :2]).all()
        assert (record.boxes[:, 2] <= record.width).all() and (record.boxes[:, 3] <= record.height).all()


def test_raccoon_grayscale_images_come_out_rgb(shared_data: Path) -> None:
    dataset = VOCDetection(shared_data / "raccoon")
    by_id = {record.image_id: index for index, record in enumerate(dataset.records)}
    for image_id in GRAYSCALE_RACCOONS:
        image, target = dataset[by_id[image_id]]
        record = dataset.records[by_id[image_id]]
        assert image.shape == (3, record.height, record.width)
        assert (image[0] == image[1]).all() and (image[1] == image[2]).all()
        assert len(target["boxes"]) >= 1
    colour = read_image(shared_data / "raccoon" / "images" / "raccoon-1.jpg")
    assert colour.shape[2] == 3 and not np.array_equal(colour[..., 0], colour[..., 1])


@pytest.mark.slow
def test_dsb2018_instances_and_rgba_images(shared_data: Path) -> None:
    dataset = MaskFolderDataset(shared_data / "dsb2018_nuclei" / "stage1_train", class_name="nucleus",
                                with_masks=False)
    assert len(dataset) == 200
    assert sum(len(record.extra["mask_paths"]) for record in dataset.records) == 8608
    instances = 0
    for index in range(len(dataset)):
        image, target = dataset.load_sample(index)
        assert image.dtype == np.uint8 and image.shape[2] == 3
        boxes = target["boxes"]
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert (boxes[:, 2] <= image.shape[1]).all() and (boxes[:, 3] <= image.shape[0]).all()
        instances += len(boxes)
    assert instances == 8608 and not dataset.report


def test_dsb2018_one_sample_with_masks(shared_data: Path) -> None:
    dataset = MaskFolderDataset(shared_data / "dsb2018_nuclei" / "stage1_train")
    image, target = dataset[0]
    assert image.shape[0] == 3 and target["masks"].shape == (len(target["boxes"]), *image.shape[1:])
    assert target["masks"].sum() > 0
