"""Box forms against torchvision.ops.box_convert, plus clip, area, corners, normalisation."""

import math

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from structured.boxes import (
    box_area,
    box_convert,
    boxes_to_corners,
    check_boxes,
    clip_boxes,
    corners_to_boxes,
    denormalize_boxes,
    has_nan,
    normalize_boxes,
    remove_small_boxes,
)
from tests.boxes.strategies import xyxy_boxes

FORMATS = ["xyxy", "xywh", "cxcywh"]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(boxes=xyxy_boxes(allow_degenerate=True, dtype=torch.float64), in_fmt=st.sampled_from(FORMATS),
       out_fmt=st.sampled_from(FORMATS))
def test_box_convert_matches_torchvision(boxes, in_fmt, out_fmt):
    ours = box_convert(boxes, in_fmt, out_fmt)
    reference = torchvision.ops.box_convert(boxes, in_fmt, out_fmt)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    round_trip = box_convert(ours, out_fmt, in_fmt)
    torch.testing.assert_close(round_trip, boxes, rtol=1e-12, atol=1e-6)


def test_box_convert_keeps_leading_dims_dtype_device_and_gradient():
    boxes = torch.rand(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    converted = box_convert(boxes, "xyxy", "cxcywh")
    assert converted.shape == boxes.shape and converted.dtype == torch.float64
    converted.sum().backward()
    assert boxes.grad is not None and torch.isfinite(boxes.grad).all()
    flat = torchvision.ops.box_convert(boxes.detach().reshape(-1, 4), "xyxy", "cxcywh")
    torch.testing.assert_close(converted.detach().reshape(-1, 4), flat)


def test_box_convert_does_not_alias_input():
    boxes = torch.rand(3, 4)
    same = box_convert(boxes, "xyxy", "xyxy")
    same[0, 0] = 99
    assert boxes[0, 0] != 99


@pytest.mark.parametrize("bad", ["xyz", "XYXY", "yxyx"])
def test_unknown_format_is_a_value_error(bad):
    with pytest.raises(ValueError, match="must be one of"):
        box_convert(torch.zeros(1, 4), bad, "xyxy")


def test_wrong_last_dim_is_a_value_error():
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 4\]"):
        box_convert(torch.zeros(3, 5), "xyxy", "xywh")


def test_check_boxes_reports_what_is_wrong():
    check_boxes(torch.zeros(0, 4))
    with pytest.raises(ValueError, match="floating-point"):
        check_boxes(torch.zeros(2, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN"):
        check_boxes(torch.tensor([[0.0, 0.0, float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="torch.Tensor"):
        check_boxes([[0, 0, 1, 1]], name="targets")


def test_area_matches_torchvision_and_is_zero_for_degenerate_boxes():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0], [4.0, 4.0, 2.0, 6.0], [5.0, 5.0, 3.0, 3.0]])
    torch.testing.assert_close(box_area(boxes[:2]), torchvision.ops.box_area(boxes[:2]))
    assert box_area(boxes).tolist() == [6.0, 0.0, 0.0, 0.0]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(boxes=xyxy_boxes(allow_degenerate=True, dtype=torch.float64),
       size=st.tuples(st.integers(1, 2000), st.integers(1, 2000)))
def test_clip_matches_torchvision(boxes, size):
    torch.testing.assert_close(clip_boxes(boxes, size), torchvision.ops.clip_boxes_to_image(boxes, size))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(boxes=xyxy_boxes(allow_degenerate=True, dtype=torch.float64), min_size=st.floats(0, 50))
def test_remove_small_boxes_matches_torchvision_and_drops_degenerate(boxes, min_size):
    keep = remove_small_boxes(boxes, min_size)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    reference = torchvision.ops.remove_small_boxes(boxes, min_size)
    expected = reference[(widths[reference] >= 0) & (heights[reference] >= 0)]
    assert torch.equal(keep, expected)


def test_remove_small_boxes_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        remove_small_boxes(torch.zeros(2, 3, 4), 1.0)
    with pytest.raises(ValueError, match="min_size"):
        remove_small_boxes(torch.zeros(2, 4), -1.0)


def test_corners_to_boxes_takes_both_layouts_and_rotated_quads():
    quad = torch.tensor([[10.0, 0.0, 20.0, 10.0, 10.0, 20.0, 0.0, 10.0]])
    expected = torch.tensor([[0.0, 0.0, 20.0, 20.0]])
    torch.testing.assert_close(corners_to_boxes(quad), expected)
    torch.testing.assert_close(corners_to_boxes(quad.view(1, 4, 2)), expected)
    torch.testing.assert_close(corners_to_boxes(quad, "cxcywh"), torch.tensor([[10.0, 10.0, 20.0, 20.0]]))
    with pytest.raises(ValueError, match=r"\[\.\.\., 8\]"):
        corners_to_boxes(torch.zeros(3, 6))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(boxes=xyxy_boxes(dtype=torch.float64))
def test_corners_round_trip(boxes):
    torch.testing.assert_close(corners_to_boxes(boxes_to_corners(boxes)), boxes)


def test_normalise_and_back():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    normalised = normalize_boxes(boxes, (100, 50))
    torch.testing.assert_close(normalised, torch.tensor([[0.2, 0.2, 0.6, 0.6]]))
    torch.testing.assert_close(denormalize_boxes(normalised, (100, 50)), boxes)
    with pytest.raises(ValueError, match="positive sides"):
        normalize_boxes(boxes, (0, 50))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1,), (7, 4), (3, 0), (2, 3, 5), (512, 4), (513, 4), (300, 3, 7)])
def test_has_nan_finds_any_nan_and_nothing_else(dtype, shape):
    """Both ways of looking: a tensor compared with itself (up to 2,048 values) and a reduction above."""
    values = (torch.arange(math.prod(shape)) % 100).to(dtype).reshape(shape)
    assert not has_nan(values)
    assert not has_nan(torch.full(shape, float("inf"), dtype=dtype))
    assert not has_nan(values[..., ::2])  # strided views
    if values.numel():
        for position in (0, values.numel() - 1):
            with_nan = values.clone()
            with_nan.view(-1)[position] = float("nan") if position == 0 else -float("nan")
            assert has_nan(with_nan)
    for size in (5, 5000):
        assert not has_nan(torch.arange(size)) and not has_nan(torch.arange(size) % 2 == 0)
