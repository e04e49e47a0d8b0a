"""Deterministic synthetic shapes data: in-memory samples and datasets written in COCO, VOC and PNG form.

Each image shows coloured shapes (classes: circle, rectangle, triangle, ellipse, star) on a low-saturation
textured, noisy background with unannotated clutter lines. Objects range from ``min_object_size`` (8 px)
to half the image, may touch or cross the border and may occlude one another (each object keeps at least
``min_visible`` of its area visible). Everything follows from ``seed``: the same arguments give the same
bytes.

Ground truth per object: the visible region as polygons (shapely: the shape minus the shapes drawn above
it, clipped to the image), the instance mask = that region rasterised, and the box = tight box of the mask
(``xyxy`` pixels). Polygon bounds and box agree within 1.5 px (the rasteriser's sub-pixel rounding); masks
and the painted pixels agree up to a pixel at the boundaries.

``generate_dataset`` writes one folder readable by every loader of the package::

    root/JPEGImages/<id>.jpg                  all images (train and val)
    root/annotations/instances_<split>.json   COCO instances (polygons, RLE for some objects)
    root/Annotations/<id>.xml                 Pascal VOC boxes (1-based inclusive integer pixels;
                                              objects under 10 px marked difficult)
    root/ImageSets/Main/<split>.txt           VOC image lists
    root/SegmentationClass/<id>.png           VOC-style palette PNG of class indices (0 = background)
    root/labelmap.txt                         the class of each index, background first (semantic format)

so ``structured.data.semantic.open_semantic_dataset(root)`` reads the shapes as class maps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.ops import unary_union

from structured.data.geometry import masks_to_boxes
from structured.data.loading import write_palette_png
from structured.data.voc import write_voc_xml
from structured.io import save_json

SHAPE_CLASSES = ("circle", "rectangle", "triangle", "ellipse", "star")
FORMATS = ("coco", "voc", "semantic")
DIFFICULT_SIZE = 10
SUBPIXEL_SHIFT = 4

_PALETTE = np.array(
    [
        (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
        (145, 30, 180), (70, 240, 240), (240, 50, 230), (20, 20, 20), (250, 250, 250),
    ],
    dtype=np.float64,
)


@dataclass
class SyntheticSample:
    """One generated image and its ground truth (``N`` objects, bottom-to-top drawing order).

    ``image`` uint8 ``[H, W, 3]`` RGB; ``boxes`` float32 ``[N, 4]`` xyxy; ``labels`` int64 ``[N]`` in
    ``1..len(classes)`` (``SHAPE_CLASSES`` by default); ``masks`` uint8 ``[N, H, W]``; ``polygons`` per object a list of ``[K, 2]``
    float32 rings of the visible region (exterior rings); ``has_holes`` per object, True when the visible
    region has holes that polygons without interiors cannot describe; ``unoccluded`` float ``[N]``, the
    fraction of each object's in-image area not hidden by objects drawn above it.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    polygons: list[list[np.ndarray]]
    has_holes: list[bool]
    unoccluded: np.ndarray


def _regular_outline(num_points: int, radii: Sequence[float], start_angle: float) -> np.ndarray:
    angles = start_angle + np.arange(num_points) * 2 * math.pi / num_points
    radius = np.resize(np.asarray(radii, dtype=np.float64), num_points)
    return np.stack((radius * np.cos(angles), radius * np.sin(angles)), axis=1)


def _shape_outline(name: str, size: float, rng: np.random.Generator) -> np.ndarray:
    """Vertices ``[K, 2]`` of a shape of class ``name`` centred on 0 with largest extent about ``size``."""
    half = size / 2
    angle = rng.uniform(0, 2 * math.pi)
    if name == "circle":
        return _regular_outline(32, [half], 0.0)
    if name == "triangle":
        return _regular_outline(3, [half], angle)
    if name == "star":
        return _regular_outline(10, [half, half * 0.45], angle)
    aspect = rng.uniform(0.35, 0.6) if name == "ellipse" else rng.uniform(0.4, 1.0)
    if name == "ellipse":
        outline = _regular_outline(32, [1.0], 0.0) * np.array([half, half * aspect])
    else:
        outline = np.array([[-half, -half * aspect], [half, -half * aspect], [half, half * aspect],
                            [-half, half * aspect]])
    tilt = rng.uniform(-math.pi / 6, math.pi / 6) if name == "rectangle" else angle
    rotation = np.array([[math.cos(tilt), -math.sin(tilt)], [math.sin(tilt), math.cos(tilt)]])
    return outline @ rotation.T


