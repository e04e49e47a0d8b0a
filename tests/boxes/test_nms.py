"""NMS against torchvision.ops: the same indices in the same order, ties and every kernel included."""

from __future__ import annotations

import contextlib
import importlib
from unittest import mock

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops.boxes import _batched_nms_vanilla

from bench.nms_cpu import make_boxes
from structured.boxes import batched_nms, nms, register_nms_kernel
from tests.boxes.strategies import scores_for, xyxy_boxes

nms_module = importlib.import_module("structured.boxes.nms")

THRESHOLDS = st.one_of(st.sampled_from([0.0, 0.1, 0.3, 1 / 3, 0.5, 0.7, 1.0]), st.floats(0.0, 1.0))
KERNEL_MODES = ["default", "sparse", "sequential", "prefix"]


@contextlib.contextmanager
def kernel_mode(mode: str):
    """Force the sparse kernel (and its one-box-at-a-time finish), or the prefix-and-filter steps in prefixes of
    3 boxes, even on small inputs."""
    if mode == "default":
        yield
        return
    if mode == "prefix":
        with mock.patch.multiple(nms_module, SPARSE_MIN_BOXES=0, PILOT_BOXES=3, SPARSE_COST_MARGIN=float("inf"),
                                 COORDINATE_TRICK_MAX_ELEMENTS=0):
            yield
        return
    rounds = 1 if mode == "sequential" else nms_module.PARALLEL_ROUNDS
    with mock.patch.multiple(
        nms_module,
        SPARSE_MIN_BOXES=0,
        SPARSE_MIN_CLASS_SIZE=0,
        SPARSE_COST_MARGIN=0,
        GRID_SHARE_OF_TORCHVISION=float("inf"),
        COORDINATE_TRICK_MAX_ELEMENTS=0,
        PARALLEL_ROUNDS=rounds,
    ):
        yield


@pytest.mark.parametrize("mode", KERNEL_MODES)
@settings(max_examples=150, deadline=None, derandomize=True)
@given(data=st.data(), threshold=THRESHOLDS)
def test_nms_matches_torchvision(mode, data, threshold):
    boxes = data.draw(xyxy_boxes(allow_degenerate=True))
    scores = data.draw(scores_for(len(boxes)))
    with kernel_mode(mode):
        keep = nms(boxes, scores, threshold)
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, threshold))


@pytest.mark.parametrize("mode", KERNEL_MODES)
@settings(max_examples=100, deadline=None, derandomize=True)
@given(data=st.data(), threshold=THRESHOLDS, dtype=st.sampled_from([torch.float32, torch.float64]))
def test_batched_nms_matches_torchvision(mode, data, threshold, dtype):
    boxes = data.draw(xyxy_boxes(allow_degenerate=True, dtype=dtype))
    scores = data.draw(scores_for(len(boxes))).to(dtype)
    idxs = torch.tensor(data.draw(st.lists(st.integers(-2, 4), min_size=len(boxes), max_size=len(boxes))),
                        dtype=torch.int64)
    with kernel_mode(mode):
        keep = batched_nms(boxes, scores, idxs, threshold)
    # torchvision offsets coordinates per class for small inputs and loops over classes for large ones;
    # the forced modes take the per-class path, so they are compared with torchvision's per-class code.
    reference = (torchvision.ops.batched_nms if mode == "default" else _batched_nms_vanilla)(
        boxes, scores, idxs, threshold)
    assert torch.equal(keep, reference)


@pytest.mark.parametrize("mode", KERNEL_MODES)
@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data(), threshold=THRESHOLDS, dtype=st.sampled_from([torch.float16, torch.bfloat16]))
def test_half_precision_boxes_are_suppressed_with_float32_iou(mode, data, threshold, dtype):
    """torchvision's CPU kernel refuses fp16 and bf16; ours widens them exactly, as the CUDA kernels do."""
    boxes = data.draw(xyxy_boxes(allow_degenerate=True)).to(dtype)
    scores = data.draw(scores_for(len(boxes))).to(dtype)
    idxs = torch.arange(len(boxes)) % 3
    with kernel_mode(mode):
        keep = nms(boxes, scores, threshold)
        batched_keep = batched_nms(boxes, scores, idxs, threshold)
    assert torch.equal(keep, torchvision.ops.nms(boxes.float(), scores.float(), threshold))
    reference = (torchvision.ops.batched_nms if mode == "default" else _batched_nms_vanilla)(
        boxes.float(), scores.float(), idxs, threshold)
    assert torch.equal(batched_keep, reference)


