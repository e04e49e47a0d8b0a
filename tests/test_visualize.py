"""Drawing: inputs are not modified, boxes and masks land where they should, bad input is named."""

import numpy as np
import pytest
import torch

from structured.visualize import (
    can_write_image,
    class_color,
    draw_class_map,
    draw_detections,
    draw_heatmap,
    save_image,
    side_by_side,
    to_rgb_uint8,
)


def test_draw_detections_colours_box_edges_and_leaves_input_alone():
    image = np.full((100, 120, 3), 255, np.uint8)
    drawn = draw_detections(image, torch.tensor([[20.0, 30.0, 80.0, 90.0]]), torch.tensor([2]),
                            torch.tensor([0.75]), ["bg", "cat", "dog"], thickness=1)
    assert (image == 255).all()
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert tuple(drawn[60, 20]) == class_color(2)
    assert tuple(drawn[60, 50]) == (255, 255, 255)


def test_masks_are_blended_in_the_class_colour():
    image = np.zeros((40, 40, 3), np.uint8)
    mask = np.zeros((1, 40, 40), np.float32)
    mask[0, 10:30, 10:30] = 0.9
    drawn = draw_detections(image, np.array([[10, 10, 30, 30]]), np.array([1]), masks=mask, captions=False,
                            mask_alpha=0.5)
    expected = np.round(0.5 * np.array(class_color(1)))
    assert np.abs(drawn[20, 20].astype(float) - expected).max() <= 1
    assert (drawn[2, 2] == 0).all()


def test_tensor_images_are_converted():
    image = torch.rand(3, 16, 24)
    array = to_rgb_uint8(image)
    assert array.shape == (16, 24, 3) and array.dtype == np.uint8
    assert np.abs(array.astype(float) - image.permute(1, 2, 0).numpy() * 255).max() <= 0.5 + 1e-4


def test_alpha_grey_16_bit_and_bfloat16_images_are_converted():
    rgba = np.random.default_rng(0).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    assert np.array_equal(to_rgb_uint8(rgba), rgba[:, :, :3])
    assert np.array_equal(to_rgb_uint8(torch.from_numpy(rgba).permute(2, 0, 1)), rgba[:, :, :3])
    grey = rgba[:, :, 0]
    assert np.array_equal(to_rgb_uint8(grey), np.stack([grey] * 3, axis=2))
    deep = np.array([[0, 257, 65535, 32896]], np.uint16)  # a 16-bit PNG's range
    assert to_rgb_uint8(deep)[0, :, 0].tolist() == [0, 1, 255, 128]
    half = torch.tensor([[[0.0, 0.5, 1.0, 2.0]]], dtype=torch.bfloat16)
    assert to_rgb_uint8(half)[0, :, 0].tolist() == [0, 128, 255, 255]
    source = np.zeros((2, 2, 3), np.uint8)
    assert to_rgb_uint8(source) is not source


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="one entry per detection"):
        draw_detections(np.zeros((10, 10, 3), np.uint8), np.zeros((2, 4)), labels=np.ones(3))
    with pytest.raises(ValueError, match="masks must be"):
        draw_detections(np.zeros((10, 10, 3), np.uint8), np.zeros((1, 4)), masks=np.zeros((1, 5, 5)))
    with pytest.raises(ValueError, match="image must be"):
        to_rgb_uint8(np.zeros((4, 4, 5)))


def test_side_by_side_and_save(tmp_path):
    sheet = side_by_side([np.zeros((20, 30, 3), np.uint8), np.zeros((10, 15, 3), np.uint8)], ["a", "b"])
    assert sheet.shape[1] == 30 + 15 + 3 * 8
    path = save_image(sheet, tmp_path / "sub" / "sheet.png")
    assert path.stat().st_size > 0 and not list(path.parent.glob(".*"))
    with pytest.raises(ValueError, match="OpenCV writes no format of extension .unknown"):
        save_image(sheet, tmp_path / "sheet.unknown")


@pytest.mark.parametrize(("name", "reason"), [
    ("folder.png", "it is a folder"),
    ("noext", "the name has no extension"),
    ("dot.", "the name has no extension"),
    ("sheet.jpgx", "OpenCV writes no format of extension .jpgx"),
])
def test_save_image_refuses_a_path_that_names_no_image_in_one_sentence(tmp_path, name, reason):
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ValueError) as refused:
        save_image(np.zeros((4, 4, 3), np.uint8), tmp_path / name)
    assert str(refused.value) == (f"cannot write image {tmp_path / name}: {reason}; expected a file name ending in "
                                  ".jpg, .png, .bmp, .tif, .webp or another format OpenCV writes")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["folder.png"]


def test_save_image_failures_are_one_line_naming_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"^cannot write image .*five.png: > Invalid number of channels [^\n]*$"):
        save_image(np.zeros((4, 4, 5), np.uint8), tmp_path / "five.png")
    too_wide = tmp_path / "wide.jpg"  # JPEG sides stop at 65500 pixels: the encoder fails
    with pytest.raises(OSError, match="OpenCV could not write the image") as failed:
        save_image(np.zeros((1, 65536, 3), np.uint8), too_wide)
    assert failed.value.filename == str(too_wide) and not list(tmp_path.iterdir())


def test_can_write_image_follows_the_extension():
    assert can_write_image("a/b.JPG") and can_write_image("c.png") and can_write_image("d.webp")
    assert not any(can_write_image(name) for name in ("photo.jfif", "photo.heic", "noext", "dot.", "x.jpgx"))


def test_class_maps_are_blended_in_class_colours_leaving_background_and_ignore_alone() -> None:
    image = np.full((6, 8, 3), 100, np.uint8)
    class_map = np.zeros((6, 8), np.int64)
    class_map[1:3, 1:4], class_map[4:, 5:] = 2, 255
    drawn = draw_class_map(image, class_map, alpha=1.0, outlines=False)
    assert (drawn[1:3, 1:4] == class_color(2)).all()
    assert (drawn[class_map != 2] == 100).all()
    with pytest.raises(ValueError, match=r"class_map must be \[H, W\] at the image size \[6, 8\], got \[6, 7\]"):
        draw_class_map(image, class_map[:, :7])


def test_draw_heatmap_blends_hot_red_over_cold_blue_and_names_a_wrong_size():
    image = np.zeros((10, 20, 3), np.uint8)
    heatmap = torch.zeros(10, 20)
    heatmap[:, 10:] = 1.0
    drawn = draw_heatmap(image, heatmap, alpha=1.0)
    assert (image == 0).all() and drawn.shape == image.shape
    assert drawn[5, 15, 0] > 100 and drawn[5, 15, 2] < 50  # JET's top is red
    assert drawn[5, 2, 2] > 100 and drawn[5, 2, 0] < 50  # its bottom blue
    assert (draw_heatmap(image + 7, heatmap, alpha=0.0) == 7).all()
    with pytest.raises(ValueError, match=r"heatmap must be \[H, W\] at the image size \[10, 20\], got \[5, 5\]"):
        draw_heatmap(image, torch.zeros(5, 5))
