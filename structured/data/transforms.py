"""Seeded augmentation applied consistently to the image, boxes, instance masks, polygons and semantic masks.

Every transform is a callable ``transform(image, target, rng) -> (image, target)`` on numpy data:
``image`` uint8 ``[H, W, 3]`` RGB (float32 after ``Normalize``), ``target`` a dict with ``boxes`` float32
``[N, 4]`` xyxy, ``labels`` int64 ``[N]`` and optionally ``masks`` uint8 ``[N, H, W]``, ``polygons`` (per
instance a list of ``[K, 2]`` rings; ``[]`` when unknown), ``iscrowd``, ``difficult`` and ``semantic`` uint8
``[H, W]`` (255 = ignore). ``rng`` is a ``numpy.random.Generator``: the same generator state gives the same
result. Datasets pass a generator seeded by ``(seed, epoch, index)``.

All geometric transforms (resize, crop, flip, rotation, zoom-out) are affine maps of continuous pixel
coordinates and go through ``warp_sample``, which after the map recomputes each instance's box from the
most exact geometry it has: its mask (tight box of the warped mask, so box and mask always agree), else its
polygons (clipped to the image with shapely), else the transformed box corners clipped to the image. An instance is dropped when less than
``min_visibility`` of its area remains in the image, when its box is narrower or lower than ``min_size``
pixels, or when its mask becomes empty; no transform returns an invalid box. Polygon holes are not
represented (rings are exterior rings).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import shapely
import torch
from shapely.geometry import MultiPolygon, Polygon, box

from structured.boxes.iou import box_iou
from structured.data.base import Transform
from structured.data.geometry import masks_to_boxes, rings_to_box
from structured.types import IGNORE_INDEX, select_instances

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MEAN_PIXEL = (124, 116, 104)

Sample = tuple[np.ndarray, dict[str, Any]]


class Compose:
    """Apply ``transforms`` in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, target: dict, rng: np.random.Generator) -> Sample:
        for transform in self.transforms:
            image, target = transform(image, target, rng)
        return image, target

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


def _pixel_matrix(matrix: np.ndarray) -> np.ndarray:
    """Continuous-coordinate affine map -> OpenCV's pixel-index map (pixel centres at +0.5)."""
    linear, shift = matrix[:, :2], matrix[:, 2]
    return np.concatenate((linear, (shift + linear @ [0.5, 0.5] - 0.5)[:, None]), axis=1)


def _is_pure_scale(matrix: np.ndarray) -> bool:
    return matrix[0, 1] == 0 and matrix[1, 0] == 0 and matrix[0, 2] == 0 and matrix[1, 2] == 0 and (matrix[:, :2] > 0).all()