@pytest.mark.parametrize("count", [9, 300, 2500])
def test_scores_of_another_dtype_rank_the_boxes_by_their_own_values(count):
    """float64 scores that float32 would tie still decide the order of float32 boxes (and fp16 scores widen)."""
    boxes = make_boxes(count, seed=count, clustered=True)[0]
    generator = torch.Generator().manual_seed(count)
    levels = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    offsets = torch.randperm(count, generator=generator, dtype=torch.float64) * 1e-12  # below float32's ulp
    scores = levels[torch.randint(0, 3, (count,), generator=generator)] + offsets  # tied only in float32
    order = torch.sort(scores, stable=True, descending=True).indices
    distinct_scores = torch.linspace(1, 0, count)  # the same ranking without ties, as float32
    expected = order[torchvision.ops.nms(boxes[order], distinct_scores, 0.5)]
    assert torch.equal(nms(boxes, scores, 0.5), expected)
    halves = scores.half()
    assert torch.equal(nms(boxes, halves, 0.5), torchvision.ops.nms(boxes, halves.float(), 0.5))
    idxs = torch.arange(count) % 4
    assert torch.equal(batched_nms(boxes, halves, idxs, 0.5),
                       torchvision.ops.batched_nms(boxes, halves.float(), idxs, 0.5))


@pytest.mark.parametrize("count", [2500, 6000])
@pytest.mark.parametrize("clustered", [False, True])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_large_sets_match_torchvision(count, clustered, threshold):
    boxes, scores, classes = make_boxes(count, seed=count, clustered=clustered)
    assert torch.equal(nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold))
    assert torch.equal(
        batched_nms(boxes, scores, classes, threshold), torchvision.ops.batched_nms(boxes, scores, classes, threshold)
    )


def test_large_sets_with_tied_scores_and_duplicates_match_torchvision():
    boxes, _, _ = make_boxes(4000, seed=3, clustered=False)
    boxes[::7] = boxes[1::7][: len(boxes[::7])]
    scores = torch.randint(0, 3, (4000,), generator=torch.Generator().manual_seed(4)).float()
    assert torch.equal(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))


def test_classes_sharing_large_boxes_go_to_per_class_calls():
    # SSD's candidates: every class ranks the same large decoded boxes, so the grid cannot separate them
    # and the sparse kernel would evaluate nearly every same-class pair; it gives way to per-class calls.
    generator = torch.Generator().manual_seed(5)
    centres = torch.rand(500, 2, generator=generator) * 300
    sizes = 60 + torch.rand(500, 2, generator=generator) * 200
    shared = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
    boxes, classes = shared.repeat(8, 1), torch.arange(8).repeat_interleave(500)
    scores = torch.rand(len(boxes), generator=generator)
    segments = nms_module._class_segments(classes)
    assert nms_module._grouped_sparse_nms(boxes, scores, classes, 0.45, segments) is None
    with mock.patch.multiple(nms_module, SPARSE_COST_MARGIN=0, GRID_SHARE_OF_TORCHVISION=float("inf")):
        forced = nms_module._grouped_sparse_nms(boxes, scores, classes, 0.45, segments)
    reference = torchvision.ops.batched_nms(boxes, scores, classes, 0.45)
    assert torch.equal(batched_nms(boxes, scores, classes, 0.45), reference)
    assert torch.equal(forced.sort().values, reference.sort().values)


@pytest.mark.parametrize(("count", "clustered", "threshold"), [(3000, True, 0.3), (3000, False, 0.5), (6000, True, 0.3),
                                                            (6000, False, 0.7), (200, True, 0.5)])
