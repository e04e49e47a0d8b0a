"""Mask pasting against torchvision's ``paste_masks_in_image``, one mask at a time, on random and adversarial boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks, paste_masks_in_image

from structured.detection.masks import (
    COLUMN_BUFFERS,
    CROP_BUFFERS,
    expanded_integer_boxes,
    paste_masks,
    plan_chunks,
)

FLOAT32_TOLERANCE = 1e-5
FLOAT64_TOLERANCE = 1e-10


def torchvision_paste(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """torchvision's paste, mask by mask; zero where the widened integer box has no pixel in the image.

    torchvision itself raises on some of those boxes (its slice ends go negative), so they are not
    handed to it.
    """
    height, width = image_size
    _, scale = expand_masks(masks[:1, None], padding=1)
    integer_boxes = expand_boxes(boxes, scale).to(torch.int64)
    result = torch.zeros((len(masks), height, width), dtype=masks.dtype)
    for index, (x1, y1, x2, y2) in enumerate(integer_boxes.tolist()):
        if min(x2 + 1, width) > max(x1, 0) and min(y2 + 1, height) > max(y1, 0):
            result[index] = paste_masks_in_image(masks[index : index + 1, None], boxes[index : index + 1],
                                                 (height, width))[0, 0]
    return result


def assert_matches_torchvision(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
                               **kwargs: int) -> None:
    pasted = paste_masks(masks, boxes, image_size, **kwargs)
    expected = torchvision_paste(masks, boxes, image_size)
    assert pasted.shape == expected.shape and pasted.dtype == masks.dtype
    tolerance = FLOAT64_TOLERANCE if masks.dtype == torch.float64 else FLOAT32_TOLERANCE
    assert float((pasted - expected).abs().max()) <= tolerance


def random_masks(count: int, side: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform probabilities, with some near-binary and some constant masks among them."""
    masks = torch.rand(count, side, side, generator=generator)
    kind = torch.randint(0, 3, (count,), generator=generator)
    masks[kind == 1] = (masks[kind == 1] > 0.5).float()
    masks[kind == 2] = 1.0
    return masks