def warp_array(array: np.ndarray, matrix: np.ndarray, out_size: tuple[int, int], nearest: bool,
               fill: float | Sequence[float] = 0) -> np.ndarray:
    """Resample ``[H, W]`` / ``[H, W, C]`` ``array`` through the continuous affine ``matrix`` (2x3)."""
    height, width = out_size
    if _is_pure_scale(matrix):
        shrinking = matrix[0, 0] < 1 or matrix[1, 1] < 1
        interpolation = cv2.INTER_NEAREST_EXACT if nearest else (cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        return cv2.resize(array, (width, height), interpolation=interpolation)
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    if isinstance(fill, Sequence) and array.ndim == 2:
        fill = fill[0]
    return cv2.warpAffine(array, _pixel_matrix(matrix), (width, height), flags=interpolation,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


def _apply_to_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def _polygon_geometry(rings: Sequence[np.ndarray]):
    parts = [shapely.make_valid(Polygon(ring)) for ring in rings if len(ring) >= 3]
    return shapely.unary_union(parts) if parts else Polygon()


def _geometry_rings(geometry) -> list[np.ndarray]:
    parts = getattr(geometry, "geoms", [geometry])
    polygons = []
    for part in parts:
        if isinstance(part, MultiPolygon):
            polygons.extend(part.geoms)
        elif isinstance(part, Polygon) and not part.is_empty:
            polygons.append(part)
    return [np.asarray(p.exterior.coords[:-1], dtype=np.float32) for p in polygons if p.area > 0]


def _warp_polygons(rings: Sequence[np.ndarray], matrix: np.ndarray, frame: Polygon) -> tuple[list[np.ndarray], float]:
    """Transformed rings clipped to ``frame`` and the fraction of their area left inside it."""
    geometry = _polygon_geometry([_apply_to_points(ring, matrix) for ring in rings])
    if geometry.area <= 0:
        return [], 0.0
    clipped = geometry.intersection(frame)
    return _geometry_rings(clipped), clipped.area / geometry.area


def _warp_box_corners(boxes: np.ndarray, matrix: np.ndarray, out_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Enclosing boxes of the transformed corners, clipped, and the visible fraction of their area."""
    x1, y1, x2, y2 = boxes.T
    corners = np.stack((np.stack((x1, y1), 1), np.stack((x2, y1), 1), np.stack((x2, y2), 1), np.stack((x1, y2), 1)), 1)
    moved = corners @ matrix[:, :2].T + matrix[:, 2]  # [N, 4 corners, 2]
    enclosing = np.concatenate((moved.min(axis=1), moved.max(axis=1)), axis=1).astype(np.float32)
    height, width = out_size
    clipped = np.clip(enclosing, 0, [width, height, width, height]).astype(np.float32)
    return clipped, _area(clipped) / np.maximum(_area(enclosing), 1e-12)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def _warp_masks(masks: np.ndarray, matrix: np.ndarray, out_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Warped masks and the fraction of each mask's (scaled) area still inside the image."""
    if len(masks) == 0:
        return np.zeros((0, *out_size), dtype=np.uint8), np.zeros(0)
    before = masks.sum(axis=(1, 2)) * abs(np.linalg.det(matrix[:, :2]))
    warped = np.stack([warp_array(mask, matrix, out_size, nearest=True) for mask in masks])
    after = warped.sum(axis=(1, 2))
    return warped, np.minimum(after / np.maximum(before, 1e-12), 1.0)


def _warp_instances(target: dict, matrix: np.ndarray, out_size: tuple[int, int],
                    min_visibility: float, min_size: float) -> dict:
    """Boxes from the most exact geometry each instance has: mask, else polygons, else box corners."""
    boxes, visibility = _warp_box_corners(target["boxes"], matrix, out_size)
    warped = dict(target)
    if "polygons" in target:
        frame = box(0, 0, out_size[1], out_size[0])
        warped["polygons"] = []
        for index, rings in enumerate(target["polygons"]):
            if rings:
                new_rings, visibility[index] = _warp_polygons(rings, matrix, frame)
                boxes[index] = rings_to_box(new_rings)
            warped["polygons"].append(new_rings if rings else [])
    keep = np.ones(len(boxes), dtype=bool)
    if "masks" in target:
        warped["masks"], mask_visibility = _warp_masks(target["masks"], matrix, out_size)
        has_mask = target["masks"].any(axis=(1, 2))
        boxes[has_mask] = masks_to_boxes(warped["masks"][has_mask])
        visibility = np.where(has_mask, mask_visibility, visibility)
        keep = warped["masks"].any(axis=(1, 2)) | ~has_mask
    warped["boxes"] = boxes
    sides = np.stack((boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]), axis=1)
    keep &= (visibility >= min_visibility) & (sides >= min_size).all(axis=1)
    return select_instances(warped, keep)


def warp_sample(image: np.ndarray, target: dict, matrix: np.ndarray, out_size: tuple[int, int],
                min_visibility: float = 0.0, min_size: float = 1.0, fill: Sequence[float] = MEAN_PIXEL) -> Sample:
    """Map the sample through the continuous 2x3 affine ``matrix`` onto an image of ``out_size`` ``(H, W)``.

    The image is resampled bilinearly (area averaging when shrinking), padding with ``fill``; masks and
    the semantic map by nearest neighbour (semantic padding = 255, ignore). Instance handling: see the
    module docstring.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    out_size = (int(out_size[0]), int(out_size[1]))
    warped_image = warp_array(image, matrix, out_size, nearest=False, fill=tuple(float(v) for v in fill))
    warped = dict(target)
    if "semantic" in target:
        warped["semantic"] = warp_array(target["semantic"], matrix, out_size, nearest=True, fill=IGNORE_INDEX)
    if "boxes" in target:
        warped = _warp_instances(warped, matrix, out_size, min_visibility, min_size)
    return warped_image, warped


def _translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])


def _scale_sample(image: np.ndarray, target: dict, scale: float) -> Sample:
    """Resize the sample by ``scale`` (each side rounded, at least one pixel)."""
    height, width = image.shape[:2]
    new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
    matrix = np.array([[new_width / width, 0.0, 0.0], [0.0, new_height / height, 0.0]])
    return warp_sample(image, target, matrix, (new_height, new_width))


class Resize:
    """Scale so the shorter side is ``min_size`` (one drawn at random when a sequence: multi-scale
    training) and the longer side at most ``max_size``."""

    def __init__(self, min_size: int | Sequence[int], max_size: int | None = None) -> None:
        self.min_sizes = [min_size] if isinstance(min_size, int) else list(min_size)
        if not self.min_sizes or min(self.min_sizes) < 1:
            raise ValueError(f"min_size must be a positive int or a non-empty sequence of them, got {min_size}")
        self.max_size = max_size

    def __call__(self, image: np.ndarray, target: dict, rng: np.random.Generator) -> Sample:
        height, width = image.shape[:2]
        min_size = self.min_sizes[int(rng.integers(len(self.min_sizes)))]
        scale = min_size / min(height, width)
        if self.max_size is not None and max(height, width) * scale > self.max_size:
            scale = self.max_size / max(height, width)
        return _scale_sample(image, target, scale)

    def __repr__(self) -> str:
        return f"Resize(min_size={self.min_sizes}, max_size={self.max_size})"


class RandomScaleJitter:
    """Resize by a factor drawn uniformly from ``scale_range`` (large-scale jitter when followed by a crop)."""

    def __init__(self, scale_range: tuple[float, float] = (0.5, 1.5)) -> None:
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range = scale_range

    def __call__(self, image: np.ndarray, target: dict, rng: np.random.Generator) -> Sample:
        return _scale_sample(image, target, rng.uniform(*self.scale_range))


class _RandomFlip:
    """Apply the mirror ``_matrix(height, width)`` with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def _matrix(self, height: int, width: int) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, image: np.ndarray, target: dict, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return image, target
        height, width = image.shape[:2]
        return warp_sample(image, target, self._matrix(height, width), (height, width))


class RandomHorizontalFlip(_RandomFlip):
    """Mirror left-right with probability ``p``."""

    def _matrix(self, height: int, width: int) -> np.ndarray:
        return np.array([[-1.0, 0.0, width], [0.0, 1.0, 0.0]])


class RandomVerticalFlip(_RandomFlip):
    """Mirror top-bottom with probability ``p``."""

    def _matrix(self, height: int, width: int) -> np.ndarray:
        return np.array([[1.0, 0.0, 0.0], [0.0, -1.0, height]])


class RandomCrop:
    """Crop a ``size`` ``(H, W)`` window at a random position (the whole side when the image is smaller)."""

    def __init__(self, size: tuple[int, int], min_visibility: float = 0.3) -> None:
        self.size = size
        self.min_visibility = min_visibility

    def __call__(self, image: np.ndarray, target: dict, rng: np.random.Generator) -> Sample:
        height, width = image.shape[:2]
        crop_height, crop_width = min(self.size[0], height), min(self.size[1], width)
        top = int(rng.integers(0, height - crop_height + 1))
        left = int(rng.integers(0, width - crop_width + 1))
        return warp_sample(image, target, _translation(-left, -top), (crop_height, crop_width), self.min_visibility)


class RandomIoUCrop:
    """SSD's crop: a window whose IoU with at least one box reaches a threshold drawn from ``min_ious``.

    ``None`` in ``min_ious`` means "keep the image as is" (as do images without boxes). Windows have area ``scale_range`` of the image and
    aspect ratio in ``aspect_range``; boxes whose centre falls outside the window are dropped (SSD rule),
    then the ``min_visibility`` rule applies. After ``trials`` failures the image is returned unchanged.
    """

    def __init__(self, min_ious: Sequence[float | None] = (None, 0.1, 0.3, 0.5, 0.7, 0.9),
                 scale_range: tuple[float, float] = (0.3, 1.0), aspect_range: tuple[float, float] = (0.5, 2.0),
                 trials: int = 50, min_visibility: float = 0.0) -> None:
        self.min_ious = list(min_ious)
        self.scale_range = scale_range
        self.aspect_range = aspect_range
        self.trials = trials
        self.min_visibility = min_visibility

    def _windows(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """``[trials, 4]`` candidate windows (xyxy, integer pixels)."""
        scale = np.sqrt(rng.uniform(*self.scale_range, size=self.trials))
        aspect = np.exp(rng.uniform(np.log(self.aspect_range[0]), np.log(self.aspect_range[1]), size=self.trials))
        crop_width = np.clip(np.round(width * scale * np.sqrt(aspect)), 1, width)
        crop_height = np.clip(np.round(height * scale / np.sqrt(aspect)), 1, height)
        left = np.floor(rng.random(self.trials) * (width - crop_width + 1))
        top = np.floor(rng.random(self.trials) * (height - crop_height + 1))
        return np.stack((left, top, left + crop_width, top + crop_height), axis=1).astype(np.float32)

    def __call__(self, image: np.ndarray, target: dict, rng: np.random.Generator) -> Sample:
        min_iou = self.min_ious[int(rng.integers(len(self.min_ious)))]
        boxes = target.get("boxes")
        if min_iou is None or boxes is None or len(boxes) == 0:
            return image, target
        windows = self._windows(*image.shape[:2], rng)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = ((centres[None] >= windows[:, None, :2]) & (centres[None] < windows[:, None, 2:])).all(axis=2)
        overlaps = box_iou(torch.from_numpy(windows), torch.from_numpy(boxes)).numpy()  # [trials, N]
        accepted = np.flatnonzero(inside.any(axis=1) & (overlaps.max(axis=1) >= min_iou))
        if len(accepted) == 0:
            return image, target
        choice = accepted[0]
        left, top, right, bottom = (int(v) for v in windows[choice])
        return warp_sample(image, select_instances(target, inside[choice]), _translation(-left, -top),
                           (bottom - top, right - left), self.min_visibility)


class RandomRotation:
    """Rotate about the image centre by an angle drawn uniformly from ``degrees`` (``(-d, d)`` for a number).

    ``expand=True`` enlarges the canvas to hold the whole rotated image; otherwise the size is kept and the
    corners are filled with ``fill``.
    """

    def __init__(self, degrees: float | tuple[float, float] = 180.0, expand: bool = False,
                 fill: Sequence[float] = MEAN_PIXEL, min_visibility: float = 0.3, p: float = 1.0) -> None:
        self.degrees = (-degrees, degrees) if isinstance(degrees, (int, float)) else tuple(degrees)
        self.expand = expand
        self.fill = fill
        self.min_visibility = min_visibility
        self.p = p

    def __call__(self, image: np.ndarray, target: dict, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return image, target
        angle = math.radians(rng.uniform(*self.degrees))
        height, width = image.shape[:2]
        cos, sin = math.cos(angle), math.sin(angle)
        out_height, out_width = height, width
        if self.expand:
            out_width = math.ceil(abs(width * cos) + abs(height * sin) - 1e-6)
            out_height = math.ceil(abs(width * sin) + abs(height * cos) - 1e-6)
        rotation = np.array([[cos, sin], [-sin, cos]])  # counter-clockwise on screen (y down)
        shift = np.array([out_width / 2, out_height / 2]) - rotation @ [width / 2, height / 2]
        matrix = np.concatenate((rotation, shift[:, None]), axis=1)
        return warp_sample(image, target, matrix, (out_height, out_width), self.min_visibility, fill=self.fill)


class RandomZoomOut:
    """SSD's expand: with probability ``p`` place the image on a canvas ``1..max_scale`` times larger."""

    def __init__(self, max_scale: float = 4.0, p: float = 0.5, fill: Sequence[float] = MEAN_PIXEL) -> None:
        if max_scale < 1:
            raise ValueError(f"max_scale must be >= 1, got {max_scale}")
        self.max_scale = max_scale
        self.p = p
        self.fill = fill

    def __call__(self, image: np.ndarray, target: dict, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return image, target
        height, width = image.shape[:2]
        ratio = rng.uniform(1.0, self.max_scale)
        out_height, out_width = round(height * ratio), round(width * ratio)
        left = int(rng.integers(0, out_width - width + 1))
        top = int(rng.integers(0, out_height - height + 1))
        return warp_sample(image, target, _translation(left, top), (out_height, out_width), fill=self.fill)


class PhotometricDistort:
    """SSD-style colour jitter: brightness, contrast, saturation and hue, each with probability ``p``."""

    def __init__(self, brightness: float = 32.0, contrast: tuple[float, float] = (0.5, 1.5),
                 saturation: tuple[float, float] = (0.5, 1.5), hue: float = 18.0, p: float = 0.5) -> None:
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue
        self.p = p

    def __call__(self, image: np.ndarray, target: dict, rng: np.random.Generator) -> Sample:
        pixels = image.astype(np.float32)
        if rng.random() < self.p:
            pixels += rng.uniform(-self.brightness, self.brightness)
        if rng.random() < self.p:
            pixels *= rng.uniform(*self.contrast)
        pixels = np.clip(pixels, 0, 255)
        saturate, rotate_hue = rng.random() < self.p, rng.random() < self.p
        if saturate or rotate_hue:
            hsv = cv2.cvtColor(pixels / 255.0, cv2.COLOR_RGB2HSV)  # H in degrees [0, 360)
            if saturate:
                hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(*self.saturation), 0, 1)
            if rotate_hue:
                hsv[..., 0] = (hsv[..., 0] + rng.uniform(-self.hue, self.hue)) % 360
            pixels = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
        return np.clip(pixels + 0.5, 0, 255).astype(np.uint8), target


class Normalize:
    """uint8 image -> float32 ``(image / 255 - mean) / std`` (for models that do not normalise inside)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __call__(self, image: np.ndarray, target: dict, rng: np.random.Generator) -> Sample:
        return (image.astype(np.float32) / 255.0 - self.mean) / self.std, target


def training_transforms(min_size: int | Sequence[int] = 288, max_size: int | None = None) -> Compose:
    """A typical detection training pipeline: photometric distortion, zoom-out, IoU crop, flip, resize."""
    return Compose([PhotometricDistort(), RandomZoomOut(max_scale=2.0), RandomIoUCrop(),
                    RandomHorizontalFlip(), Resize(min_size, max_size)])


def semantic_training_transforms(min_size: int = 512, max_size: int | None = None) -> Compose:
    """A semantic-segmentation training pipeline: photometric distortion, flip, resize (shorter side
    ``min_size``, longer at most ``max_size``), scale jitter 0.75-1.25 and a ``min_size`` square crop; the
    class map follows by nearest neighbour, uncovered pixels 255 (ignore)."""
    return Compose([PhotometricDistort(), RandomHorizontalFlip(), Resize(min_size, max_size),
                    RandomScaleJitter((0.75, 1.25)), RandomCrop((min_size, min_size))])


def ssd_transforms() -> Compose:
    """The SSD paper's augmentation (Liu et al. 2016, section 3.6): photometric distortion, zoom-out up to 4x
    on a mean-pixel canvas, a crop whose IoU with some box reaches one of {none, 0.1, 0.3, 0.5, 0.7, 0.9},
    horizontal flip. No resize: SSD models resize to their fixed input size themselves."""
    return Compose([PhotometricDistort(), RandomZoomOut(max_scale=4.0), RandomIoUCrop(), RandomHorizontalFlip()])
