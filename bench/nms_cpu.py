"""CPU NMS: structured vs torchvision vs OpenCV, measured in one run.

Two box distributions: ``spread`` (boxes scattered over a 1000x1000 image, like dense anchors or
many small objects) and ``clustered`` (candidates jittered around objects, like a detector's raw
output). For each N the contenders run round-robin on the same input and the median of the repeats
is reported; ratios are torchvision time / other time (above 1 = faster than torchvision). Every
structured result is checked index-for-index against torchvision.

    python bench/nms_cpu.py [--repeats 7] [--threads 2] [--markdown]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np
import torch
import torchvision

from structured import measures
from structured.boxes import batched_nms, box_convert, nms

IOU_THRESHOLD = 0.5
NUM_CLASSES = 80


def make_boxes(count: int, seed: int, clustered: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded boxes, scores and class indices."""
    generator = torch.Generator().manual_seed(seed)
    if clustered:
        centres = torch.rand(max(count // 40, 1), 2, generator=generator) * 1000
        pick = torch.randint(len(centres), (count,), generator=generator)
        centre = centres[pick] + torch.randn(count, 2, generator=generator) * 15
        size = 30 + torch.rand(count, 2, generator=generator) * 120
    else:
        centre = torch.rand(count, 2, generator=generator) * 1000
        size = 10 + torch.rand(count, 2, generator=generator) * 90
    scores = torch.rand(count, generator=generator)
    classes = torch.randint(0, NUM_CLASSES, (count,), generator=generator)
    return torch.cat([centre - size / 2, centre + size / 2], dim=1), scores, classes


def opencv_nms(boxes: torch.Tensor, scores: torch.Tensor) -> Callable[[], np.ndarray]:
    """A closure running cv2.dnn.NMSBoxes on prepared xywh float64 arrays."""
    xywh = box_convert(boxes, "xyxy", "xywh").double().numpy()
    scores_np = scores.numpy()
    return lambda: cv2.dnn.NMSBoxes(xywh, scores_np, 0.0, IOU_THRESHOLD)


def opencv_batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor) -> Callable[[], np.ndarray]:
    """A closure running cv2.dnn.NMSBoxesBatched on prepared arrays."""
    xywh = box_convert(boxes, "xyxy", "xywh").double().numpy()
    scores_np, classes_np = scores.numpy(), classes.int().numpy()
    return lambda: cv2.dnn.NMSBoxesBatched(xywh, scores_np, classes_np, 0.0, IOU_THRESHOLD)


def time_round_robin(contenders: dict[str, Callable[[], object]], repeats: int,
                     sample_seconds: float = 2e-3) -> dict[str, float]:
    """Median milliseconds per call of each contender, run in turns (the order rotating) so that noise hits
    all alike. A sample times as many back-to-back calls as fill ``sample_seconds`` (microsecond calls on
    small sets cannot be timed one by one)."""
    calls = {}
    for name, run in contenders.items():
        start = time.perf_counter()
        run()
        calls[name] = max(1, int(sample_seconds / max(time.perf_counter() - start, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[: repeat % len(names)]:
            run, count = contenders[name], calls[name]
            start = time.perf_counter()
            for _ in range(count):
                run()
            samples[name].append((time.perf_counter() - start) * 1e3 / count)
    return {name: statistics.median(values) for name, values in samples.items()}


def benchmark_case(count: int, clustered: bool, batched: bool, repeats: int) -> dict[str, object]:
    """Time one (N, distribution, batched) case and check structured against torchvision."""
    boxes, scores, classes = make_boxes(count, seed=count, clustered=clustered)
    if batched:
        contenders = {
            "structured": lambda: batched_nms(boxes, scores, classes, IOU_THRESHOLD),
            "torchvision": lambda: torchvision.ops.batched_nms(boxes, scores, classes, IOU_THRESHOLD),
            "opencv": opencv_batched_nms(boxes, scores, classes),
        }
    else:
        contenders = {
            "structured": lambda: nms(boxes, scores, IOU_THRESHOLD),
            "torchvision": lambda: torchvision.ops.nms(boxes, scores, IOU_THRESHOLD),
            "opencv": opencv_nms(boxes, scores),
        }
    identical = torch.equal(contenders["structured"](), contenders["torchvision"]())
    times = time_round_robin(contenders, repeats)
    return {"N": count, "boxes": "clustered" if clustered else "spread", "batched": batched,
            "kept": len(contenders["torchvision"]()), "identical": identical, **times}


def render_table(header: list[str], lines: list[list[str]], markdown: bool) -> str:
    """``header`` and ``lines`` of cells as a markdown table or as right-aligned plain columns
    (``structured.measures.render_table``, the package's one table writer)."""
    return measures.render_table(header, lines, [], "md" if markdown else "text").rstrip("\n")


def format_table(rows: list[dict[str, object]], markdown: bool) -> str:
    """The results as a plain or markdown table."""
    header = ["case", "N", "kept", "torchvision ms", "structured ms", "opencv ms",
              "tv/structured", "tv/opencv", "same indices"]
    lines = []
    for row in rows:
        case = f"{'batched ' + str(NUM_CLASSES) + ' cls' if row['batched'] else 'nms'}, {row['boxes']}"
        lines.append([case, str(row["N"]), str(row["kept"]), f"{row['torchvision']:.4g}",
                      f"{row['structured']:.4g}", f"{row['opencv']:.4g}",
                      f"{row['torchvision'] / row['structured']:.2f}x", f"{row['torchvision'] / row['opencv']:.2f}x",
                      "yes" if row["identical"] else "NO"])
    return render_table(header, lines, markdown)


def main() -> None:
    """Run every case and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenCV threads")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100, 1000, 5000, 20000])
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    rows = [benchmark_case(count, clustered, batched, args.repeats)
            for batched in (False, True) for clustered in (False, True) for count in args.sizes]
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, opencv {cv2.__version__}, "
          f"{args.threads} threads, IoU threshold {IOU_THRESHOLD}, median of {args.repeats}")
    print(format_table(rows, args.markdown))


if __name__ == "__main__":
    main()