def test_the_kept_count_is_estimated_from_the_best_boxes(count, clustered, threshold):
    """Exact up to PILOT_BOXES boxes; within a factor 1.7 on clustered and spread sets (the cost model's input)."""
    boxes, scores, _ = make_boxes(count, seed=count, clustered=clustered)
    kept = len(torchvision.ops.nms(boxes, scores, threshold))
    order = torch.sort(scores, stable=True, descending=True).indices
    prefix = nms_module._prefix_size(count)
    prefix_kept = torchvision.ops.nms(boxes[order[:prefix]], scores[order[:prefix]], threshold)
    estimate = nms_module._estimated_kept(prefix_kept, prefix, count)
    if count <= nms_module.PILOT_BOXES:
        assert estimate == kept
    assert kept / 1.7 <= estimate <= kept * 1.7


def test_the_kept_count_extrapolation_flattens_and_never_exceeds_the_boxes():
    assert nms_module._extrapolated_count([10, 10, 10], 256, 5000) == 10  # the clusters are covered already
    every_box = nms_module._extrapolated_count([64, 128, 256], 256, 2048)  # spread: a slope of 1 that tires
    assert every_box == pytest.approx(256 * 2 ** (1 + 0.95 + 0.9)) and every_box < 2048
    flattening = [nms_module._extrapolated_count([30, 40, 50], 256, size) for size in (1000, 10**6, 10**7)]
    assert 50 < flattening[0] < flattening[1] == flattening[2] < 100  # the slope reaches 0: no more growth


def test_clustered_sets_at_low_thresholds_take_the_prefix_steps():
    """Where few boxes are kept the sparse kernel is slow (4.8 against 37 ms for torchvision's kernel on this
    clustered set at 0.3, docs/benchmarks.md) and the best boxes' kept ones filter the rest instead; spread sets,
    where most are kept, take the sparse kernel."""
    boxes, scores, _ = make_boxes(3000, seed=3000, clustered=True)
    with mock.patch.object(nms_module, "_suppressing_pairs", side_effect=AssertionError("the sparse kernel ran")):
        assert torch.equal(nms(boxes, scores, 0.3), torchvision.ops.nms(boxes, scores, 0.3))
    boxes, scores, _ = make_boxes(3000, seed=3000, clustered=False)
    with mock.patch.object(nms_module, "_suppressed_by", side_effect=AssertionError("the prefix steps ran")):
        assert torch.equal(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))


@pytest.mark.parametrize("threshold", [0.0, 1 / 3, 0.5, 1.0])
@pytest.mark.parametrize("clustered", [False, True])
def test_prefix_steps_match_torchvision_with_ties_duplicates_and_empty_boxes(threshold, clustered):
    boxes, _, _ = make_boxes(600, seed=6, clustered=clustered)
    boxes[::9] = boxes[1::9][: len(boxes[::9])]  # duplicates
    boxes[5::11, 2] = boxes[5::11, 0]  # zero width
    boxes[7::13, 2:] = boxes[7::13, :2] - 1  # inverted
    scores = torch.randint(0, 5, (600,), generator=torch.Generator().manual_seed(7)).float()  # ties
    expected = torchvision.ops.nms(boxes, scores, threshold)
    with kernel_mode("prefix"), mock.patch.object(nms_module, "_suppressed_by", wraps=nms_module._suppressed_by) as spy:
        keep = nms(boxes, scores, threshold)
    assert spy.call_count > 10 and torch.equal(keep, expected)


def test_long_suppression_chain_takes_the_sequential_finish():
    # Box k overlaps box k+1 with IoU 2/3 and box k+2 with IoU 3/7: greedy keeps every other box,
    # a dependency chain as long as the input.
    count = 3000
    x = torch.arange(count, dtype=torch.float32) * 2
    boxes = torch.stack([x, torch.zeros(count), x + 10, torch.full((count,), 10.0)], dim=1)
    scores = torch.linspace(1, 0, count)
    keep = nms(boxes, scores, 0.5)
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, 0.5))
    assert torch.equal(keep, torch.arange(0, count, 2))


