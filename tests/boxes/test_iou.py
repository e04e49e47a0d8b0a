"""IoU functions against torchvision.ops (boxes), pycocotools (masks) and exact geometry (polygons)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.ops
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as coco_mask

from structured.boxes import iou as iou_module
from structured.boxes.formats import boxes_to_corners
from structured.boxes.iou import (
    box_iou,
    complete_box_iou,
    distance_box_iou,
    elementwise_box_iou,
    elementwise_generalized_box_iou,
    generalized_box_iou,
    mask_iou,
    polygon_iou,
    rle_iou,
)

DETERMINISTIC = settings(derandomize=True, deadline=None, max_examples=50)
PAIRWISE = {
    "box_iou": (box_iou, torchvision.ops.box_iou),
    "generalized_box_iou": (generalized_box_iou, torchvision.ops.generalized_box_iou),
    "distance_box_iou": (distance_box_iou, torchvision.ops.distance_box_iou),
    "complete_box_iou": (complete_box_iou, torchvision.ops.complete_box_iou),
}

positions = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)
sizes = st.floats(min_value=-3, max_value=4).map(lambda exponent: 10.0**exponent)


@st.composite
def positive_boxes(draw: st.DrawFn) -> list[float]:
    """``[x1, y1, x2, y2]`` with sides from 1e-3 to 1e4, anywhere in [-1e4, 1e4]^2."""
    x, y, width, height = draw(positions), draw(positions), draw(sizes), draw(sizes)
    return [x, y, x + width, y + height]


@st.composite
def related_box(draw: st.DrawFn, box: list[float], allow_degenerate: bool) -> list[float]:
    """A box derived from ``box``: identical, nested, touching, zero-width, a point, shifted, independent."""
    x1, y1, x2, y2 = box
    width, height = x2 - x1, y2 - y1
    relations = ["identical", "nested", "touching", "zero_width", "point", "shifted", "independent"]
    degenerate = ["flipped", "flipped_height"] if allow_degenerate else []
    relation = draw(st.sampled_from(relations + degenerate))
    fraction = draw(st.floats(min_value=0.0, max_value=0.5))
    if relation == "identical":
        return list(box)
    if relation == "nested":
        return [x1 + fraction * width, y1 + fraction * height, x2 - fraction * width, y2 - fraction * height]
    if relation == "touching":
        return [x2, y1, x2 + width, y2]
    if relation == "zero_width":
        return [x1 + fraction * width, y1, x1 + fraction * width, y2]
    if relation == "point":
        return [x1, y1, x1, y1]
    if relation == "shifted":
        return [x1 + fraction * width, y1 - fraction * height, x2 + fraction * width, y2 - fraction * height]
    if relation == "flipped":
        return [x2, y2, x1, y1]
    if relation == "flipped_height":
        return [x1, y2, x2, y1]
    return draw(positive_boxes())


@st.composite
def box_pairs(draw: st.DrawFn, allow_degenerate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float64 ``[N, 4]`` tensors, the second made of boxes related to the first."""
    first = draw(st.lists(positive_boxes(), min_size=1, max_size=6))
    second = [draw(related_box(box, allow_degenerate)) for box in first]
    second += draw(st.lists(positive_boxes(), max_size=2))
    return torch.tensor(first, dtype=torch.float64), torch.tensor(second, dtype=torch.float64)


def collapse_degenerate(boxes: torch.Tensor) -> torch.Tensor:
    """The documented meaning of a degenerate box: zero width/height at its (x1, y1) edge."""
    return torch.cat((boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2])), dim=1)


