"""Cases for the Triton NMS kernels on CPU tensors, run by ``test_nms_triton.py`` in a child process
with ``TRITON_INTERPRET=1`` (set before Triton is imported; never in the parent test process).

Compared index for index with torchvision's CPU kernel: same indices, same order.
"""

from __future__ import annotations

import os
from unittest import mock

import pytest
import torch
import torchvision
from torchvision.ops.boxes import _batched_nms_vanilla

from bench.nms_cpu import make_boxes
from structured.boxes import nms_triton

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run by tests/boxes/test_nms_triton.py with TRITON_INTERPRET=1", allow_module_level=True)


def awkward_boxes(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clustered boxes with tied scores, exact duplicates and zero-area boxes."""
    boxes, _, _ = make_boxes(count, seed=seed, clustered=True)
    boxes[::9] = boxes[1::9][: len(boxes[::9])]
    boxes[5::17, 2] = boxes[5::17, 0]
    scores = torch.randint(0, 4, (count,), generator=torch.Generator().manual_seed(seed)).float()
    return boxes, scores


def per_class_reference(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, threshold: float) -> torch.Tensor:
    """torchvision's per-class NMS, kept boxes in stable score order (ties to the lower index).

    That is the order of torchvision's coordinate-trick path; its per-class path sorts the kept boxes
    with an unstable sort, which may order tied scores otherwise.
    """
    kept = _batched_nms_vanilla(boxes, scores, idxs, threshold).sort().values
    return kept[scores[kept].sort(descending=True, stable=True).indices]


def test_triton_is_interpreted():
    assert nms_triton.triton_available()


@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clustered", [False, True])
def test_nms_matches_torchvision(threshold, clustered):
    boxes, scores, _ = make_boxes(300, seed=11, clustered=clustered)
    assert torch.equal(nms_triton.nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold))


@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_ties_duplicates_and_zero_area_boxes_match_torchvision(threshold):
    boxes, scores = awkward_boxes(200, seed=5)
    assert torch.equal(nms_triton.nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold))


def test_threshold_one_third_is_compared_as_torchvisions_cpu_kernel_does():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 3.0], [5.0, 5.0, 6.0, 6.0]])
    scores = torch.tensor([1.0, 0.5, 0.2])
    assert nms_triton.nms(boxes, scores, 1 / 3).tolist() == torchvision.ops.nms(boxes, scores, 1 / 3).tolist() == [0, 2]


@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_batched_segments_match_torchvision_per_class(threshold):
    boxes, scores = awkward_boxes(260, seed=3)
    idxs = torch.randint(-1, 6, (260,), generator=torch.Generator().manual_seed(4))
    keep = nms_triton.batched_nms(boxes, scores, idxs, threshold)
    assert torch.equal(keep, per_class_reference(boxes, scores, idxs, threshold))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_boxes_give_the_float32_result(dtype):
    boxes, scores, classes = make_boxes(150, seed=2, clustered=True)
    boxes = boxes.to(dtype)
    expected = torchvision.ops.nms(boxes.float(), scores, 0.5)
    assert torch.equal(nms_triton.nms(boxes, scores, 0.5), expected)
    expected = per_class_reference(boxes.float(), scores, classes % 3, 0.5)
    assert torch.equal(nms_triton.batched_nms(boxes, scores, classes % 3, 0.5), expected)


def test_float64_boxes_keep_torchvisions_double_precision_result():
    """IoU 1 - 1e-9 against a threshold of 1 - 5e-10: kept in double, suppressed once narrowed to float32."""
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0 + 1e-9], [3.0, 3.0, 4.0, 4.0]],
                         dtype=torch.float64)
    scores = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)
    threshold = 1 - 5e-10
    expected = torchvision.ops.nms(boxes, scores, threshold)
    assert expected.tolist() == [0, 1, 2] != torchvision.ops.nms(boxes.float(), scores.float(), threshold).tolist()
    assert torch.equal(nms_triton.nms(boxes, scores, threshold), expected)
    assert torch.equal(nms_triton.batched_nms(boxes, scores, torch.zeros(3, dtype=torch.int64), threshold), expected)


def test_chunked_mask_gives_the_same_result():
    boxes, scores, classes = make_boxes(330, seed=8, clustered=True)
    with mock.patch.object(nms_triton, "MASK_BUDGET_BYTES", 64 * 6 * 8):  # 64 rows per chunk: 6 chunks
        keep = nms_triton.nms(boxes, scores, 0.5)
        batched_keep = nms_triton.batched_nms(boxes, scores, classes % 2, 0.5)
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.5))
    assert torch.equal(batched_keep, per_class_reference(boxes, scores, classes % 2, 0.5))


@pytest.mark.parametrize("max_out", [5, 1000])
def test_fixed_size_output_is_the_padded_result(max_out):
    boxes, scores, classes = make_boxes(120, seed=9, clustered=True)
    for keep, (padded, count) in [
        (torchvision.ops.nms(boxes, scores, 0.5), nms_triton.nms(boxes, scores, 0.5, max_out=max_out)),
        (per_class_reference(boxes, scores, classes % 4, 0.5),
         nms_triton.batched_nms(boxes, scores, classes % 4, 0.5, max_out=max_out)),
    ]:
        expected_count = min(max_out, keep.numel())
        assert padded.shape == (max_out,) and int(count) == expected_count
        assert torch.equal(padded[:expected_count], keep[:expected_count])
        assert (padded[expected_count:] == -1).all()


def test_empty_and_single_inputs():
    empty = torch.zeros(0, 4)
    assert nms_triton.nms(empty, torch.zeros(0), 0.5).tolist() == []
    assert nms_triton.batched_nms(empty, torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).tolist() == []
    padded, count = nms_triton.nms(empty, torch.zeros(0), 0.5, max_out=3)
    assert padded.tolist() == [-1, -1, -1] and int(count) == 0
    assert nms_triton.nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([0.3]), 0.5).tolist() == [0]
