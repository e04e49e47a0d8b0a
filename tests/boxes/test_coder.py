"""BoxCoder against torchvision's detection BoxCoder, on random and adversarial boxes and deltas."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.models.detection._utils import BoxCoder as TorchvisionBoxCoder

from structured.boxes.coder import BoxCoder

DETERMINISTIC = settings(derandomize=True, deadline=None, max_examples=50)
# torchvision RPN, torchvision box head, and distinct weights that catch a mixed-up weight
WEIGHTS = [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (2.0, 3.0, 4.0, 7.0)]
MAX_SIZE_RATIO = 60.0  # below exp(clamp) = 62.5, so that decode(encode(b, a), a) == b

positions = st.floats(min_value=-1e4, max_value=1e4)
far_offsets = st.floats(min_value=-1e5, max_value=1e5)
log_sizes = st.floats(min_value=-3, max_value=4)
log_ratios = st.floats(min_value=-math.log(MAX_SIZE_RATIO), max_value=math.log(MAX_SIZE_RATIO))


def xyxy(center_x: float, center_y: float, width: float, height: float) -> list[float]:
    return [center_x - width / 2, center_y - height / 2, center_x + width / 2, center_y + height / 2]


@st.composite
def anchor_box_pair(draw: st.DrawFn, bounded_ratio: bool) -> tuple[list[float], list[float]]:
    """An anchor (sides 1e-3..1e4, thin or huge) and a box: identical, near, far, or of any size."""
    anchor_x, anchor_y = draw(positions), draw(positions)
    anchor_w, anchor_h = 10 ** draw(log_sizes), 10 ** draw(log_sizes)
    anchor = xyxy(anchor_x, anchor_y, anchor_w, anchor_h)
    relation = draw(st.sampled_from(["identical", "near", "far"]))
    if relation == "identical":
        return anchor, list(anchor)
    if bounded_ratio:
        box_w, box_h = anchor_w * math.exp(draw(log_ratios)), anchor_h * math.exp(draw(log_ratios))
    else:
        box_w, box_h = 10 ** draw(log_sizes), 10 ** draw(log_sizes)
    offsets = far_offsets if relation == "far" else st.floats(min_value=-2, max_value=2)
    scale = (1.0, 1.0) if relation == "far" else (anchor_w, anchor_h)
    box = xyxy(anchor_x + draw(offsets) * scale[0], anchor_y + draw(offsets) * scale[1], box_w, box_h)
    return anchor, box


@st.composite
def anchors_and_boxes(draw: st.DrawFn, bounded_ratio: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 anchors and boxes ``[N, 4]``."""
    pairs = draw(st.lists(anchor_box_pair(bounded_ratio), min_size=1, max_size=8))
    anchors, boxes = zip(*pairs, strict=True)
    return torch.tensor(anchors, dtype=torch.float64), torch.tensor(boxes, dtype=torch.float64)


