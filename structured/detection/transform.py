"""The image transform inside a detector: normalise, resize, pad into a batch; map boxes back.

``DetectionTransform`` takes the contract's input — a list of float ``[3, H, W]`` images in [0, 1] of any
sizes, and optional targets — and returns an ``ImageBatch``: one zero-padded ``[B, 3, H', W']`` tensor
whose sides are multiples of ``size_divisible``, the size of each resized image inside it, and the
targets with boxes scaled (and instance masks resized, nearest neighbour) to the resized frame. ``rescale_predictions`` maps predicted boxes from the
resized frame back to each input image.

Resizing follows torchvision's ``GeneralizedRCNNTransform`` exactly, so that checkpoints trained with it
see the same pixels: normalise first, then scale by ``min(min_size / short_side, max_size / long_side)``
with output sides ``floor(side * scale)`` and bilinear interpolation (``align_corners=False``); boxes
scale by ``new_side / old_side`` per axis. In training mode ``min_size`` may list several sizes, one
drawn at random per image (``torch`` RNG); in eval mode the last one is used.

``FixedSizeTransform`` is the one-stage detectors' variant (SSD): every image is resized to the same
``size x size`` whatever its aspect ratio (torchvision's ``fixed_size``, bilinear), so no padding is needed.

``TransformSettings`` and ``FixedSizeTransformSettings`` are the transform's part of a detector recipe
(``model.transform``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from structured.detection.parts import check_counts
from structured.types import Prediction, Target

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TransformSettings:
    """The image transform's settings: a recipe's ``model.transform`` section. Defaults are torchvision's.

    Attributes:
        min_size: target short side; a list gives training-time choices (eval uses the last). At least 1.
        max_size: bound on the long side after resizing, at least 1.
        image_mean, image_std: per-channel normalisation of the [0, 1] RGB input (ImageNet's by default).
    """

    min_size: int | Sequence[int] = 800
    max_size: int = 1333
    image_mean: Sequence[float] = IMAGENET_MEAN
    image_std: Sequence[float] = IMAGENET_STD

    def __post_init__(self) -> None:
        sizes = [self.min_size] if isinstance(self.min_size, (int, float)) else list(self.min_size)
        if not sizes or min(sizes) < 1:
            raise ValueError(f"min_size must be >= 1 (or a non-empty list of sizes >= 1), got {self.min_size!r}")
        check_counts(self, "max_size")


@dataclass(frozen=True)
class FixedSizeTransformSettings:
    """A fixed-size transform's settings (SSD's ``model.transform``): the side every image is resized to.

    Attributes:
        size: output height and width in pixels (300 for SSD300, 512 for SSD512, 320 for SSDlite320), at least 1.
        image_mean, image_std: per-channel normalisation of the [0, 1] RGB input (ImageNet's by default).
    """

    size: int = 300
    image_mean: Sequence[float] = IMAGENET_MEAN
    image_std: Sequence[float] = IMAGENET_STD

    def __post_init__(self) -> None:
        check_counts(self, "size")


class ImageBatch(NamedTuple):
    """Padded batch ``[B, 3, H, W]`` and the ``(height, width)`` of each resized image inside it."""

    tensors: Tensor
    image_sizes: list[tuple[int, int]]


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """Output ``(height, width)`` when the short side goes to ``min_size`` unless the long side exceeds ``max_size``.

    Each side is at least one pixel: a 4 x 900 strip under ``max_size`` 192 would otherwise get no rows
    (torchvision's transform fails there).

    While tracing (``structured.export``) the sides are traced tensors and the same float64 arithmetic runs as
    tensor operations, so the exported graph computes the size of each input.
    """
    if torch.jit.is_tracing():
        sides = torch.stack((torch.as_tensor(height), torch.as_tensor(width))).double()
        # no 0-dim tensors: the ONNX exporter computes those in float32, which floors some sides one pixel lower
        bounds = torch.tensor([min_size, max_size], dtype=torch.float64)
        scale = (bounds / torch.stack((sides.min(), sides.max()))).min(dim=0, keepdim=True).values
        new_height, new_width = (sides * scale).floor().long().clamp(min=1).unbind()
        return new_height, new_width
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))


def scale_boxes(boxes: Tensor, old_size: tuple[int, int], new_size: tuple[int, int]) -> Tensor:
    """``xyxy`` boxes ``[N, 4]`` of an image of ``old_size`` expressed in the same image at ``new_size``."""
    new = _size_tensor(new_size, boxes.device)
    old = _size_tensor(old_size, boxes.device)
    ratio_y, ratio_x = (new / old).unbind()
    return boxes * torch.stack((ratio_x, ratio_y, ratio_x, ratio_y))


def _size_tensor(size: tuple[int, int], device: torch.device) -> Tensor:
    """``(height, width)`` as float32 ``[2]``; sides that are traced tensors stay in the traced graph."""
    return torch.stack([torch.as_tensor(side, device=device) for side in size]).to(torch.float32)


def resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Instance masks ``[N, H, W]`` resized to ``size`` with nearest-neighbour sampling (same dtype)."""
    if masks.shape[-2:] == size:
        return masks
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size))
    resized = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0]
    return resized.to(masks.dtype)