@pytest.mark.parametrize("name", PAIRWISE)
@DETERMINISTIC
@given(pair=box_pairs())
def test_pairwise_matches_torchvision_float64(name: str, pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    ours, reference = PAIRWISE[name]
    result, expected = ours(*pair), reference(*pair)
    assert result.dtype == torch.float64
    assert torch.isfinite(result).all()
    defined = torch.isfinite(expected)  # torchvision gives NaN where both boxes have zero area
    torch.testing.assert_close(result[defined], expected[defined], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", PAIRWISE)
@DETERMINISTIC
@given(pair=box_pairs())
def test_pairwise_matches_torchvision_float32(name: str, pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    ours, reference = PAIRWISE[name]
    boxes1, boxes2 = (boxes.float() for boxes in pair)
    result, expected = ours(boxes1, boxes2), reference(boxes1, boxes2)
    assert result.dtype == torch.float32
    defined = torch.isfinite(expected)
    torch.testing.assert_close(result[defined], expected[defined], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", PAIRWISE)
@DETERMINISTIC
@given(pair=box_pairs(allow_degenerate=True))
def test_degenerate_boxes_are_empty_boxes(name: str, pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    ours, reference = PAIRWISE[name]
    boxes1, boxes2 = pair
    result = ours(boxes1, boxes2)
    expected = reference(collapse_degenerate(boxes1), collapse_degenerate(boxes2))
    defined = torch.isfinite(expected)
    assert torch.isfinite(result).all()
    torch.testing.assert_close(result[defined], expected[defined], rtol=1e-6, atol=1e-6)
    lower_bound = -2.0 if name == "complete_box_iou" else -1.0
    assert ((result >= lower_bound - 1e-12) & (result <= 1 + 1e-12)).all()
    degenerate = (boxes2[:, 2:] < boxes2[:, :2]).any(dim=1)
    assert (box_iou(boxes1, boxes2)[:, degenerate] == 0).all()


@DETERMINISTIC
@given(pair=box_pairs(allow_degenerate=True))
def test_elementwise_is_the_diagonal_of_pairwise(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    boxes1, boxes2 = pair
    boxes2 = boxes2[: len(boxes1)]
    torch.testing.assert_close(elementwise_box_iou(boxes1, boxes2), box_iou(boxes1, boxes2).diagonal())
    torch.testing.assert_close(
        elementwise_generalized_box_iou(boxes1, boxes2), generalized_box_iou(boxes1, boxes2).diagonal()
    )


def test_elementwise_broadcasts_leading_dims() -> None:
    torch.manual_seed(0)
    corners = torch.rand(3, 5, 2, 2) * 100
    boxes = torch.cat((corners.amin(dim=2), corners.amax(dim=2)), dim=-1)  # [3, 5, 4]
    reference = boxes[0]
    result = elementwise_box_iou(boxes, reference)
    assert result.shape == (3, 5)
    for batch in range(3):
        torch.testing.assert_close(result[batch], box_iou(boxes[batch], reference).diagonal())


def test_special_cases_have_exact_values() -> None:
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 6.0, 4.0]])
    iou = box_iou(boxes, boxes)
    assert iou[0, 0] == 1  # identical
    assert iou[0, 1] == pytest.approx(4 / 16)  # nested: inner area over outer area
    assert iou[0, 2] == 0  # touching edges
    points = torch.tensor([[2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0]])
    for function in (box_iou, generalized_box_iou, distance_box_iou, complete_box_iou):
        assert (function(points, points) == 0).all(), function.__name__


def test_gradients_are_finite_on_empty_and_identical_boxes() -> None:
    boxes1 = torch.tensor(
        [[2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 4.0, 4.0], [5.0, 5.0, 3.0, 3.0], [0.0, 0.0, 0.0, 3.0]],
        requires_grad=True,
    )
    boxes2 = torch.tensor(
        [[2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 0.0, 3.0]]
    )
    giou_loss = (1 - elementwise_generalized_box_iou(boxes1, boxes2)).sum()
    (giou_loss + complete_box_iou(boxes1, boxes2).sum()).backward()
    assert torch.isfinite(boxes1.grad).all()


def test_elementwise_gradients_match_finite_differences() -> None:
    boxes1 = torch.tensor(
        [[0.0, 0.0, 4.0, 3.0], [1.0, 2.0, 5.0, 7.0]], dtype=torch.float64, requires_grad=True
    )
    boxes2 = torch.tensor([[1.0, 0.5, 5.0, 4.0], [6.0, 1.0, 8.0, 9.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda boxes: elementwise_generalized_box_iou(boxes, boxes2), (boxes1,))
    assert torch.autograd.gradcheck(lambda boxes: elementwise_box_iou(boxes, boxes2), (boxes1,))


def test_half_precision_is_computed_in_float32_and_returned_in_half() -> None:
    boxes = torch.tensor([[0.0, 0.0, 300.0, 300.0], [100.0, 100.0, 400.0, 400.0]])
    result = box_iou(boxes.half(), boxes.half())
    assert result.dtype == torch.float16
    torch.testing.assert_close(result.float(), box_iou(boxes, boxes), rtol=1e-3, atol=1e-3)


def test_empty_inputs_give_empty_results() -> None:
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert box_iou(torch.zeros(0, 4), boxes).shape == (0, 1)
    assert generalized_box_iou(boxes, torch.zeros(0, 4)).shape == (1, 0)


@pytest.mark.parametrize(
    ("boxes1", "boxes2", "message"),
    [
        (torch.zeros(2, 3), torch.zeros(2, 4), r"boxes1 must have shape \[\.\.\., 4\]"),
        (torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.int64), "boxes2 must be a floating-point tensor"),
        (torch.tensor([[0.0, math.nan, 1.0, 1.0]]), torch.zeros(1, 4), "boxes1 contains NaN"),
        (torch.zeros(4), torch.zeros(2, 4), r"boxes1 must have shape \[N, 4\]"),
        ([[0.0, 0.0, 1.0, 1.0]], torch.zeros(2, 4), "boxes1 must be a torch.Tensor"),
    ],
)
def test_pairwise_rejects_bad_boxes(boxes1: object, boxes2: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        box_iou(boxes1, boxes2)


def test_elementwise_rejects_shapes_that_do_not_broadcast() -> None:
    with pytest.raises(ValueError, match="must broadcast"):
        elementwise_box_iou(torch.zeros(3, 4), torch.zeros(2, 4))


def random_masks(count: int, generator: torch.Generator) -> torch.Tensor:
    """Rectangles and random speckle of varied density, plus an empty and a full mask."""
    masks = torch.rand(count, 17, 23, generator=generator) < torch.rand(count, 1, 1, generator=generator)
    masks[0] = False
    masks[1] = True
    masks[2, 3:9, 4:20] = True
    return masks


def coco_rles(masks: torch.Tensor) -> list[dict]:
    return coco_mask.encode(np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8)))


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.float32, torch.float64])
def test_mask_iou_matches_pycocotools(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(1)
    masks1, masks2 = random_masks(6, generator), random_masks(5, generator)
    expected = torch.from_numpy(coco_mask.iou(coco_rles(masks1), coco_rles(masks2), [0] * 5))
    result = mask_iou(masks1.to(dtype), masks2.to(dtype))
    assert result.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(result.double(), expected, rtol=1e-6, atol=1e-6)


def test_mask_iou_counts_in_float64_beyond_exact_float32_range(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(5)
    masks = random_masks(4, generator)
    expected = mask_iou(masks, masks)
    monkeypatch.setattr(iou_module, "EXACT_FLOAT32_PIXELS", 16)
    torch.testing.assert_close(mask_iou(masks, masks), expected)


def test_mask_iou_binarises_probabilities_at_one_half() -> None:
    probabilities = torch.tensor([[[0.2, 0.5, 0.51, 0.9]]])
    binary = torch.tensor([[[0, 0, 1, 1]]], dtype=torch.uint8)
    assert mask_iou(probabilities, binary).item() == 1


@pytest.mark.parametrize(
    ("masks1", "masks2", "message"),
    [
        (torch.zeros(4, 4), torch.zeros(1, 4, 4), r"masks1 must be a tensor of shape \[N, H, W\]"),
        (torch.zeros(1, 4, 4), torch.zeros(1, 4, 5), r"same \[H, W\]"),
    ],
)
def test_mask_iou_rejects_bad_masks(masks1: torch.Tensor, masks2: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mask_iou(masks1, masks2)


def uncompressed_rle(mask: torch.Tensor) -> dict:
    """COCO's uncompressed RLE: run lengths of the column-major mask, starting with a run of zeros."""
    flat = mask.T.flatten().tolist()
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def test_rle_iou_agrees_with_dense_masks_and_accepts_every_rle_form() -> None:
    generator = torch.Generator().manual_seed(2)
    masks1, masks2 = random_masks(4, generator), random_masks(3, generator)
    compressed = coco_rles(masks1)
    as_strings = [{"size": rle["size"], "counts": rle["counts"].decode()} for rle in coco_rles(masks2)]
    expected = mask_iou(masks1, masks2).double()
    torch.testing.assert_close(rle_iou(compressed, as_strings), expected)
    torch.testing.assert_close(rle_iou([uncompressed_rle(mask) for mask in masks1], as_strings), expected)


def test_rle_iou_crowd_columns_divide_by_the_first_mask_area() -> None:
    generator = torch.Generator().manual_seed(3)
    masks1, masks2 = random_masks(4, generator)[1:], random_masks(3, generator)
    result = rle_iou(coco_rles(masks1), coco_rles(masks2), iscrowd=[False, True, False])
    intersection = (masks1[:, None] & masks2[None]).sum(dim=(2, 3)).double()
    expected_crowd = intersection[:, 1] / masks1.sum(dim=(1, 2)).double()
    torch.testing.assert_close(result[:, 1], expected_crowd)
    torch.testing.assert_close(result[:, [0, 2]], mask_iou(masks1, masks2[[0, 2]]).double())


def test_rle_iou_handles_empty_lists_and_rejects_bad_rles() -> None:
    rles = coco_rles(torch.ones(2, 4, 4, dtype=torch.bool))
    assert rle_iou([], rles).shape == (0, 2)
    with pytest.raises(ValueError, match="same 'size'"):
        rle_iou(rles, coco_rles(torch.ones(1, 4, 5, dtype=torch.bool)))
    with pytest.raises(ValueError, match=r"rles1\[0\] must be a COCO RLE dict"):
        rle_iou([{"counts": b""}], rles)
    with pytest.raises(ValueError, match="one flag per rles2 mask"):
        rle_iou(rles, rles, iscrowd=[0])


@DETERMINISTIC
@given(pair=box_pairs())
def test_polygon_iou_of_rectangles_matches_torchvision_box_iou(
    pair: tuple[torch.Tensor, torch.Tensor],
) -> None:
    boxes1, boxes2 = pair
    expected = torchvision.ops.box_iou(boxes1, boxes2)
    defined = torch.isfinite(expected)
    result = polygon_iou(boxes_to_corners(boxes1), boxes_to_corners(boxes2))
    torch.testing.assert_close(result[defined], expected[defined], rtol=1e-6, atol=1e-6)


def test_polygon_iou_of_square_and_its_45_degree_rotation() -> None:
    half_diagonal = math.sqrt(2)
    square = [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]
    diamond = [(0.0, -half_diagonal), (half_diagonal, 0.0), (0.0, half_diagonal), (-half_diagonal, 0.0)]
    intersection = 2 * (math.sqrt(2) - 1) * 2**2  # regular octagon inside a square of side 2
    expected = intersection / (2 * 2**2 - intersection)
    assert polygon_iou([square], [diamond]).item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(1 / math.sqrt(2))


def test_polygon_iou_mixes_vertex_counts_and_repairs_self_intersections() -> None:
    square = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0]])
    triangle = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0]])
    bowtie = np.array([[0.0, 0.0], [2.0, 2.0], [2.0, 0.0], [0.0, 2.0]])  # two triangles of area 1
    closed_square = np.vstack((square, square[:1]))
    result = polygon_iou([square, triangle, bowtie, closed_square], [square])
    torch.testing.assert_close(result, torch.tensor([[1.0], [0.5], [0.5], [1.0]], dtype=torch.float64))


