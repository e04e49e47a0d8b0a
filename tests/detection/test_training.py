"""Faster R-CNN trains end to end: on generated images every loss term falls within a short run."""

from __future__ import annotations

import math

import pytest
import torch

from structured.registry import MODELS

IMAGE_SIZE = 96
COLOURS = {1: (0.9, 0.1, 0.1), 2: (0.1, 0.2, 0.9)}


def rectangles_sample(generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """A noisy grey image with 1-3 red (class 1) or blue (class 2) rectangles, and their target."""
    image = 0.4 + 0.1 * torch.rand(3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    boxes, labels = [], []
    for _ in range(int(torch.randint(1, 4, (), generator=generator))):
        width, height = (torch.randint(16, 40, (2,), generator=generator)).tolist()
        x, y = torch.randint(0, IMAGE_SIZE - 40, (2,), generator=generator).tolist()
        label = int(torch.randint(1, 3, (), generator=generator))
        image[:, y : y + height, x : x + width] = torch.tensor(COLOURS[label])[:, None, None]
        boxes.append([x, y, x + width, y + height])
        labels.append(label)
    return image, {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}


@pytest.mark.slow
def test_r18_fpn_loss_falls_on_generated_rectangles():
    torch.manual_seed(0)
    model = MODELS.build(
        "faster_rcnn_r18_fpn",
        num_classes=2,
        backbone={"frozen_stages": 4},
        rpn={"anchor_sizes": ((16,), (32,), (64,), (128,), (256,)), "pre_nms_top_n_train": 200,
             "post_nms_top_n_train": 100, "batch_size_per_image": 64},
        roi_heads={"batch_size_per_image": 64},
        transform={"min_size": IMAGE_SIZE, "max_size": IMAGE_SIZE},
    ).train()
    generator = torch.Generator().manual_seed(0)
    images, targets = zip(*[rectangles_sample(generator) for _ in range(2)], strict=True)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    history: dict[str, list[float]] = {}
    for _ in range(12):
        losses = model(list(images), list(targets))
        assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        for name, value in {**losses, "loss": total}.items():
            history.setdefault(name, []).append(value.item())
    assert all(math.isfinite(value) for values in history.values() for value in values)

    def fall(name: str) -> float:
        """Mean loss ``name`` of the last three steps over that of the first three."""
        return sum(history[name][-3:]) / sum(history[name][:3])

    # Each head learns on its own: measured ratios beside the thresholds.
    assert fall("loss") < 0.5, history["loss"]  # 0.33
    assert fall("loss_objectness") < 0.5, history["loss_objectness"]  # 0.31 (RPN classification)
    assert fall("loss_rpn_box_reg") < 0.7, history["loss_rpn_box_reg"]  # 0.42
    assert fall("loss_classifier") < 0.5, history["loss_classifier"]  # 0.26 (box head classification)
    assert fall("loss_box_reg") < 0.8, history["loss_box_reg"]  # 0.56


def test_images_without_objects_give_finite_losses_and_gradients():
    torch.manual_seed(0)
    model = MODELS.build("faster_rcnn_r18_fpn", num_classes=2, transform={"min_size": 64, "max_size": 64}).train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model([torch.rand(3, 64, 64), torch.rand(3, 50, 70)], [empty, dict(empty)])
    assert all(math.isfinite(value.item()) for value in losses.values())
    assert losses["loss_rpn_box_reg"].item() == 0 and losses["loss_box_reg"].item() == 0
    sum(losses.values()).backward()
    assert torch.isfinite(model.rpn.head.objectness.weight.grad).all()


def test_crowd_boxes_take_no_part_in_training():
    torch.manual_seed(0)
    model = MODELS.build("faster_rcnn_r18_fpn", num_classes=2, transform={"min_size": 64, "max_size": 64}).train()
    image = torch.rand(3, 64, 64)
    crowd_only = {
        "boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]),
        "labels": torch.tensor([1]),
        "iscrowd": torch.tensor([1]),
    }
    losses = model([image], [crowd_only])
    assert losses["loss_rpn_box_reg"].item() == 0 and losses["loss_box_reg"].item() == 0