def _textured_background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    base_colour = rng.uniform(60, 190, size=3)
    coarse = rng.normal(0, 25, size=(rng.integers(3, 7), rng.integers(3, 7), 3)).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    grey = field.mean(axis=2, keepdims=True)
    image = base_colour.astype(np.float32) + 0.3 * field + 0.7 * grey
    frequency = rng.uniform(0.05, 0.3)
    phase = rng.uniform(0, 2 * math.pi)
    direction = rng.uniform(0, math.pi)
    xs = np.arange(width, dtype=np.float32) * np.float32(frequency * math.cos(direction))
    ys = np.arange(height, dtype=np.float32) * np.float32(frequency * math.sin(direction))
    stripes = np.sin(ys[:, None] + xs[None, :] + np.float32(phase))
    image += np.float32(rng.uniform(0, 12)) * stripes[..., None]
    return image


def _draw_clutter(image: np.ndarray, rng: np.random.Generator) -> None:
    height, width = image.shape[:2]
    for _ in range(rng.integers(0, 5)):
        start = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        end = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(float(c) for c in rng.uniform(40, 220, size=3))
        cv2.line(image, start, end, colour, int(rng.integers(1, 3)), lineType=cv2.LINE_AA)


def _fill_polygon(canvas: np.ndarray, outline: np.ndarray, value: float | tuple) -> None:
    """Fill ``outline`` (continuous pixel coordinates) with sub-pixel precision; pixel centres at +0.5."""
    points = np.round((outline - 0.5) * (1 << SUBPIXEL_SHIFT)).astype(np.int32)
    cv2.fillPoly(canvas, [points], value, lineType=cv2.LINE_8, shift=SUBPIXEL_SHIFT)


def _object_centre(placed: list[tuple[int, Polygon]], size: float, height: int, width: int,
                   rng: np.random.Generator, overlap_probability: float) -> np.ndarray:
    """A centre anywhere (objects may cross the border), or next to a placed object so they overlap."""
    if placed and rng.random() < overlap_probability:
        anchor = placed[int(rng.integers(len(placed)))][1]
        x1, y1, x2, y2 = anchor.bounds
        reach = rng.uniform(0.4, 0.9) * (max(x2 - x1, y2 - y1) + size) / 2
        direction = rng.uniform(0, 2 * math.pi)
        return np.array([anchor.centroid.x, anchor.centroid.y]) + reach * np.array([math.cos(direction), math.sin(direction)])
    return rng.uniform([-0.2 * size, -0.2 * size], [width + 0.2 * size, height + 0.2 * size])


def _place_objects(height: int, width: int, num_objects: int, rng: np.random.Generator, min_object_size: float,
                   min_visible: float, overlap_probability: float,
                   classes: Sequence[str]) -> list[tuple[int, Polygon]]:
    """Choose (index in ``classes``, outline polygon) pairs; every object keeps ``min_visible`` of its area."""
    frame = box(0, 0, width, height)
    max_size = min(height, width) / 2
    placed: list[tuple[int, Polygon]] = []
    for _ in range(num_objects * 10):
        if len(placed) == num_objects:
            break
        class_index = int(rng.integers(len(classes)))
        size = math.exp(rng.uniform(math.log(min_object_size), math.log(max_size)))
        centre = _object_centre(placed, size, height, width, rng, overlap_probability)
        polygon = Polygon(_shape_outline(classes[class_index], size, rng) + centre)
        candidate = [*placed, (class_index, polygon)]
        if _all_visible_enough(candidate, frame, min_visible):
            placed = candidate
    return placed


def _visible_regions(objects: list[tuple[int, Polygon]], frame: Polygon) -> list:
    regions = []
    for index, (_, polygon) in enumerate(objects):
        above = [p for _, p in objects[index + 1:]]
        region = polygon.intersection(frame)
        if above:
            region = region.difference(unary_union(above).buffer(0.5, join_style="mitre"))
        regions.append(region)
    return regions


def _all_visible_enough(objects: list[tuple[int, Polygon]], frame: Polygon, min_visible: float) -> bool:
    regions = _visible_regions(objects, frame)
    return all(region.area >= min_visible * polygon.area for region, (_, polygon) in zip(regions, objects, strict=True))


def _region_rings(region) -> tuple[list[np.ndarray], bool]:
    parts = list(region.geoms) if isinstance(region, MultiPolygon) else [region]
    parts = [part for part in parts if isinstance(part, Polygon) and part.area > 0]
    rings = [np.asarray(part.exterior.coords[:-1], dtype=np.float32) for part in parts]
    return rings, any(len(part.interiors) > 0 for part in parts)


def _object_colour(rng: np.random.Generator) -> np.ndarray:
    colour = _PALETTE[rng.integers(len(_PALETTE))] + rng.normal(0, 12, size=3)
    return np.clip(colour, 0, 255)


