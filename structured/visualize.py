"""Drawing detections (boxes, class names, scores, mask overlays), class maps and heatmaps on RGB images (OpenCV).

Everything takes and returns ``uint8`` RGB arrays ``[H, W, 3]`` (a float tensor ``[3, H, W]`` in [0, 1]
is accepted too) and never modifies its input. Colours are fixed per class, so the same class has the
same colour in every picture; labels sit on a filled tab in the box colour, kept inside the image.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from torch import Tensor

from structured.io import atomic_output

ArrayLike = np.ndarray | Tensor

WRITTEN_SUFFIXES_HINT = ".jpg, .png, .bmp, .tif, .webp or another format OpenCV writes"
"""The image extensions ``save_image`` takes, as error messages name them."""

_PALETTE = np.array(
    [
        (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
        (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
        (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128),
    ],
    dtype=np.uint8,
)


def class_color(label: int) -> tuple[int, int, int]:
    """A fixed, distinct RGB colour for a class index."""
    return tuple(int(channel) for channel in _PALETTE[int(label) % len(_PALETTE)])


def to_rgb_uint8(image: ArrayLike) -> np.ndarray:
    """A contiguous ``uint8 [H, W, 3]`` copy of an image given as ``[H, W, C]`` / ``[H, W]`` array or a
    ``[C, H, W]`` tensor: one channel is repeated, a fourth (alpha) dropped; floats are in [0, 1], 16-bit
    integers in [0, 65535], other integers in [0, 255]."""
    if isinstance(image, Tensor):
        array = image.detach().cpu()
        if array.ndim == 3 and array.shape[0] in (1, 3, 4):
            array = array.permute(1, 2, 0)
        image = (array.float() if array.is_floating_point() else array).numpy()
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be [H, W, 3] or [3, H, W] (1 or 4 channels also), got shape {list(image.shape)}")
    image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]
    if image.dtype == np.uint16:
        image = image >> 8  # the high byte, as OpenCV reads a 16-bit file into 8 bits (read_image)
    elif np.issubdtype(image.dtype, np.floating):
        image = np.round(np.clip(image, 0, 1) * 255)
    return np.clip(image, 0, 255).astype(np.uint8, order="C")  # always a copy, never the input itself


def draw_detections(
    image: ArrayLike,
    boxes: ArrayLike,
    labels: ArrayLike | None = None,
    scores: ArrayLike | None = None,
    class_names: Sequence[str] | None = None,
    masks: ArrayLike | None = None,
    mask_threshold: float = 0.5,
    mask_alpha: float = 0.45,
    thickness: int | None = None,
    captions: bool = True,
) -> np.ndarray:
    """An annotated copy of ``image``: ``xyxy`` boxes, ``class score`` tags and mask overlays.

    ``labels`` index ``class_names`` (index 0 is background, as in the Target contract); ``masks`` are
    ``[K, H, W]`` probabilities or binary masks at the image's size. ``captions=False`` draws boxes only.
    """
    canvas = to_rgb_uint8(image)
    boxes_np = _as_numpy(boxes, "boxes").reshape(-1, 4).astype(np.float64)
    count = len(boxes_np)
    labels_np = np.ones(count, np.int64) if labels is None else _as_numpy(labels, "labels").astype(np.int64)
    scores_np = None if scores is None else _as_numpy(scores, "scores").astype(np.float64)
    if len(labels_np) != count or (scores_np is not None and len(scores_np) != count):
        raise ValueError(f"boxes, labels and scores must have one entry per detection, got {count} boxes, "
                         f"{len(labels_np)} labels, {None if scores_np is None else len(scores_np)} scores")
    if masks is not None:
        canvas = _overlay_masks(canvas, _as_numpy(masks, "masks"), labels_np, mask_threshold, mask_alpha)
    thickness = thickness or max(1, round(min(canvas.shape[:2]) / 300))
    for index in np.argsort(-scores_np if scores_np is not None else np.zeros(count), kind="stable")[::-1]:
        color = class_color(labels_np[index])
        x1, y1, x2, y2 = (round(float(value)) for value in boxes_np[index])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness, cv2.LINE_8)
        if captions:
            text = _caption(labels_np[index], None if scores_np is None else scores_np[index], class_names)
            _draw_tag(canvas, text, (x1, y1), color)
    return canvas


def _as_numpy(values: ArrayLike, name: str) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().numpy()
    try:
        return np.asarray(values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be an array or tensor, got {type(values).__name__}") from error


def _caption(label: int, score: float | None, class_names: Sequence[str] | None) -> str:
    name = class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)
    return name if score is None else f"{name} {score:.2f}"


def _draw_tag(canvas: np.ndarray, text: str, corner: tuple[int, int], color: tuple[int, int, int]) -> None:
    """A filled tab with ``text`` above the box corner (below it when there is no room above)."""
    scale = max(0.35, min(canvas.shape[:2]) / 900)
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = int(np.clip(corner[0], 0, max(canvas.shape[1] - width - 4, 0)))
    top = corner[1] - height - baseline - 4
    y = corner[1] if top < 0 else top
    cv2.rectangle(canvas, (x, y), (x + width + 4, y + height + baseline + 4), color, cv2.FILLED)
    ink = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
    cv2.putText(canvas, text, (x + 2, y + height + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, 1, cv2.LINE_AA)


def _overlay_masks(
    canvas: np.ndarray, masks: np.ndarray, labels: np.ndarray, threshold: float, alpha: float
) -> np.ndarray:
    if masks.ndim != 3 or masks.shape[1:] != canvas.shape[:2]:
        raise ValueError(f"masks must be [K, H, W] at the image size {list(canvas.shape[:2])}, "
                         f"got {list(masks.shape)}")
    blended = canvas.astype(np.float32)
    for mask, label in zip(masks, labels, strict=False):
        region = mask > threshold if np.issubdtype(mask.dtype, np.floating) else mask > 0
        blended[region] = (1 - alpha) * blended[region] + alpha * np.array(class_color(label), np.float32)
        contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(blended, contours, -1, class_color(label), 1, cv2.LINE_AA)
    return blended.round().clip(0, 255).astype(np.uint8)


def draw_class_map(image: ArrayLike, class_map: ArrayLike, alpha: float = 0.5, outlines: bool = True) -> np.ndarray:
    """A copy of ``image`` with each class of the ``[H, W]`` ``class_map`` (0 = background and 255 = ignore
    left as they are) blended in its ``class_color``, and outlined."""
    canvas = to_rgb_uint8(image)
    classes = _as_numpy(class_map, "class_map").astype(np.int64)
    if classes.shape != canvas.shape[:2]:
        raise ValueError(f"class_map must be [H, W] at the image size {list(canvas.shape[:2])}, got {list(classes.shape)}")
    blended = canvas.astype(np.float32)
    for label in np.unique(classes):
        if label in (0, 255):
            continue
        region = classes == label
        blended[region] = (1 - alpha) * blended[region] + alpha * np.array(class_color(label), np.float32)
        if outlines:
            contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(blended, contours, -1, class_color(label), 1, cv2.LINE_AA)
    return blended.round().clip(0, 255).astype(np.uint8)


def draw_heatmap(image: ArrayLike, heatmap: ArrayLike, alpha: float = 0.5) -> np.ndarray:
    """A copy of ``image`` with an ``[H, W]`` heatmap in [0, 1] (at the image's size) blended over it in the
    JET colour map (blue low, red high), ``alpha`` its weight."""
    canvas = to_rgb_uint8(image)
    values = _as_numpy(heatmap, "heatmap").astype(np.float32)
    if values.shape != canvas.shape[:2]:
        raise ValueError(f"heatmap must be [H, W] at the image size {list(canvas.shape[:2])}, got {list(values.shape)}")
    levels = (np.clip(values, 0, 1) * 255).round().astype(np.uint8)
    colours = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB).astype(np.float32)
    blended = (1 - alpha) * canvas.astype(np.float32) + alpha * colours
    return blended.round().clip(0, 255).astype(np.uint8)


def side_by_side(images: Sequence[np.ndarray], titles: Sequence[str], gap: int = 8) -> np.ndarray:
    """Images of one height placed left to right on a white background, each with a title above it."""
    if len(images) != len(titles) or not images:
        raise ValueError("side_by_side needs one title per image and at least one image")
    height = max(image.shape[0] for image in images)
    title_height = 32
    width = sum(image.shape[1] for image in images) + gap * (len(images) + 1)
    sheet = np.full((height + title_height + gap, width, 3), 255, np.uint8)
    x = gap
    for image, title in zip(images, titles, strict=True):
        sheet[title_height : title_height + image.shape[0], x : x + image.shape[1]] = image
        cv2.putText(sheet, title, (x, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (30, 30, 30), 1, cv2.LINE_AA)
        x += image.shape[1] + gap
    return sheet


def can_write_image(path: str | os.PathLike[str]) -> bool:
    """Whether ``save_image`` writes ``path``: its extension names a format this OpenCV build encodes."""
    return bool(Path(path).suffix) and cv2.haveImageWriter(str(path))


def save_image(image: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write an RGB ``uint8`` image atomically, in the format its extension names (``can_write_image``).

    A path that cannot name an image (a folder, no extension or one OpenCV does not write) or an image
    OpenCV refuses raises ``ValueError``, a failed write ``OSError`` carrying the path; each in one sentence
    naming the path.
    """
    _check_image_path(Path(path))
    try:
        with atomic_output(path) as temporary:
            if not cv2.imwrite(str(temporary), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
                raise OSError(errno.EIO, "OpenCV could not write the image", str(path))
    except cv2.error as error:
        raise ValueError(f"cannot write image {path}: {' '.join(error.err.split())}") from None
    return Path(path)


def _check_image_path(path: Path) -> None:
    expected = f"expected a file name ending in {WRITTEN_SUFFIXES_HINT}"
    if path.is_dir():
        raise ValueError(f"cannot write image {path}: it is a folder; {expected}")
    if not path.suffix:
        raise ValueError(f"cannot write image {path}: the name has no extension; {expected}")
    if not can_write_image(path):
        raise ValueError(f"cannot write image {path}: OpenCV writes no format of extension {path.suffix}; {expected}")
