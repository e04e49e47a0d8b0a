"""Batch inference over images, folders, globs and videos with any predictor (detector or segmenter).

``run_inference(predictor, source, out_dir)`` is what ``tools/infer.py`` runs. Every readable input gets a
picture in ``out_dir`` (a video gets a video): the result's own ``save`` (a detector's boxes and masks, a
segmenter's colour overlay). Each result writes its machine-readable outputs (``write_outputs``) and gives
its entries of ``out_dir/predictions.json``:

- a detector: COCO results (``image_id``, xywh ``bbox``, ``score``, ``category_id``: the training data's own
  category id, as kept in the checkpoint), and with ``save_txt`` one YOLO label file per image in
  ``out_dir/labels/`` (YOLO-seg polygons for a model with masks);
- a segmenter: a class-index palette PNG per image in ``out_dir/masks/`` and, per image, its file and the
  pixels of each class.

``out_dir/images.json`` maps image ids to file names and lists the categories (``predictor.categories()``).
An unreadable input, or one whose outputs cannot be written, is reported by name and skipped; it never stops
the run. No output replaces an input: a run that would write over one is refused before it starts
(``check_inputs_are_kept``). Nothing here depends on the kind of predictor: what differs lives in the
predictor and result classes of ``structured.api``.
"""

from __future__ import annotations

import glob
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from structured.api import DetectionResult, Predictor, SegmentationResult
from structured.cli import is_usage_error, one_line
from structured.data.loading import ImageReadError, read_image
from structured.io import save_json
from structured.visualize import can_write_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
MEDIA_SUFFIXES = IMAGE_SUFFIXES + VIDEO_SUFFIXES

Source = str | os.PathLike[str]


@dataclass
class InferenceSummary:
    """What a run produced: counts (``found``: the sum of ``len(result)``, detections or classes present
    per image), skipped inputs with the reason, output files and per-image times."""

    images: int = 0
    found: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def list_sources(sources: Source | Sequence[Source]) -> list[Path]:
    """The files the sources name, each once, in the order given: a file, the images and videos of a folder
    (its top level), or a glob pattern's matching files. A folder or pattern with none is an error."""
    listed: dict[Path, Path] = {}  # resolved path -> the path as named
    for source in [sources] if isinstance(sources, (str, os.PathLike)) else sources:
        for path in _files_of(str(source)):
            listed.setdefault(path.resolve(), path)
    return list(listed.values())


def _files_of(text: str) -> list[Path]:
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in MEDIA_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"no image or video in folder {text} (looked for {', '.join(MEDIA_SUFFIXES)} "
                                    f"at its top level; for subfolders pass a quoted pattern such as '{path / '**' / '*.png'}')")
        return files
    if any(character in text for character in "*?["):
        matches = sorted(Path(match) for match in glob.glob(text, recursive=True) if Path(match).is_file())
        if not matches:
            raise FileNotFoundError(f"no file matches the pattern {text}")
        return matches
    if not path.exists():
        raise FileNotFoundError(f"input not found: {text}")
    return [path]


def output_names(paths: Sequence[Path]) -> dict[Path, str]:
    """A distinct output file name per input, with distinct stems (masks and label files are named by the
    stem): the input's own name, or where stems repeat (``a/img.png`` and ``b/img.png``) its path below the
    repeated inputs' common folder joined by ``_`` (``a_img.png``, ``b_img.png``), then ``_2``, ``_3`` ... on a
    stem still taken (``img.jpg`` and ``img.png`` give ``img.jpg`` and ``img_2.png``). An image whose extension
    OpenCV does not write (``.jfif``, ``.heic``, none) gets ``.jpg`` (``photo.jfif`` gives ``photo.jpg``)."""
    stem_counts = Counter(path.stem for path in paths)
    repeated = [path.absolute() for path in paths if stem_counts[path.stem] > 1]
    common = Path(os.path.commonpath(repeated)) if repeated else None
    names: dict[Path, str] = {}
    taken: set[str] = set()
    for path in paths:
        name = "_".join(path.absolute().relative_to(common).parts) if stem_counts[path.stem] > 1 else path.name
        stem, number = Path(name).stem, 2
        while stem in taken:
            stem, number = f"{Path(name).stem}_{number}", number + 1
        taken.add(stem)
        names[path] = stem + _output_suffix(path)
    return names


def _output_suffix(path: Path) -> str:
    is_video = path.suffix.lower() in VIDEO_SUFFIXES
    return path.suffix if is_video or can_write_image(path) else ".jpg"


def check_inputs_are_kept(paths: Sequence[Path], names: Mapping[Path, str], out_dir: Path) -> None:
    """Refuse a run that would write over one of its inputs (``--out`` the source folder): ``ValueError``
    naming the inputs, before anything is written."""
    inputs = {path.resolve(): path for path in paths}
    outputs = [out_dir / "predictions.json", out_dir / "images.json"]
    for path, name in names.items():
        stem = Path(name).stem
        picture = out_dir / (f"{stem}_annotated.mp4" if path.suffix.lower() in VIDEO_SUFFIXES else name)
        outputs += [picture, out_dir / "masks" / f"{stem}.png", out_dir / "labels" / f"{stem}.txt"]
    overwritten = [str(inputs[output.resolve()]) for output in outputs if output.resolve() in inputs]
    if overwritten:
        listed = ", ".join(overwritten[:3]) + (f" and {len(overwritten) - 3} more" if len(overwritten) > 3 else "")
        raise ValueError(f"the output folder {out_dir} (--out) holds inputs that the outputs would overwrite "
                         f"({listed}); write the outputs to another folder")


