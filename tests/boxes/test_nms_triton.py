"""The Triton NMS kernels: interpreted on the CPU in a child process, and on CUDA against torchvision.

``TRITON_INTERPRET=1`` must be set before Triton is imported, so the interpreted cases
(``interpret_nms_triton.py``) run in their own pytest process and this process never sees the flag.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys

import pytest
import torch
import torchvision
from torchvision.ops.boxes import _batched_nms_vanilla

from bench.nms_cpu import make_boxes
from structured.boxes import batched_nms, nms, nms_triton
from structured.registry import MODELS
from tests.conftest import REPO_ROOT

nms_module = importlib.import_module("structured.boxes.nms")


@pytest.mark.skipif(not nms_triton.triton_available(), reason="needs triton")
def test_kernels_match_torchvision_in_interpret_mode():
    environment = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1",
                       PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::RuntimeWarning",
         str(REPO_ROOT / "tests" / "boxes" / "interpret_nms_triton.py")],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


def test_cuda_tensors_dispatch_to_the_triton_kernels():
    assert nms_module._DEVICE_KERNELS["cuda"] is nms_triton.nms
    assert nms_module._BATCHED_KERNELS["cuda"] is nms_triton.batched_nms


def test_threshold_semantics_of_each_device():
    assert nms_triton.min_suppressing_iou(1 / 3, float32_threshold=False) == pytest.approx(1 / 3, abs=1e-7)
    assert nms_triton.min_suppressing_iou(1 / 3, float32_threshold=True) > nms_triton.min_suppressing_iou(
        1 / 3, float32_threshold=False)
    assert nms_triton.min_suppressing_iou(0.5, float32_threshold=True) == nms_triton.min_suppressing_iou(
        0.5, float32_threshold=False) > 0.5


def _adversarial_boxes(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer boxes on a coarse grid: exact IoU ties at 1/3 and 1/2, duplicates, tied scores."""
    generator = torch.Generator().manual_seed(count)
    corner = torch.randint(0, 40, (count, 2), generator=generator).float() * 2
    size = torch.randint(1, 4, (count, 2), generator=generator).float() * 2
    scores = torch.randint(0, 8, (count,), generator=generator).float()
    return torch.cat((corner, corner + size), dim=1), scores


def _cuda_cases():
    for count in (1000, 20000, 100000):
        for clustered in (False, True):
            yield f"{'clustered' if clustered else 'spread'}-{count}", make_boxes(count, seed=count, clustered=clustered)
    for count in (500, 5000):
        boxes, scores = _adversarial_boxes(count)
        yield f"adversarial-{count}", (boxes, scores, torch.randint(0, 80, (count,)))


@pytest.mark.gpu
@pytest.mark.parametrize("threshold", [0.0, 1 / 3, 0.5, 0.7, 1.0])
def test_cuda_nms_matches_torchvision(threshold):
    assert nms_triton.triton_available()
    for name, (boxes, scores, classes) in _cuda_cases():
        boxes, scores, classes = boxes.cuda(), scores.cuda(), classes.cuda()
        assert torch.equal(nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold)), name
        assert torch.equal(batched_nms(boxes, scores, classes, threshold),
                           torchvision.ops.batched_nms(boxes, scores, classes, threshold)), name


@pytest.mark.gpu
def test_cuda_batched_nms_over_16_images_and_80_classes_matches_per_image_calls():
    images = [make_boxes(5000, seed=seed, clustered=True) for seed in range(16)]
    boxes = torch.cat([image[0] for image in images]).cuda()
    scores = torch.cat([image[1] for image in images]).cuda()
    segment = torch.cat([image[2] + 80 * index for index, image in enumerate(images)]).cuda()
    assert torch.equal(batched_nms(boxes, scores, segment, 0.5), _batched_nms_vanilla(boxes, scores, segment, 0.5))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_boxes_give_the_float32_result(dtype):
    boxes, scores, classes = (tensor.cuda() for tensor in make_boxes(20000, seed=1, clustered=True))
    boxes = boxes.to(dtype)
    assert torch.equal(nms(boxes, scores, 0.5), torchvision.ops.nms(boxes.float(), scores, 0.5))
    assert torch.equal(batched_nms(boxes, scores, classes, 0.5),
                       torchvision.ops.batched_nms(boxes.float(), scores, classes, 0.5))


@pytest.mark.gpu
@pytest.mark.parametrize(("box_dtype", "score_dtype"), [(torch.float32, torch.float16), (torch.float32, torch.float64),
                                                        (torch.float64, torch.float32), (torch.bfloat16, torch.float64)])
def test_cuda_inputs_of_other_dtypes_give_the_cpu_result(box_dtype, score_dtype):
    """The CPU path widens or ranks them (tests/boxes/test_nms.py); the CUDA path must agree."""
    boxes, scores, classes = make_boxes(5000, seed=3, clustered=True)
    boxes, scores = boxes.to(box_dtype), scores.to(score_dtype)
    assert torch.equal(nms(boxes.cuda(), scores.cuda(), 0.5).cpu(), nms(boxes, scores, 0.5))
    assert torch.equal(batched_nms(boxes.cuda(), scores.cuda(), classes.cuda(), 0.5).cpu(),
                       batched_nms(boxes, scores, classes, 0.5))


@pytest.mark.gpu
def test_cuda_fixed_size_output_and_chunked_mask():
    boxes, scores, _ = (tensor.cuda() for tensor in make_boxes(30000, seed=2, clustered=True))
    expected = torchvision.ops.nms(boxes, scores, 0.5)
    padded, count = nms_triton.nms(boxes, scores, 0.5, max_out=300)
    assert int(count) == 300 and torch.equal(padded, expected[:300])
    budget = nms_triton.MASK_BUDGET_BYTES
    nms_triton.MASK_BUDGET_BYTES = 1 << 22  # 4 MiB: 8,768 rows of 469 words per chunk
    try:
        assert torch.equal(nms_triton.nms(boxes, scores, 0.5), expected)
    finally:
        nms_triton.MASK_BUDGET_BYTES = budget


@contextlib.contextmanager
def torchvision_cuda_ops():
    """Inside: structured's NMS on CUDA tensors calls torchvision's ops (our kernels unregistered)."""
    kernel, batched = nms_module._DEVICE_KERNELS.pop("cuda"), nms_module._BATCHED_KERNELS.pop("cuda")
    try:
        yield
    finally:
        nms_module.register_nms_kernel("cuda", kernel, batched=batched)


@pytest.mark.gpu
@pytest.mark.parametrize("recipe", ["faster_rcnn_r50_fpn", "mask_rcnn_r50_fpn"])
def test_cuda_detector_outputs_equal_those_with_torchvisions_nms(recipe):
    assert nms_triton.triton_available()
    torch.manual_seed(0)
    model = MODELS.build(recipe, roi_heads={"score_thresh": 0.0}).eval().cuda()
    images = [torch.rand(3, 480, 640, device="cuda"), torch.rand(3, 512, 512, device="cuda")]
    with torch.no_grad():
        ours = model(images)
        with torchvision_cuda_ops():
            theirs = model(images)
    for our_prediction, their_prediction in zip(ours, theirs, strict=True):
        assert our_prediction.keys() == their_prediction.keys()
        for key, value in our_prediction.items():
            assert torch.equal(value, their_prediction[key]), key