@st.composite
def anchors_and_deltas(draw: st.DrawFn, classes: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 anchors ``[N, 4]`` and deltas ``[N, classes * 4]`` reaching past the clamp."""
    anchors, _ = draw(anchors_and_boxes())
    count = len(anchors) * classes * 4
    deltas = draw(st.lists(st.floats(min_value=-60, max_value=60), min_size=count, max_size=count))
    return anchors, torch.tensor(deltas, dtype=torch.float64).view(len(anchors), classes * 4)


def row_scale(*tensors: torch.Tensor) -> torch.Tensor:
    """Largest coordinate magnitude of each row, ``[N, 1]``: the unit of float rounding errors."""
    return torch.cat(tensors, dim=-1).abs().amax(dim=-1, keepdim=True)


@pytest.mark.parametrize("weights", WEIGHTS)
@DETERMINISTIC
@given(data=anchors_and_boxes())
def test_encode_matches_torchvision(
    weights: tuple[float, ...], data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    anchors, boxes = data
    expected = TorchvisionBoxCoder(weights).encode_single(boxes, anchors)
    torch.testing.assert_close(BoxCoder(weights).encode(boxes, anchors), expected, rtol=1e-6, atol=1e-6)
    expected32 = TorchvisionBoxCoder(weights).encode_single(boxes.float(), anchors.float())
    result32 = BoxCoder(weights).encode(boxes.float(), anchors.float())
    torch.testing.assert_close(result32, expected32, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weights", WEIGHTS)
@DETERMINISTIC
@given(data=anchors_and_deltas())
def test_decode_matches_torchvision(
    weights: tuple[float, ...], data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    anchors, deltas = data
    expected = TorchvisionBoxCoder(weights).decode_single(deltas, anchors)
    torch.testing.assert_close(BoxCoder(weights).decode(deltas, anchors), expected, rtol=1e-6, atol=1e-6)
    expected32 = TorchvisionBoxCoder(weights).decode_single(deltas.float(), anchors.float())
    result32 = BoxCoder(weights).decode(deltas.float(), anchors.float())
    torch.testing.assert_close(result32, expected32, rtol=1e-5, atol=1e-5)


@DETERMINISTIC
@given(data=anchors_and_deltas(classes=3))
def test_class_specific_deltas_decode_by_broadcasting(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    proposals, deltas = data
    weights = (10.0, 10.0, 5.0, 5.0)
    expected = TorchvisionBoxCoder(weights).decode(deltas, [proposals])  # [N, 3, 4]
    result = BoxCoder(weights).decode(deltas.view(len(proposals), 3, 4), proposals[:, None, :])
    torch.testing.assert_close(result, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("weights", WEIGHTS)
@DETERMINISTIC
@given(data=anchors_and_boxes(bounded_ratio=True))
def test_decode_inverts_encode(weights: tuple[float, ...], data: tuple[torch.Tensor, torch.Tensor]) -> None:
    anchors, boxes = data
    coder = BoxCoder(weights)
    round_trip = coder.decode(coder.encode(boxes, anchors), anchors)
    assert round_trip.dtype == torch.float64
    torch.testing.assert_close(round_trip, boxes, rtol=1e-6, atol=1e-6)
    anchors32, boxes32 = anchors.float(), boxes.float()
    error32 = (coder.decode(coder.encode(boxes32, anchors32), anchors32) - boxes32).abs()
    assert (error32 <= 1e-5 * row_scale(anchors32, boxes32)).all()


def test_decode_clamps_the_size_ratio() -> None:
    anchors = torch.tensor([[0.0, 0.0, 2.0, 4.0]], dtype=torch.float64)
    deltas = torch.tensor([[0.0, 0.0, 100.0, -100.0]], dtype=torch.float64)
    x1, y1, x2, y2 = BoxCoder().decode(deltas, anchors)[0].tolist()
    assert x2 - x1 == pytest.approx(2.0 * 1000 / 16)
    assert y2 - y1 == pytest.approx(4.0 * math.exp(-100.0))
    unclamped = BoxCoder(clamp=math.inf).decode(torch.tensor([[0.0, 0.0, 10.0, 0.0]]), anchors.float())
    assert (unclamped[0, 2] - unclamped[0, 0]).item() == pytest.approx(2.0 * math.exp(10.0), rel=1e-5)


def test_ssd_variances_are_inverse_weights() -> None:
    coder = BoxCoder.from_variances((0.1, 0.2))
    assert coder.weights == pytest.approx((10.0, 10.0, 5.0, 5.0))
    assert BoxCoder.from_variances((0.5, 0.25)).weights == (2.0, 2.0, 4.0, 4.0)
    anchors = torch.tensor([[10.0, 20.0, 50.0, 40.0]], dtype=torch.float64)
    boxes = torch.tensor([[12.0, 18.0, 70.0, 45.0]], dtype=torch.float64)
    expected = TorchvisionBoxCoder((10.0, 10.0, 5.0, 5.0)).encode_single(boxes, anchors)
    torch.testing.assert_close(coder.encode(boxes, anchors), expected)


def test_leading_dims_broadcast() -> None:
    torch.manual_seed(0)
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 25.0, 15.0]])
    boxes = anchors + torch.rand(3, 2, 4)  # [3, 2, 4] against anchors [2, 4]
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    deltas = coder.encode(boxes, anchors)
    assert deltas.shape == (3, 2, 4)
    for batch in range(3):
        torch.testing.assert_close(deltas[batch], coder.encode(boxes[batch], anchors))
    torch.testing.assert_close(coder.decode(deltas, anchors), boxes, rtol=1e-5, atol=1e-5)


def test_decode_gradients_match_finite_differences() -> None:
    anchors = torch.tensor(
        [[0.0, 0.0, 10.0, 6.0], [3.0, 4.0, 8.0, 20.0]], dtype=torch.float64, requires_grad=True
    )
    deltas = torch.tensor(
        [[0.1, -0.2, 0.3, 0.5], [1.0, 0.5, -0.4, 0.2]], dtype=torch.float64, requires_grad=True
    )
    assert torch.autograd.gradcheck(BoxCoder((10.0, 10.0, 5.0, 5.0)).decode, (deltas, anchors))


def test_degenerate_boxes_give_torchvision_values_without_raising() -> None:
    anchors = torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 2.0, 2.0]])
    boxes = torch.tensor([[1.0, 1.0, 1.0, 3.0], [0.0, 0.0, 1.0, 1.0]])
    encoded = BoxCoder().encode(boxes, anchors)
    torch.testing.assert_close(
        encoded, TorchvisionBoxCoder((1.0, 1.0, 1.0, 1.0)).encode_single(boxes, anchors)
    )
    assert encoded[0, 2] == -math.inf
    decoded = BoxCoder().decode(torch.zeros(2, 4), anchors)
    torch.testing.assert_close(decoded, anchors)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"weights": (0.0, 1.0, 1.0, 1.0)}, "weights must be 4 positive finite numbers"),
        ({"weights": (1.0, 1.0, 1.0)}, "weights must be 4 positive finite numbers"),
        ({"weights": (1.0, math.nan, 1.0, 1.0)}, "weights must be 4 positive finite numbers"),
        ({"clamp": 0.0}, "clamp must be a positive number"),
        ({"clamp": math.nan}, "clamp must be a positive number"),
    ],
)
def test_rejects_bad_settings(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BoxCoder(**arguments)


@pytest.mark.parametrize("variances", [(0.0, 0.2), (0.1,), (-0.1, 0.2)])
def test_rejects_bad_variances(variances: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="variances must be 2 positive finite numbers"):
        BoxCoder.from_variances(variances)


@pytest.mark.parametrize(
    ("method", "first", "second", "message"),
    [
        ("encode", torch.zeros(2, 3), torch.ones(2, 4), r"boxes must have shape \[\.\.\., 4\]"),
        ("encode", torch.ones(2, 4), torch.ones(2, 4, dtype=torch.int32), "anchors must be a floating-point"),
        ("encode", torch.full((1, 4), math.nan), torch.ones(1, 4), "boxes contains NaN"),
        ("encode", torch.ones(3, 4), torch.ones(2, 4), "must broadcast"),
        (
            "decode",
            torch.zeros(2, 8),
            torch.ones(2, 4),
            r"deltas\.view\(N, K, 4\) with anchors\[:, None, :\]",
        ),
        ("decode", torch.zeros(2, 4), torch.ones(3, 4), "must broadcast"),
    ],
)
def test_rejects_bad_tensors(method: str, first: torch.Tensor, second: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        getattr(BoxCoder(), method)(first, second)


@pytest.mark.gpu
def test_coder_on_cuda_matches_cpu() -> None:
    anchors = torch.tensor([[0.0, 0.0, 10.0, 6.0], [3.0, 4.0, 8.0, 20.0]])
    boxes = torch.tensor([[1.0, -1.0, 12.0, 7.0], [2.0, 5.0, 9.0, 30.0]])
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    deltas = coder.encode(boxes.cuda(), anchors.cuda())
    assert deltas.device.type == "cuda"
    torch.testing.assert_close(deltas.cpu(), coder.encode(boxes, anchors))
    torch.testing.assert_close(coder.decode(deltas, anchors.cuda()).cpu(), boxes)