def inside_boxes(count: int, image_size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Boxes wholly inside the image, 1 pixel up to the image's size."""
    height, width = image_size
    scale = torch.tensor([width, height], dtype=torch.float32)
    size = (0.02 + 0.98 * torch.rand(count, 2, generator=generator)) * scale
    corner = torch.rand(count, 2, generator=generator) * (scale - size)
    return torch.cat([corner, corner + size], dim=1)


def adversarial_boxes(count: int, image_size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """A mixture: straddling the border, wholly outside, tiny (< 1 px), degenerate, huge, on (half-)integers."""
    height, width = image_size
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    kind = torch.randint(0, 6, (count,), generator=generator)
    centre = (torch.rand(count, 2, generator=generator) * 1.6 - 0.3) * scale[:2]
    size = torch.rand(count, 2, generator=generator) * scale[:2]
    size[kind == 1] *= 0.05
    size[kind == 2] = torch.rand(int((kind == 2).sum()), 2, generator=generator)  # under one pixel
    size[kind == 3] *= 8  # huge
    centre[kind == 4] = (torch.rand(int((kind == 4).sum()), 2, generator=generator) * 4 - 1.5) * scale[:2]  # outside
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    on_grid = kind == 5
    boxes[on_grid] = (torch.rand(int(on_grid.sum()), 4, generator=generator) * 1.4 - 0.2) * scale
    boxes[on_grid] = torch.round(boxes[on_grid] * 2) / 2  # integers and halves: truncation and scale edges
    degenerate = torch.rand(count, generator=generator) < 0.05
    boxes[degenerate] = boxes[degenerate][:, [2, 3, 0, 1]]  # x2 < x1, y2 < y1
    return boxes


IMAGE_SIZES = [(1, 1), (7, 3), (37, 53), (64, 48), (90, 120)]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("image_size", IMAGE_SIZES)
def test_random_boxes_inside_the_image(seed, image_size):
    generator = torch.Generator().manual_seed(seed)
    count = int(torch.randint(1, 25, (1,), generator=generator))
    assert_matches_torchvision(random_masks(count, 28, generator), inside_boxes(count, image_size, generator),
                               image_size)


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("image_size", IMAGE_SIZES)
def test_adversarial_boxes(seed, image_size):
    generator = torch.Generator().manual_seed(1000 + seed)
    count = int(torch.randint(1, 40, (1,), generator=generator))
    assert_matches_torchvision(random_masks(count, 28, generator), adversarial_boxes(count, image_size, generator),
                               image_size)


@pytest.mark.parametrize("side", [1, 2, 7, 14, 28])
def test_mask_sizes(side):
    generator = torch.Generator().manual_seed(side)
    boxes = torch.cat([inside_boxes(10, (50, 70), generator), adversarial_boxes(20, (50, 70), generator)])
    assert_matches_torchvision(random_masks(30, side, generator), boxes, (50, 70))


def test_realistic_detections_on_a_large_image():
    generator = torch.Generator().manual_seed(5)
    size = 20 + torch.rand(30, 2, generator=generator) * 380
    corner = torch.rand(30, 2, generator=generator) * (torch.tensor([1066.0, 800.0]) - size)
    assert_matches_torchvision(random_masks(30, 28, generator), torch.cat([corner, corner + size], 1), (800, 1066))


def test_huge_boxes_around_a_small_image():
    boxes = torch.tensor([[-300.0, -200.0, 350.0, 260.0], [-1000.0, 5.0, 1000.0, 6.0], [10.0, -900.0, 11.0, 900.0]])
    assert_matches_torchvision(random_masks(3, 28, torch.Generator().manual_seed(0)), boxes, (24, 32))


def test_boxes_wholly_outside_give_zero_maps():
    boxes = torch.tensor([[-50.0, -50.0, -10.0, -10.0], [1100.0, 10.0, 1200.0, 40.0], [10.0, 900.0, 40.0, 1000.0],
                          [-50.0, 10.0, -10.0, 40.0]])
    pasted = paste_masks(torch.ones(4, 28, 28), boxes, (800, 1066))
    assert pasted.shape == (4, 800, 1066) and not pasted.any()


def test_float64_masks_and_boxes():
    generator = torch.Generator().manual_seed(3)
    boxes = torch.cat([inside_boxes(10, (40, 60), generator), adversarial_boxes(20, (40, 60), generator)])
    assert_matches_torchvision(random_masks(30, 28, generator).double(), boxes.double(), (40, 60))
    assert_matches_torchvision(random_masks(30, 28, generator), boxes.double(), (40, 60))


def test_masks_with_a_channel_dimension():
    generator = torch.Generator().manual_seed(4)
    masks, boxes = random_masks(6, 28, generator), inside_boxes(6, (30, 40), generator)
    assert torch.equal(paste_masks(masks[:, None], boxes, (30, 40)), paste_masks(masks, boxes, (30, 40)))


def test_no_detections():
    pasted = paste_masks(torch.zeros(0, 28, 28, dtype=torch.float64), torch.zeros(0, 4), (30, 40))
    assert pasted.shape == (0, 30, 40) and pasted.dtype == torch.float64


def test_the_result_is_an_ordinary_writable_tensor():
    pasted = paste_masks(torch.ones(2, 28, 28), torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 25.0]]),
                         (30, 40))
    pasted[:, 0, 0] = 7.0
    assert pasted.is_contiguous() and float(pasted[1, 0, 0]) == 7.0 and pasted.sum() > 0


def memory_of(chunk, bytes_per_pixel: int, column_bytes: int) -> int:
    return len(chunk.mask_index) * chunk.cols * (chunk.rows * bytes_per_pixel + column_bytes)


@pytest.mark.parametrize("bound", [None, 400_000, 1_000_000, 4_000_000])
def test_chunks_stay_within_the_memory_bound(bound):
    generator = torch.Generator().manual_seed(6)
    boxes = torch.cat([inside_boxes(60, (300, 400), generator), adversarial_boxes(60, (300, 400), generator)])
    side, element_size = 30, 4
    bytes_per_pixel, column_bytes = CROP_BUFFERS * element_size, COLUMN_BUFFERS * side * element_size
    smallest = (bytes_per_pixel + column_bytes) * 400
    bound = smallest if bound is None else bound
    integer_boxes = expanded_integer_boxes(boxes, 28).numpy()
    chunks = plan_chunks(integer_boxes, (300, 400), bound, bytes_per_pixel, column_bytes, torch.device("cpu"))
    assert max(memory_of(chunk, bytes_per_pixel, column_bytes) for chunk in chunks) <= bound
    masks = random_masks(120, 28, generator)
    assert_matches_torchvision(masks, boxes, (300, 400), memory_bound_bytes=bound)