def check_image(image: Tensor, index: int) -> None:
    """Raise naming image ``index`` unless it is a non-empty floating-point ``[3, H, W]`` tensor."""
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
        shape = list(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image {index} must be a float tensor [3, H, W], got {shape}")
    if not image.is_floating_point():
        raise TypeError(f"image {index} must be floating point with values in [0, 1], got {image.dtype}")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"image {index} is empty: shape {list(image.shape)}")


def _check_target(target: Target, index: int) -> None:
    for key in ("boxes", "labels"):
        if key not in target:
            raise ValueError(f"target {index} has no {key!r}; expected keys 'boxes' [N, 4] and 'labels' [N]")
    boxes, labels = target["boxes"], target["labels"]
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or not boxes.is_floating_point():
        raise ValueError(
            f"target {index} 'boxes' must be float [N, 4], got {boxes.dtype} {list(boxes.shape)}"
        )
    if labels.dtype != torch.int64 or labels.shape != boxes.shape[:1]:
        raise ValueError(
            f"target {index} 'labels' must be int64 [{boxes.shape[0]}], got {labels.dtype} {list(labels.shape)}"
        )
    degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bool(degenerate.any()):
        first = int(torch.where(degenerate)[0][0])
        raise ValueError(
            f"target {index} box {first} {boxes[first].tolist()} has no area; boxes must be xyxy with x2 > x1, y2 > y1"
        )


def pad_batch(tensors: Sequence[Tensor], size_divisible: int, fill: float = 0) -> Tensor:
    """``[B, ..., H, W]``: each ``[..., h, w]`` tensor at the top left, padded with ``fill`` on the bottom and
    right to the largest height and width, rounded up to multiples of ``size_divisible``."""
    height = padded_side(max(tensor.shape[-2] for tensor in tensors), size_divisible)
    width = padded_side(max(tensor.shape[-1] for tensor in tensors), size_divisible)
    if len(tensors) == 1:  # one pad, which a traced graph (structured.export) computes from the input's size
        return F.pad(tensors[0], (0, width - tensors[0].shape[-1], 0, height - tensors[0].shape[-2]), value=fill)[None]
    batch = tensors[0].new_full((len(tensors), *tensors[0].shape[:-2], height, width), fill)
    for slot, tensor in zip(batch, tensors, strict=True):
        slot[..., : tensor.shape[-2], : tensor.shape[-1]].copy_(tensor)
    return batch


def padded_side(side: int, size_divisible: int) -> int:
    """``side`` rounded up to a multiple of ``size_divisible`` (integer arithmetic, so a traced side stays traced)."""
    return (side + size_divisible - 1) // size_divisible * size_divisible


