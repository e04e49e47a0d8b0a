"""DetectionTransform against torchvision's GeneralizedRCNNTransform (test oracle) on varied image sizes."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from structured.detection.transform import DetectionTransform, resized_size

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SIZES = [(480, 640), (640, 480), (333, 517), (1000, 200), (97, 131), (800, 1333), (1, 7)]


def random_target(generator: torch.Generator, height: int, width: int, count: int = 5) -> dict:
    corners = torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * 0.7
    sizes = torch.rand(count, 2, generator=generator) * torch.tensor([width, height]) * 0.3
    return {
        "boxes": torch.cat((corners, corners + sizes), 1),
        "labels": torch.randint(1, 5, (count,), generator=generator),
    }


@pytest.mark.parametrize(("min_size", "max_size"), [(800, 1333), (320, 640), (128, 160)])
def test_eval_batch_equals_torchvision(min_size, max_size):
    generator = torch.Generator().manual_seed(min_size)
    images = [torch.rand(3, h, w, generator=generator) for h, w in SIZES[:4]]
    targets = [random_target(generator, h, w) for h, w in SIZES[:4]]
    reference = GeneralizedRCNNTransform(min_size, max_size, MEAN, STD).eval()
    ours = DetectionTransform(min_size, max_size, MEAN, STD).eval()
    expected, expected_targets = reference(images, [dict(t) for t in targets])
    batch, resized_targets = ours(images, targets)
    assert batch.image_sizes == [tuple(s) for s in expected.image_sizes]
    assert torch.equal(batch.tensors, expected.tensors)
    for mine, theirs, original in zip(resized_targets, expected_targets, targets, strict=True):
        assert torch.equal(mine["boxes"], theirs["boxes"])
        assert mine["boxes"] is not original["boxes"]


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_resized_size_equals_torchvision_for_odd_sizes(height, width):
    reference = GeneralizedRCNNTransform(600, 1000, MEAN, STD).eval()
    expected, _ = reference([torch.zeros(3, height, width)])
    assert resized_size(height, width, 600, 1000) == tuple(expected.image_sizes[0])
    assert expected.tensors.shape[-2] % 32 == 0 and expected.tensors.shape[-1] % 32 == 0


@pytest.mark.parametrize(("height", "width", "expected"), [(4, 900, (1, 192)), (900, 4, (192, 1)), (1, 5000, (1, 191)),
                                                      (2, 2, (128, 128))])
def test_each_side_keeps_at_least_one_pixel(height, width, expected):
    """A thin strip whose short side would round to no pixels (torchvision's transform fails on it)."""
    assert resized_size(height, width, 128, 192) == expected
    traced = torch.jit.trace(lambda image: torch.stack(resized_size(image.shape[-2], image.shape[-1], 128, 192)),
                             torch.zeros(1, 64, 64), check_trace=False)
    assert tuple(traced(torch.zeros(1, height, width)).tolist()) == expected
    batch, _ = DetectionTransform(128, 192, MEAN, STD).eval()([torch.rand(3, height, width)])
    assert batch.image_sizes == [expected]


def test_rescale_predictions_equals_torchvision():
    generator = torch.Generator().manual_seed(0)
    boxes = torch.rand(20, 4, generator=generator) * 500
    predictions = [
        {"boxes": boxes.clone(), "scores": torch.rand(20), "labels": torch.ones(20, dtype=torch.int64)}
    ]
    rescaled = DetectionTransform.rescale_predictions(predictions, [(800, 1066)], [(480, 640)])
    assert torch.equal(rescaled[0]["boxes"], resize_boxes(boxes, [800, 1066], [480, 640]))


def test_training_draws_min_size_from_choices():
    transform = DetectionTransform((64, 96), 1000, MEAN, STD).train()
    torch.manual_seed(0)
    seen = {transform(torch.rand(1, 3, 50, 60).unbind(0))[0].image_sizes[0][0] for _ in range(20)}
    assert seen == {64, 96}
    assert transform.eval()([torch.rand(3, 50, 60)])[0].image_sizes[0] == (96, 115)


def test_bad_inputs_are_named():
    transform = DetectionTransform(64, 96, MEAN, STD)
    with pytest.raises(ValueError, match="image 1 must be a float tensor"):
        transform([torch.rand(3, 8, 8), torch.rand(8, 8)])
    with pytest.raises(TypeError, match="image 0 must be floating point"):
        transform([torch.zeros(3, 8, 8, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="target 0 has no 'labels'"):
        transform([torch.rand(3, 8, 8)], [{"boxes": torch.zeros(0, 4)}])
    with pytest.raises(ValueError, match="'labels' must be int64"):
        transform([torch.rand(3, 8, 8)], [{"boxes": torch.zeros(1, 4), "labels": torch.ones(1)}])
    with pytest.raises(ValueError, match="target 0 box 1 .* has no area"):
        boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [5.0, 1.0, 5.0, 3.0]])
        transform([torch.rand(3, 8, 8)], [{"boxes": boxes, "labels": torch.ones(2, dtype=torch.int64)}])
    with pytest.raises(ValueError, match="2 images but 1 targets"):
        transform(
            [torch.rand(3, 8, 8)] * 2,
            [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}],
        )


@pytest.mark.parametrize(("min_size", "max_size"), [(800, 1333), (128, 160)])
def test_instance_masks_resize_as_torchvision_resizes_them(min_size, max_size):
    generator = torch.Generator().manual_seed(max_size)
    images = [torch.rand(3, h, w, generator=generator) for h, w in SIZES[:5]]
    targets = []
    for image in images:
        target = random_target(generator, *image.shape[-2:])
        target["masks"] = (torch.rand(5, *image.shape[-2:], generator=generator) > 0.6).to(torch.uint8)
        targets.append(target)
    reference = GeneralizedRCNNTransform(min_size, max_size, MEAN, STD).train()
    _, expected = reference(images, [dict(t) for t in targets])
    _, resized = DetectionTransform(min_size, max_size, MEAN, STD).train()(images, targets)
    for mine, theirs in zip(resized, expected, strict=True):
        assert mine["masks"].dtype == torch.uint8 and torch.equal(mine["masks"], theirs["masks"])


def test_masks_that_do_not_fit_their_image_are_refused():
    image = torch.rand(3, 40, 50)
    target = random_target(torch.Generator().manual_seed(0), 40, 50)
    target["masks"] = torch.zeros(5, 40, 49, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"target 0 'masks' must be \[N, H, W\] = \[5, 40, 50\]"):
        DetectionTransform(32, 64, MEAN, STD)([image], [target])