def test_polygon_iou_accepts_flat_and_vertex_shaped_corners() -> None:
    torch.manual_seed(0)
    corners = torch.rand(5, 4, 2, dtype=torch.float64) * 10
    torch.testing.assert_close(
        polygon_iou(corners, corners[:3]), polygon_iou(corners.flatten(1), corners[:3].numpy())
    )


def test_polygon_iou_keeps_tensor_dtype_and_rejects_bad_polygons() -> None:
    quads = torch.tensor([[0.0, 0.0, 2.0, 0.0, 2.0, 2.0, 0.0, 2.0]])
    assert polygon_iou(quads, quads).dtype == torch.float32
    assert polygon_iou(torch.zeros(0, 8), quads).shape == (0, 1)
    with pytest.raises(ValueError, match=r"polygons1 must have shape \[N, 2K\]"):
        polygon_iou(torch.zeros(1, 7), quads)
    with pytest.raises(ValueError, match=r"polygons2\[0\] must be K >= 3 vertices"):
        polygon_iou(quads, [[(0.0, 0.0), (1.0, 1.0)]])
    with pytest.raises(ValueError, match="non-finite"):
        polygon_iou(quads.clone().fill_(math.nan), quads)


@pytest.mark.gpu
def test_box_and_mask_iou_on_cuda_match_cpu() -> None:
    generator = torch.Generator().manual_seed(4)
    corners = torch.rand(40, 2, 2, generator=generator) * 100
    boxes = torch.cat((corners.amin(dim=1), corners.amax(dim=1)), dim=1)
    for function in (box_iou, generalized_box_iou, distance_box_iou, complete_box_iou):
        result = function(boxes.cuda(), boxes[:7].cuda())
        assert result.device.type == "cuda"
        torch.testing.assert_close(result.cpu(), function(boxes, boxes[:7]), rtol=1e-5, atol=1e-5)
    masks = random_masks(6, generator)
    torch.testing.assert_close(mask_iou(masks.cuda(), masks[:3].cuda()).cpu(), mask_iou(masks, masks[:3]))