def make_sample(rng: np.random.Generator, image_size: int | tuple[int, int] = 256, min_objects: int = 1,
                max_objects: int = 6, min_object_size: float = 8.0, min_visible: float = 0.4,
                overlap_probability: float = 0.3, empty_probability: float = 0.03,
                classes: Sequence[str] = SHAPE_CLASSES) -> SyntheticSample:
    """Generate one image and its ground truth from ``rng`` (square when ``image_size`` is an int).

    ``overlap_probability`` of the objects are placed next to an earlier one so that they overlap;
    ``empty_probability`` of the images have no object (negatives). ``classes``: the shapes drawn, a
    subset of ``SHAPE_CLASSES`` in any order (labels ``1..len(classes)`` follow it). Raises ``ValueError``
    for sizes smaller than ``4 * min_object_size``, an empty object-count range or an unknown shape.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if min(height, width) < 4 * min_object_size:
        raise ValueError(f"image_size must be at least {4 * min_object_size} px, got {image_size}")
    if not 0 <= min_objects <= max_objects:
        raise ValueError(f"need 0 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    _check_classes(classes)
    canvas = _textured_background(height, width, rng)
    _draw_clutter(canvas, rng)
    wanted = 0 if rng.random() < empty_probability else int(rng.integers(min_objects, max_objects + 1))
    objects = _place_objects(height, width, wanted, rng, min_object_size, min_visible, overlap_probability, classes)
    for _, polygon in objects:
        _fill_polygon(canvas, np.asarray(polygon.exterior.coords[:-1]), tuple(float(c) for c in _object_colour(rng)))
    canvas += np.float32(rng.uniform(3, 10)) * rng.standard_normal(canvas.shape, dtype=np.float32)
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    return _assemble_sample(image, objects)


def _check_classes(classes: Sequence[str]) -> None:
    unknown = [name for name in classes if name not in SHAPE_CLASSES]
    if isinstance(classes, str) or not classes or unknown or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct shapes among {SHAPE_CLASSES}, got {classes!r}")


def _rasterise_region(region, height: int, width: int) -> np.ndarray:
    """uint8 ``[H, W]`` mask of a (multi)polygon: exteriors filled with 1, holes with 0."""
    mask = np.zeros((height, width), dtype=np.uint8)
    parts = list(region.geoms) if isinstance(region, MultiPolygon) else [region]
    for part in (p for p in parts if isinstance(p, Polygon) and not p.is_empty):
        _fill_polygon(mask, np.asarray(part.exterior.coords[:-1]), 1)
        for hole in part.interiors:
            _fill_polygon(mask, np.asarray(hole.coords[:-1]), 0)
    return mask


def _assemble_sample(image: np.ndarray, objects: list[tuple[int, Polygon]]) -> SyntheticSample:
    height, width = image.shape[:2]
    regions = _visible_regions(objects, box(0, 0, width, height))
    labels, masks, polygons, holes, unoccluded = [], [], [], [], []
    frame = box(0, 0, width, height)
    for (class_index, polygon), region in zip(objects, regions, strict=True):
        mask = _rasterise_region(region, height, width)
        rings, has_holes = _region_rings(region)
        if not mask.any() or not rings:
            continue
        labels.append(class_index + 1)
        masks.append(mask)
        polygons.append(rings)
        holes.append(has_holes)
        unoccluded.append(region.area / polygon.intersection(frame).area)
    masks = np.stack(masks) if masks else np.zeros((0, height, width), dtype=np.uint8)
    return SyntheticSample(
        image=image,
        boxes=masks_to_boxes(masks),
        labels=np.asarray(labels, dtype=np.int64),
        masks=masks,
        polygons=polygons,
        has_holes=holes,
        unoccluded=np.asarray(unoccluded, dtype=np.float64),
    )


def iter_samples(count: int, seed: int = 0, **sample_options) -> list[SyntheticSample]:
    """``count`` samples from one seeded generator (the same seed gives the same samples)."""
    rng = np.random.default_rng(seed)
    return [make_sample(rng, **sample_options) for _ in range(count)]


def _coco_segmentation(sample: SyntheticSample, index: int, use_rle: bool) -> dict | list:
    if use_rle or sample.has_holes[index]:
        rle = mask_utils.encode(np.asfortranarray(sample.masks[index]))
        return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return [[round(float(v), 2) for v in ring.reshape(-1)] for ring in sample.polygons[index]]


def _coco_annotations(sample: SyntheticSample, image_id: int, first_id: int, category_ids: Sequence[int],
                      rng: np.random.Generator, rle_fraction: float) -> list[dict]:
    annotations = []
    for index, (x1, y1, x2, y2) in enumerate(sample.boxes.tolist()):
        annotations.append({
            "id": first_id + index,
            "image_id": image_id,
            "category_id": int(category_ids[sample.labels[index] - 1]),
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "area": float(sample.masks[index].sum()),
            "iscrowd": 0,
            "segmentation": _coco_segmentation(sample, index, bool(rng.random() < rle_fraction)),
        })
    return annotations


def semantic_map(sample: SyntheticSample) -> np.ndarray:
    """uint8 ``[H, W]`` class-index map of ``sample`` (0 = background)."""
    class_map = np.zeros(sample.image.shape[:2], dtype=np.uint8)
    for mask, label in zip(sample.masks, sample.labels, strict=True):
        class_map[mask.astype(bool)] = label
    return class_map


def _check_generate_arguments(formats: Sequence[str], category_ids: Sequence[int] | None,
                              classes: Sequence[str]) -> None:
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown formats {unknown}; expected a subset of {FORMATS}")
    _check_classes(classes)
    if category_ids is not None and (len(category_ids) != len(classes) or len(set(category_ids)) != len(category_ids)):
        raise ValueError(f"category_ids must be {len(classes)} distinct ids, got {list(category_ids)}")


def generate_dataset(root: str | Path, num_train: int = 200, num_val: int = 50, image_size: int = 288,
                     seed: int = 0, formats: Sequence[str] = FORMATS, category_ids: Sequence[int] | None = None,
                     rle_fraction: float = 0.2, classes: Sequence[str] = SHAPE_CLASSES, **sample_options) -> Path:
    """Write a synthetic dataset under ``root`` (layout in the module docstring) and return ``root``.

    ``classes``: the shapes drawn and named, in label order (default all of ``SHAPE_CLASSES``).
    ``category_ids`` are the COCO ids of ``classes`` (default ``1..len(classes)``; pass non-contiguous ids to
    exercise id mapping). ``rle_fraction`` of the objects (and every object whose visible region has holes)
    get an RLE segmentation, the others polygons. ``sample_options`` go to ``make_sample``.
    """
    _check_generate_arguments(formats, category_ids, classes)
    root = Path(root)
    category_ids = list(category_ids or range(1, len(classes) + 1))
    sample_options = {**sample_options, "classes": tuple(classes)}
    for folder in ("JPEGImages", "annotations", "Annotations", "ImageSets/Main", "SegmentationClass"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    if "semantic" in formats:
        labelmap = "".join(f"{name}\n" for name in ("background", *SHAPE_CLASSES))
        (root / "labelmap.txt").write_text(labelmap, encoding="utf-8")
    rng = np.random.default_rng(seed)
    first_id = 1
    for split, count in (("train", num_train), ("val", num_val)):
        _write_split(root, split, range(first_id, first_id + count), rng, image_size, formats, category_ids,
                     rle_fraction, sample_options)
        first_id += count
    return root


def _write_split(root: Path, split: str, image_ids: range, rng: np.random.Generator, image_size: int,
                 formats: Sequence[str], category_ids: list[int], rle_fraction: float, sample_options: dict) -> None:
    classes = sample_options["classes"]
    categories = [{"id": int(cid), "name": name, "supercategory": "shape"}
                  for cid, name in zip(category_ids, classes, strict=True)]
    coco: dict = {"images": [], "annotations": [], "categories": categories}
    stems = [f"{image_id:06d}" for image_id in image_ids]
    for image_id, stem in zip(image_ids, stems, strict=True):
        sample = make_sample(rng, image_size, **sample_options)
        _write_sample_files(root, stem, sample, formats, classes)
        height, width = sample.image.shape[:2]
        coco["images"].append({"id": image_id, "file_name": f"{stem}.jpg", "height": height, "width": width})
        coco["annotations"] += _coco_annotations(sample, image_id, len(coco["annotations"]) + 1, category_ids,
                                                 rng, rle_fraction)
    if "coco" in formats:
        save_json(coco, root / "annotations" / f"instances_{split}.json")
    if "voc" in formats or "semantic" in formats:
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{stem}\n" for stem in stems))


def _write_sample_files(root: Path, stem: str, sample: SyntheticSample, formats: Sequence[str],
                        classes: Sequence[str]) -> None:
    cv2.imwrite(str(root / "JPEGImages" / f"{stem}.jpg"), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 95])
    if "voc" in formats:
        sides = sample.boxes[:, 2:] - sample.boxes[:, :2]
        write_voc_xml(root / "Annotations" / f"{stem}.xml", f"{stem}.jpg", sample.image.shape[:2],
                      [classes[label - 1] for label in sample.labels], sample.boxes,
                      difficult=(sides.min(axis=1) < DIFFICULT_SIZE).tolist())
    if "semantic" in formats:
        write_palette_png(root / "SegmentationClass" / f"{stem}.png", semantic_map(sample))
