"""Typed descriptions of the plain dicts passed between datasets, models and evaluation.

They are ``TypedDict`` s: documentation and static checking only, the values at run time are ordinary
dicts of tensors (compatible with torchvision and pycocotools). Conventions (see docs/architecture.md):

- boxes are ``xyxy`` in absolute pixels of the image they belong to, continuous coordinates
  (``x2 = x + w``, no "+1");
- labels are contiguous class indices ``1..C``; ``0`` is the background and never appears in a target;
- masks have the image's height and width.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import torch
from torch import Tensor

PER_INSTANCE_DTYPES = {"boxes": torch.float32, "labels": torch.int64, "iscrowd": torch.int64,
                       "difficult": torch.bool, "masks": torch.uint8, "area": torch.float32}
"""The per-instance entries of a Target (first dimension ``N``) and their tensor dtypes."""


class _TargetRequired(TypedDict):
    boxes: Tensor  # float32 [N, 4] xyxy pixels
    labels: Tensor  # int64 [N] in 1..C
    image_id: int | str


class Target(_TargetRequired, total=False):
    """Ground truth of one image for detection / instance segmentation.

    Required: ``boxes`` float32 ``[N, 4]`` xyxy, ``labels`` int64 ``[N]`` in ``1..C``, ``image_id``.
    Optional: ``masks`` uint8 ``[N, H, W]`` (0/1), ``iscrowd`` int64 ``[N]`` (1 = crowd region, ignored
    in training and matched as "ignore" in COCO evaluation), ``difficult`` bool ``[N]`` (VOC flag),
    ``area`` float32 ``[N]`` (COCO segment area), ``polygons`` (per instance a list of ``[K, 2]`` float32
    ``(x, y)`` rings, exterior rings only; kept so geometric augmentation can recompute exact boxes).
    ``N`` may be 0: images without objects are valid negatives.
    """

    masks: Tensor
    iscrowd: Tensor
    difficult: Tensor
    area: Tensor
    polygons: list[list[np.ndarray]]


class _SemanticTargetRequired(TypedDict):
    semantic: Tensor  # int64 [H, W]
    image_id: int | str


class SemanticTarget(_SemanticTargetRequired, total=False):
    """Ground truth of one image for semantic segmentation.

    ``semantic`` is int64 ``[H, W]`` with class indices ``0..C`` (``0`` = background) and ``255`` for
    pixels to ignore (VOC object boundaries, padding added by augmentation).
    """


class _PredictionRequired(TypedDict):
    boxes: Tensor  # float [K, 4] xyxy pixels of the input image
    scores: Tensor  # float [K]
    labels: Tensor  # int64 [K] in 1..C


class Prediction(_PredictionRequired, total=False):
    """Detections for one image, in the input image's pixel frame.

    Required: ``boxes`` ``[K, 4]`` xyxy, ``scores`` ``[K]``, ``labels`` int64 ``[K]`` in ``1..C``.
    Optional (instance models): ``masks`` float ``[K, H, W]`` probabilities at the input image's size.
    """

    masks: Tensor


IGNORE_INDEX = 255
"""Value of a semantic-mask pixel that takes no part in the loss or the metric."""


def select_instances(target: dict, keep: np.ndarray | torch.Tensor) -> dict:
    """A copy of ``target`` with only the instances where ``keep`` (bool or index array) holds.

    Works on the numpy targets of augmentation and on the tensor targets models see (``keep`` a tensor):
    every per-instance entry (boxes, labels, masks, iscrowd, difficult, area, polygons) is selected.
    """
    if isinstance(keep, torch.Tensor):
        indices = keep.nonzero().flatten() if keep.dtype == torch.bool else keep
    else:
        keep = np.asarray(keep)
        indices = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64)
    selected = dict(target)
    for key in PER_INSTANCE_DTYPES:
        if key in target:
            selected[key] = target[key][indices]
    if "polygons" in target:
        selected["polygons"] = [target["polygons"][i] for i in indices]
    return selected