@pytest.mark.parametrize("mode", KERNEL_MODES)
def test_threshold_is_compared_in_double_precision(mode):
    # IoU 1/3 rounds up in float32 (0.33333334 > 1/3): torchvision suppresses, so must we.
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 3.0], [5.0, 5.0, 6.0, 6.0]])
    scores = torch.tensor([1.0, 0.5, 0.2])
    with kernel_mode(mode):
        keep = nms(boxes, scores, 1 / 3)
    assert keep.tolist() == torchvision.ops.nms(boxes, scores, 1 / 3).tolist() == [0, 2]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.data(), threshold=THRESHOLDS)
def test_boxes_over_the_threshold_have_overlapping_cores(data, threshold):
    # The sparse kernel only compares boxes whose cores overlap: that must hold for every pair that
    # torchvision would suppress.
    boxes = data.draw(xyxy_boxes(min_boxes=2, dtype=torch.float64))
    iou = torchvision.ops.box_iou(boxes, boxes)
    first, second = torch.nonzero(torch.triu(iou > threshold, diagonal=1)).unbind(1)
    centres, sizes = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
    reach = nms_module.core_shrink(threshold) * (sizes[first] + sizes[second]) / 2
    assert ((centres[first] - centres[second]).abs() <= reach).all()


def test_degenerate_boxes_are_kept_and_never_suppress():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 5.0, 5.0], [10.0, 10.0, 0.0, 0.0], [0.0, 0.0, 10.0, 10.0]])
    scores = torch.tensor([0.5, 0.9, 0.8, 0.4])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2, 0]


def test_empty_and_single_inputs():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).tolist() == []
    assert nms(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([0.3]), 0.5).tolist() == [0]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).dtype == torch.int64


@pytest.mark.parametrize(
    ("boxes", "scores", "threshold", "message"),
    [
        (torch.zeros(3, 5), torch.zeros(3), 0.5, r"shape \[N, 4\]"),
        (torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3), 0.5, "floating-point"),
        (torch.zeros(3, 4), torch.zeros(2), 0.5, r"shape \[3\]"),
        (torch.zeros(3, 4), torch.zeros(3), -0.1, r"in \[0, 1\]"),
        (torch.zeros(3, 4), torch.zeros(3), 1.5, r"in \[0, 1\]"),
        (torch.zeros(3, 4), torch.zeros(3), "0.5", "must be a number"),
        (torch.tensor([[0.0, 0.0, float("nan"), 1.0]]), torch.zeros(1), 0.5, "NaN coordinates"),
        (torch.zeros(1, 4), torch.tensor([float("nan")]), 0.5, "scores contain NaN"),
        (torch.zeros(4), torch.zeros(1), 0.5, r"shape \[N, 4\]"),
        ([[0.0, 0.0, 1.0, 1.0]] * 3, torch.zeros(3), 0.5, r"shape \[N, 4\], got list"),
        (torch.zeros(3, 4), [0.0] * 3, 0.5, r"shape \[3\] \(one per box\), got list"),
        (torch.zeros(3, 4), torch.zeros(3, 1), 0.5, r"shape \[3\]"),
        (torch.zeros(3, 4), torch.zeros(3, dtype=torch.int64), 0.5, "scores must be a floating-point tensor"),
        (torch.zeros(3, 4), torch.zeros(3), True, "must be a number"),
        (torch.zeros(3, 4), torch.zeros(3), float("nan"), r"in \[0, 1\]"),
        (torch.zeros(3, 4), torch.zeros(3, device="meta"), 0.5, "expected one device"),
        (torch.zeros(3, 4, dtype=torch.complex64), torch.zeros(3), 0.5, "boxes must be a floating-point"),
        (torch.zeros(3, 4), torch.zeros(3, dtype=torch.bool), 0.5, "scores must be a floating-point"),
        (torch.zeros(3, 4), torch.tensor(0.0), 0.5, r"shape \[3\] \(one per box\), got \[\]"),
        (torch.zeros(3, 4, 1), torch.zeros(3), 0.5, r"shape \[N, 4\], got \[3, 4, 1\]"),
        (torch.zeros(3, 4, device="meta"), torch.zeros(3), 0.5, "expected one device"),
    ],
)
def test_bad_input_is_a_value_error(boxes, scores, threshold, message):
    """Each check, on sets the small-CPU fast path takes when valid (3 boxes) and on the general path (1)."""
    with pytest.raises(ValueError, match=message):
        nms(boxes, scores, threshold)
    with pytest.raises(ValueError, match=message):
        batched_nms(boxes, scores, torch.zeros(len(boxes), dtype=torch.int64), threshold)


