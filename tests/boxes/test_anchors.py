"""Anchor generator against torchvision's AnchorGenerator (the test oracle) and its caching contract."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from structured.boxes.anchors import AnchorGenerator, cell_anchors

CONFIGS = [
    (((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5),
    (((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3),
    (((128, 256, 512),), ((0.5, 1.0, 2.0),)),
    (((17.5, 45), (90,)), ((0.33, 1.7), (1.0, 3.0, 0.25))),
]

SHAPES = [
    ((800, 1088), [(200, 272), (100, 136), (50, 68), (25, 34), (13, 17)]),
    ((96, 160), [(24, 40), (12, 20), (6, 10), (3, 5), (2, 3)]),
    ((33, 65), [(9, 17), (5, 9), (3, 5), (2, 3), (1, 1)]),
]


def torchvision_anchors(sizes, ratios, image_size, feature_sizes):
    generator = TorchvisionAnchorGenerator(sizes, ratios)
    image = torch.zeros(1, 3, *image_size)
    features = [torch.zeros(1, 1, h, w) for h, w in feature_sizes]
    anchors = generator(ImageList(image, [image_size]), features)[0]
    return anchors.split(
        [h * w * a for (h, w), a in zip(feature_sizes, generator.num_anchors_per_location(), strict=True)]
    )


@pytest.mark.parametrize(("sizes", "ratios"), CONFIGS)
@pytest.mark.parametrize(("image_size", "feature_sizes"), SHAPES)
def test_anchors_equal_torchvision(sizes, ratios, image_size, feature_sizes):
    feature_sizes = feature_sizes[: len(sizes)]
    ours = AnchorGenerator(sizes, ratios)(feature_sizes, image_size)
    expected = torchvision_anchors(sizes, ratios, image_size, feature_sizes)
    assert len(ours) == len(expected)
    for level, (mine, theirs) in enumerate(zip(ours, expected, strict=True)):
        assert mine.dtype == torch.float32
        assert torch.equal(mine, theirs), f"level {level} differs"


def test_num_anchors_per_location():
    generator = AnchorGenerator(((32, 64), (128,)), ((0.5, 1.0, 2.0), (1.0,)))
    assert generator.num_anchors_per_location() == [6, 1]


def test_cell_anchors_are_centred_with_requested_ratio():
    cells = cell_anchors((64,), (0.25, 1.0, 4.0))
    widths, heights = cells[:, 2] - cells[:, 0], cells[:, 3] - cells[:, 1]
    assert torch.allclose(cells[:, :2] + cells[:, 2:], torch.zeros(3, 2))
    assert torch.allclose(heights / widths, torch.tensor([0.25, 1.0, 4.0]))
    assert torch.allclose(widths * heights, torch.full((3,), 64.0 * 64.0))


def test_cache_returns_same_tensors_per_shape_and_distinguishes_shapes():
    generator = AnchorGenerator(((32,),), ((1.0,),))
    first = generator([(4, 5)], (32, 40))
    assert generator([(4, 5)], (32, 40))[0] is first[0]
    other = generator([(4, 6)], (32, 48))
    assert other[0].shape == (24, 4)
    assert generator([(4, 5)], (32, 40), dtype=torch.float64)[0].dtype == torch.float64


def test_bad_arguments_name_what_is_wrong():
    with pytest.raises(ValueError, match="one entry per level"):
        AnchorGenerator(((32,), (64,)), ((1.0,),))
    with pytest.raises(ValueError, match="positive"):
        AnchorGenerator(((0,),), ((1.0,),))
    with pytest.raises(ValueError, match="2 feature maps"):
        AnchorGenerator(((32,),), ((1.0,),))([(4, 4), (2, 2)], (32, 32))
