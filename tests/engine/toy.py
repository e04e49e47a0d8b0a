"""A tiny detector obeying the Detector contract, registered only while engine tests run.

It predicts one box per image (normalised centre / size from a small conv net) and one class; the losses
are an L1 box loss against the image's first object and a cross-entropy over ``0..C``. Small enough
that a training step takes milliseconds, with a BatchNorm so that buffers are part of the state.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from structured.registry import MODELS

TOY_NAME = "engine_test_toy_detector"


class ToyDetector(nn.Module):
    """One box and one class per image; ``forward(images, targets)`` as in docs/architecture.md."""

    def __init__(self, num_classes: int, width: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, 4 + num_classes + 1)

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        """Losses ``loss_box`` and ``loss_cls`` with targets, else one Prediction per image."""
        pooled = torch.cat([self.features(image[None]) for image in images])
        outputs = self.head(self.dropout(pooled))
        boxes = torch.sigmoid(outputs[:, :4])
        logits = outputs[:, 4:]
        if targets is not None:
            return self._losses(images, boxes, logits, targets)
        return self._predictions(images, boxes, logits)

    def _losses(self, images, boxes, logits, targets) -> dict[str, torch.Tensor]:
        wanted_boxes, wanted_labels = [], []
        for image, target in zip(images, targets, strict=True):
            height, width = image.shape[-2:]
            if len(target["boxes"]):
                x1, y1, x2, y2 = target["boxes"][0]
                wanted_boxes.append(torch.stack([(x1 + x2) / 2 / width, (y1 + y2) / 2 / height,
                                                 (x2 - x1) / width, (y2 - y1) / height]))
                wanted_labels.append(target["labels"][0])
            else:
                wanted_boxes.append(torch.zeros(4, device=image.device))
                wanted_labels.append(torch.zeros((), dtype=torch.int64, device=image.device))
        return {"loss_box": functional.l1_loss(boxes, torch.stack(wanted_boxes).to(boxes.dtype)),
                "loss_cls": functional.cross_entropy(logits, torch.stack(wanted_labels))}

    def _predictions(self, images, boxes, logits) -> list[dict[str, torch.Tensor]]:
        predictions = []
        probabilities = logits.softmax(dim=1)[:, 1:]
        for image, box, scores in zip(images, boxes, probabilities, strict=True):
            height, width = image.shape[-2:]
            cx, cy, w, h = box * torch.tensor([width, height, width, height], dtype=box.dtype, device=box.device)
            xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]).clamp(min=0)[None]
            score, label = scores.max(dim=0)
            predictions.append({"boxes": xyxy, "scores": score[None], "labels": (label + 1)[None]})
        return predictions


def build_toy_detector(num_classes: int = 5, width: int = 8, dropout: float = 0.1) -> ToyDetector:
    """Builder registered under ``TOY_NAME``."""
    return ToyDetector(num_classes, width, dropout)


def register_toy() -> None:
    """Register the toy in ``MODELS`` (for subprocesses; in-process tests use the ``toy_model`` fixture)."""
    if TOY_NAME not in MODELS:
        MODELS.register(TOY_NAME)(build_toy_detector)