def test_a_tiny_memory_bound_cuts_boxes_into_bands_with_the_same_result():
    generator = torch.Generator().manual_seed(8)
    masks, boxes = random_masks(40, 28, generator), adversarial_boxes(40, (120, 90), generator)
    smallest = (CROP_BUFFERS + COLUMN_BUFFERS * 30) * 90 * 4
    integer_boxes = expanded_integer_boxes(boxes, 28).numpy()
    chunks = plan_chunks(integer_boxes, (120, 90), smallest, CROP_BUFFERS * 4, COLUMN_BUFFERS * 30 * 4,
                         torch.device("cpu"))
    assert min(chunk.rows for chunk in chunks) < max(chunk.rows for chunk in chunks)
    assert all(chunk.rows <= 2 for chunk in chunks if chunk.cols == 90)
    assert torch.equal(paste_masks(masks, boxes, (120, 90), memory_bound_bytes=smallest),
                       paste_masks(masks, boxes, (120, 90)))


def test_no_per_mask_chunks_for_similar_boxes():
    boxes = torch.tensor([[10.0, 10.0, 50.0, 60.0]]).repeat(50, 1) + torch.arange(50.0)[:, None]
    integer_boxes = expanded_integer_boxes(boxes, 28).numpy()
    chunks = plan_chunks(integer_boxes, (200, 200), 256 * 2**20, 8, 360, torch.device("cpu"))
    assert len(chunks) == 1 and len(chunks[0].mask_index) == 50


@pytest.mark.parametrize(
    ("masks", "boxes", "image_size", "bound", "message"),
    [
        (torch.ones(2, 28, 28, dtype=torch.uint8), torch.zeros(2, 4), (10, 10), None, "floating-point"),
        (torch.ones(2, 28, 14), torch.zeros(2, 4), (10, 10), None, r"\[K, M, M\]"),
        (torch.ones(2, 2, 28, 28), torch.zeros(2, 4), (10, 10), None, r"\[K, M, M\]"),
        (torch.ones(2, 28, 28), torch.zeros(3, 4), (10, 10), None, "K = 2"),
        (torch.ones(2, 28, 28), torch.zeros(2, 5), (10, 10), None, r"\[\.\.\., 4\]"),
        (torch.ones(1, 28, 28), torch.tensor([[0.0, float("nan"), 1.0, 1.0]]), (10, 10), None, "NaN"),
        (torch.ones(1, 28, 28), torch.tensor([[0.0, 0.0, float("inf"), 1.0]]), (10, 10), None, "infinite"),
        (torch.ones(1, 28, 28), np.zeros((1, 4)), (10, 10), None, "torch.Tensor"),
        (torch.ones(1, 28, 28), torch.zeros(1, 4), (0, 10), None, "image_size"),
        (torch.ones(1, 28, 28), torch.zeros(1, 4), (10.5, 10), None, "image_size"),
        (torch.ones(1, 28, 28), torch.zeros(1, 4), (10, 10), 1000, "memory_bound_bytes must be at least 3680"),
    ],
)
def test_bad_input_is_named(masks, boxes, image_size, bound, message):
    kwargs = {} if bound is None else {"memory_bound_bytes": bound}
    with pytest.raises(ValueError, match=message):
        paste_masks(masks, boxes, image_size, **kwargs)


@pytest.mark.gpu
def test_cuda_matches_the_cpu_and_torchvision():
    generator = torch.Generator().manual_seed(9)
    masks = random_masks(60, 28, generator)
    boxes = torch.cat([inside_boxes(30, (300, 400), generator), adversarial_boxes(30, (300, 400), generator)])
    on_cuda = paste_masks(masks.cuda(), boxes.cuda(), (300, 400))
    assert on_cuda.is_cuda
    assert float((on_cuda.cpu() - paste_masks(masks, boxes, (300, 400))).abs().max()) <= FLOAT32_TOLERANCE
    assert float((on_cuda.cpu() - torchvision_paste(masks, boxes, (300, 400))).abs().max()) <= FLOAT32_TOLERANCE
