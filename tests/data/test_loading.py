"""Image decoding (formats, EXIF, bad files), collation and the seeded DataLoader."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from structured.data.coco import CocoDetection
from structured.data.loading import (
    ImageReadError,
    build_dataloader,
    collate_detection,
    image_to_tensor,
    read_image,
    read_index_png,
    worker_errors_unwrapped,
    write_palette_png,
)
from structured.data.transforms import training_transforms


@pytest.fixture()
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(24, 40, 3), dtype=np.uint8)


def test_png_rgb_grayscale_rgba_and_16_bit_come_out_rgb_uint8(tmp_path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), rgb)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), np.repeat(rgb[..., :1], 3, axis=2))
    rgba = np.concatenate((rgb, np.full((24, 40, 1), 255, np.uint8)), axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)
    cv2.imwrite(str(tmp_path / "deep.png"), rgb[..., ::-1].astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png"), rgb)


def test_exif_orientation_is_applied(tmp_path: Path, rgb: np.ndarray) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored pixels must be turned 90 degrees clockwise for display
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    Image.fromarray(rgb).save(tmp_path / "plain.jpg", quality=100)
    plain = read_image(tmp_path / "plain.jpg")
    rotated = read_image(tmp_path / "rotated.jpg")
    assert rotated.shape == (40, 24, 3)
    np.testing.assert_array_equal(rotated, np.rot90(plain, k=-1))


@pytest.mark.parametrize("case", ["missing", "empty", "truncated_jpeg", "truncated_png", "garbage"])
def test_bad_image_files_raise_an_error_naming_the_file(tmp_path: Path, rgb: np.ndarray, case: str) -> None:
    Image.fromarray(rgb).save(tmp_path / "good.jpg")
    Image.fromarray(rgb).save(tmp_path / "good.png")
    path = tmp_path / f"{case}.img"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated_jpeg":
        data = (tmp_path / "good.jpg").read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    elif case == "truncated_png":
        data = (tmp_path / "good.png").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "garbage":
        path.write_bytes(b"this is not an image" * 10)
    with pytest.raises(ImageReadError, match=re.escape(str(path))):
        read_image(path)


def test_jpeg_with_trailing_bytes_after_the_end_marker_is_accepted(tmp_path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb).save(tmp_path / "good.jpg")
    path = tmp_path / "trailing.jpg"
    path.write_bytes((tmp_path / "good.jpg").read_bytes() + b"\x00" * 64)
    assert read_image(path).shape == (24, 40, 3)


def test_index_png_reads_palette_indices_and_refuses_colour(tmp_path: Path) -> None:
    indices = np.array([[0, 1, 255], [2, 3, 1]], dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_index_png(tmp_path / "palette.png"), indices)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "colour.png")
    with pytest.raises(ImageReadError, match=r"colour\.png"):
        read_index_png(tmp_path / "colour.png")


def test_image_to_tensor_and_collate() -> None:
    image = np.full((5, 7, 3), 255, dtype=np.uint8)
    tensor = image_to_tensor(image)
    assert tensor.shape == (3, 5, 7) and tensor.dtype == torch.float32 and tensor.max() == 1.0
    batch = [(torch.zeros(3, 4, 5), {"image_id": 1}), (torch.zeros(3, 6, 2), {"image_id": 2})]
    images, targets = collate_detection(batch)
    assert [im.shape[1:] for im in images] == [(4, 5), (6, 2)] and [t["image_id"] for t in targets] == [1, 2]


def _batches(loader) -> list:
    return [(torch.stack([im.mean() for im in images]), [t["boxes"] for t in targets]) for images, targets in loader]


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"num_workers": -1}])
def test_dataloader_refuses_bad_arguments(synthetic_root: Path, bad: dict) -> None:
    dataset = CocoDetection(synthetic_root / "annotations" / "instances_val.json", synthetic_root / "JPEGImages")
    with pytest.raises(ValueError, match=next(iter(bad))):
        build_dataloader(dataset, **bad)


def test_seeded_loader_gives_the_same_batches_with_0_and_2_workers(synthetic_root: Path) -> None:
    dataset = CocoDetection(synthetic_root / "annotations" / "instances_train.json", synthetic_root / "JPEGImages",
                            transforms=training_transforms(96), seed=3)
    serial_loader = build_dataloader(dataset, batch_size=4, seed=11, num_workers=0)
    serial = [_batches(serial_loader) for _ in range(2)]
    parallel_loader = build_dataloader(dataset, batch_size=4, seed=11, num_workers=2)
    parallel = [_batches(parallel_loader) for _ in range(2)]
    assert len(serial[0]) == 3
    for serial_epoch, parallel_epoch in zip(serial, parallel, strict=True):
        for (means_a, boxes_a), (means_b, boxes_b) in zip(serial_epoch, parallel_epoch, strict=True):
            torch.testing.assert_close(means_a, means_b)
            for a, b in zip(boxes_a, boxes_b, strict=True):
                torch.testing.assert_close(a, b)
    first_means = torch.sort(torch.cat([means for means, _ in serial[0]])).values
    second_means = torch.sort(torch.cat([means for means, _ in serial[1]])).values
    assert not torch.equal(first_means, second_means)  # a new pass draws new augmentations
    other_seed = _batches(build_dataloader(dataset, batch_size=4, seed=12, num_workers=0))
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(serial[0], other_seed, strict=True))


@pytest.mark.parametrize("name", ["x.jpg", "noext", "folder.png"])
def test_write_palette_png_refuses_a_name_that_is_not_a_png_file(tmp_path: Path, name: str) -> None:
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ValueError, match=rf"cannot write class map .*{name}: .*; expected a file name ending in .png"):
        write_palette_png(tmp_path / name, np.zeros((4, 4), np.uint8))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["folder.png"]


def test_write_palette_png_writes_a_map_that_reads_back(tmp_path: Path) -> None:
    class_map = np.arange(12, dtype=np.uint8).reshape(3, 4)
    written = write_palette_png(tmp_path / "sub" / "map.png", class_map)
    assert np.array_equal(read_index_png(written), class_map)
    assert sorted(path.name for path in written.parent.iterdir()) == ["map.png"]


def _failing(error: Exception):
    yield "first batch"
    raise error


def test_a_workers_data_error_is_raised_with_the_message_it_had_there() -> None:
    wrapped = ImageReadError("Caught ImageReadError in DataLoader worker process 1.\nOriginal Traceback (most recent "
                             "call last):\n  File \"loading.py\", line 9, in read_image\nImageReadError: bad.jpg is "
                             "truncated (no end-of-image marker)\n")
    batches = worker_errors_unwrapped(_failing(wrapped))
    assert next(batches) == "first batch"
    with pytest.raises(ImageReadError, match=r"^bad\.jpg is truncated \(no end-of-image marker\)$") as raised:
        next(batches)
    assert raised.value.__cause__ is wrapped
    with pytest.raises(ValueError, match="^a main-process error$"):
        list(worker_errors_unwrapped(_failing(ValueError("a main-process error"))))
    assert list(worker_errors_unwrapped([1, 2])) == [1, 2]