def test_integer_thresholds_are_numbers():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([0.5, 0.9, 0.8])
    assert nms(boxes, scores, 0).tolist() == torchvision.ops.nms(boxes, scores, 0.0).tolist() == [1, 2]
    assert nms(boxes, scores, 1).tolist() == [1, 2, 0]


NAN_CHECK_SIZES = [1, 2, 9, 300, nms_module.SPARSE_MIN_BOXES]
"""Both paths: the general one (1 and SPARSE_MIN_BOXES boxes) and the small CPU sets' fast one."""


@pytest.mark.parametrize("count", NAN_CHECK_SIZES)
@pytest.mark.parametrize("where", ["boxes", "scores"])
def test_a_nan_anywhere_is_found_at_every_size(count: int, where: str) -> None:
    generator = torch.Generator().manual_seed(count)
    boxes = torch.rand(count, 4, generator=generator).cumsum(1)
    scores = torch.rand(count, generator=generator)
    position = int(torch.randint(count, (1,), generator=generator))
    if where == "boxes":
        boxes[position, position % 4] = float("nan")
    else:
        scores[position] = float("nan")
    for call in (lambda: nms(boxes, scores, 0.5), lambda: batched_nms(boxes, scores, torch.arange(count) % 3, 0.5)):
        with pytest.raises(ValueError, match="NaN coordinates" if where == "boxes" else "scores contain NaN"):
            call()


@pytest.mark.parametrize("count", NAN_CHECK_SIZES)
def test_infinities_of_both_signs_are_not_taken_for_nan(count: int) -> None:
    generator = torch.Generator().manual_seed(count)
    boxes = torch.rand(count, 4, generator=generator).cumsum(1) * 10
    scores = torch.rand(count, generator=generator)
    boxes[0, 2:] = float("inf")  # the Python sum of inf and -inf is NaN: the check must not stop there
    scores[-1] = float("-inf")
    assert torch.equal(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes, scores, 0.5))


def test_bad_category_indices_are_a_value_error():
    with pytest.raises(ValueError, match="integer tensor"):
        batched_nms(torch.zeros(2, 4), torch.zeros(2), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match=r"idxs must be a tensor of shape \[2\]"):
        batched_nms(torch.zeros(2, 4), torch.zeros(2), torch.zeros(3, dtype=torch.int64), 0.5)


@pytest.mark.parametrize("count", [0, 1])
def test_fewer_than_two_boxes_are_all_kept_without_a_kernel_call(count: int) -> None:
    boxes, scores = torch.tensor([[3.0, 3.0, 3.0, 9.0]])[:count], torch.tensor([0.2])[:count]  # degenerate too
    expected = torchvision.ops.nms(boxes, scores, 0.5)
    for keep in (nms(boxes, scores, 0.5), batched_nms(boxes, scores, torch.zeros(count, dtype=torch.int64), 0.5)):
        assert keep.dtype == torch.int64 and torch.equal(keep, expected)


def test_registered_device_kernel_is_used():
    calls = []

    def recording_kernel(boxes, scores, threshold):
        calls.append(threshold)
        return torchvision.ops.nms(boxes, scores, threshold)

    previous = nms_module._DEVICE_KERNELS.get("cpu")
    register_nms_kernel("cpu", recording_kernel)
    try:
        nms(torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.0, 1.5, 1.0]]), torch.tensor([1.0, 0.5]), 0.25)
    finally:
        if previous is None:
            nms_module._DEVICE_KERNELS.pop("cpu")
        else:
            register_nms_kernel("cpu", previous)
    assert calls == [0.25]