def iter_frames(video: Path) -> Iterator[np.ndarray]:
    """RGB frames of a video file; ``ImageReadError`` when it cannot be opened."""
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise ImageReadError(f"cannot open video {video}")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


Result = DetectionResult | SegmentationResult


def run_inference(
    predictor: Predictor,
    source: Source | Sequence[Source],
    out_dir: str | os.PathLike[str],
    score_threshold: float = 0.25,
    classes: Sequence[str | int] | None = None,
    save_txt: bool = False,
    report: Callable[[str], None] = print,
) -> InferenceSummary:
    """Predict on every input of ``source`` (one or several: ``list_sources``); write pictures,
    ``predictions.json``, ``images.json`` and each result's files (module docstring), named by
    ``output_names``. ``score_threshold`` and ``classes`` go to ``predictor.predict``."""
    predictor.check_request(score_threshold, classes)  # one error for the run, not one skip per image
    out_dir = Path(out_dir)
    paths = list_sources(source)
    names = output_names(paths)
    check_inputs_are_kept(paths, names, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = InferenceSummary()
    results_json: list[dict] = []
    images_json: list[dict] = []
    for path in paths:
        is_video = path.suffix.lower() in VIDEO_SUFFIXES
        frames = _predict_source(predictor, path, names[path], is_video, out_dir, score_threshold, classes,
                                 summary, report)
        for name, result in frames:
            image_id = len(images_json) + 1
            entries = _write_result(result, out_dir, name, not is_video, image_id, save_txt, summary, report)
            if entries is not None:
                height, width = result.image.shape[:2]
                images_json.append({"id": image_id, "file_name": name, "height": height, "width": width})
                results_json.extend(entries)
    summary.outputs.append(save_json(results_json, out_dir / "predictions.json"))
    catalogue = {"images": images_json, "categories": predictor.categories()}
    summary.outputs.append(save_json(catalogue, out_dir / "images.json"))
    return summary


def _write_result(
    result: Result, out_dir: Path, name: str, with_picture: bool, image_id: int, save_txt: bool,
    summary: InferenceSummary, report: Callable[[str], None],
) -> list[dict] | None:
    """Write the files of one result named ``name`` (with ``with_picture`` its picture, then ``write_outputs``)
    and return its entries of ``predictions.json``; None when a file cannot be written: reported and counted
    as a skip, so one failed write loses no other output."""
    try:
        if with_picture:
            summary.outputs.append(result.save(out_dir / name))
        entries = result.write_outputs(out_dir, Path(name).stem, image_id, save_txt)
    except (OSError, ValueError) as error:
        if not is_usage_error(error):
            raise
        summary.skipped.append((result.source, one_line(error)))
        report(f"skipped {result.source}: {one_line(error)}")
        return None
    return entries


def _predict_source(
    predictor: Predictor, path: Path, name: str, is_video: bool, out_dir: Path, score_threshold: float,
    classes: Sequence[str | int] | None, summary: InferenceSummary, report: Callable[[str], None],
) -> Iterator[tuple[str, Result]]:
    """``(name, result)`` of the image or of each video frame; an unreadable input is reported and skipped.

    Only errors raised while reading and predicting are caught, not those of the caller's loop body.
    """
    try:
        if is_video:
            yield from _predict_video(predictor, path, Path(name).stem, out_dir, score_threshold, classes, summary,
                                      report)
        else:
            yield name, _predict_file(predictor, path, score_threshold, classes, summary, report)
    except (ImageReadError, OSError, ValueError) as error:
        summary.skipped.append((str(path), str(error)))
        report(f"skipped {path}: {error}")


def _predict_file(
    predictor: Predictor, path: Path, score_threshold: float, classes: Sequence[str | int] | None,
    summary: InferenceSummary, report: Callable[[str], None],
) -> Result:
    image = read_image(path)
    return _timed_predict(predictor, image, str(path), score_threshold, classes, summary, report)


def _predict_video(
    predictor: Predictor, path: Path, stem: str, out_dir: Path, score_threshold: float,
    classes: Sequence[str | int] | None, summary: InferenceSummary, report: Callable[[str], None],
) -> Iterator[tuple[str, Result]]:
    """``(name, result)`` of each frame (``stem_000000.jpg`` ...), yielded once its annotated frame is written
    to the output video ``stem_annotated.mp4``."""
    writer = None
    target = out_dir / f"{stem}_annotated.mp4"
    try:
        for index, frame in enumerate(iter_frames(path)):
            result = _timed_predict(predictor, frame, f"{path}#{index}", score_threshold, classes, summary, report)
            if writer is None:
                writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), 25.0,
                                         (frame.shape[1], frame.shape[0]))
            writer.write(cv2.cvtColor(result.plot(), cv2.COLOR_RGB2BGR))
            yield f"{stem}_{index:06d}.jpg", result
    finally:
        if writer is not None:
            writer.release()
            summary.outputs.append(target)
    if writer is None:  # the writer opens with the first frame
        raise ImageReadError(f"video {path} has no readable frame")


def _timed_predict(
    predictor: Predictor, image: np.ndarray, name: str, score_threshold: float,
    classes: Sequence[str | int] | None, summary: InferenceSummary, report: Callable[[str], None],
) -> Result:
    start = time.perf_counter()
    result = predictor.predict(image, score_threshold=score_threshold, classes=classes)
    elapsed = time.perf_counter() - start
    result.source = name
    summary.images += 1
    summary.found += len(result)
    summary.seconds.append(elapsed)
    report(f"{name}: {result.describe()} in {elapsed * 1e3:.1f} ms")
    return result