class DetectionTransform(nn.Module):
    """Normalise, resize and batch images (and their targets) for a detector.

    Args:
        min_size: target short side; a sequence gives training-time choices (eval uses the last).
        max_size: bound on the long side after resizing.
        image_mean, image_std: per-channel normalisation of the [0, 1] RGB input.
        size_divisible: the padded batch sides are multiples of this.
    """

    def __init__(
        self,
        min_size: int | Sequence[int],
        max_size: int,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        size_divisible: int = 32,
    ) -> None:
        super().__init__()
        self.min_sizes = (
            (int(min_size),) if isinstance(min_size, (int, float)) else tuple(int(s) for s in min_size)
        )
        if not self.min_sizes or min(self.min_sizes) <= 0 or max_size <= 0:
            raise ValueError(f"min_size and max_size must be positive, got {min_size} and {max_size}")
        if len(image_mean) != 3 or len(image_std) != 3:
            raise ValueError(
                f"image_mean and image_std need 3 values (RGB), got {image_mean} and {image_std}"
            )
        self.max_size = int(max_size)
        self.size_divisible = int(size_divisible)
        self.register_buffer(
            "mean", torch.tensor(image_mean, dtype=torch.float32).view(3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(image_std, dtype=torch.float32).view(3, 1, 1), persistent=False
        )

    def extra_repr(self) -> str:
        return f"min_size={self.min_sizes}, max_size={self.max_size}, size_divisible={self.size_divisible}"

    def _choose_min_size(self) -> int:
        if self.training and len(self.min_sizes) > 1:
            return self.min_sizes[int(torch.randint(len(self.min_sizes), ()).item())]
        return self.min_sizes[-1]

    def resize(self, image: Tensor) -> Tensor:
        """Normalised ``[3, H, W]`` image resized by the min/max side rule."""
        size = resized_size(image.shape[-2], image.shape[-1], self._choose_min_size(), self.max_size)
        return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]

    def batch(self, images: list[Tensor]) -> Tensor:
        """Zero-padded ``[B, 3, H, W]`` batch with sides rounded up to ``size_divisible``."""
        return pad_batch(images, self.size_divisible)

    def forward(
        self, images: list[Tensor], targets: list[Target] | None = None
    ) -> tuple[ImageBatch, list[Target] | None]:
        """Batch for the network, and targets with boxes in the resized frame (copies; inputs untouched)."""
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise ValueError("images must be a non-empty list of float tensors [3, H, W]")
        if targets is not None and len(targets) != len(images):
            raise ValueError(f"got {len(images)} images but {len(targets)} targets")
        resized = []
        for index, image in enumerate(images):
            check_image(image, index)
            resized.append(self.resize((image - self.mean.to(image)) / self.std.to(image)))
        sizes = [(image.shape[-2], image.shape[-1]) for image in resized]
        if targets is not None:
            targets = [
                self._resize_target(t, i, images[i].shape[-2:], sizes[i]) for i, t in enumerate(targets)
            ]
        return ImageBatch(self.batch(resized), sizes), targets

    @staticmethod
    def _resize_target(
        target: Target, index: int, old_size: Sequence[int], new_size: tuple[int, int]
    ) -> Target:
        _check_target(target, index)
        resized = dict(target)
        resized["boxes"] = scale_boxes(target["boxes"], (int(old_size[0]), int(old_size[1])), new_size)
        if "masks" in target:
            expected = [target["boxes"].shape[0], int(old_size[0]), int(old_size[1])]
            if list(target["masks"].shape) != expected:
                raise ValueError(f"target {index} 'masks' must be [N, H, W] = {expected} (one per box, the image's "
                                 f"size), got {list(target['masks'].shape)}")
            resized["masks"] = resize_masks(target["masks"], new_size)
        return resized

    @staticmethod
    def rescale_predictions(
        predictions: list[Prediction],
        image_sizes: list[tuple[int, int]],
        original_sizes: list[tuple[int, int]],
    ) -> list[Prediction]:
        """Predictions with boxes mapped from the resized frame back to each original image."""
        for prediction, size, original in zip(predictions, image_sizes, original_sizes, strict=True):
            prediction["boxes"] = scale_boxes(prediction["boxes"], size, original)
        return predictions


class FixedSizeTransform(DetectionTransform):
    """Normalise and resize every image to ``size x size`` (aspect ratio not kept), then stack them.

    Boxes scale per axis into the resized frame and back, as in ``DetectionTransform``.
    """

    def __init__(self, size: int, image_mean: Sequence[float], image_std: Sequence[float]) -> None:
        super().__init__(size, size, image_mean, image_std, size_divisible=1)
        self.size = int(size)

    def extra_repr(self) -> str:
        return f"size={self.size}"

    def resize(self, image: Tensor) -> Tensor:
        """Normalised ``[3, H, W]`` image resized to ``[3, size, size]`` (bilinear)."""
        return F.interpolate(image[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
