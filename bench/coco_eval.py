"""Benchmark: our COCO bbox evaluation vs pycocotools vs faster-coco-eval on one generated set.

Generates 2,000 images with COCO-like ground truth (80 categories, ~7 objects per image, 5% crowd) and
100 detections per image (jittered true boxes and background boxes, scores in [0, 1]), then times the
full evaluation of each library on the same dicts in the same process: building its ground-truth and
results structures, matching, accumulation and the 12 stats. Every library gets fresh deep copies
(pycocotools mutates its inputs); copying is not timed. Prints the table (markdown) with ratios and checks
that the 12 stats agree.

    .venv/bin/python bench/coco_eval.py [--images 2000] [--detections 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch

from structured.evaluation.coco import evaluate_coco

NUM_CATEGORIES = 80


def generate_case(num_images: int, detections_per_image: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """COCO-like ground truth and a detector-like results list (fixed seed)."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "height": 480, "width": 640})
        gt_boxes, gt_categories = _image_ground_truth(rng)
        for box, category in zip(gt_boxes, gt_categories, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(category),
                    "bbox": box.tolist(),
                    "area": float(box[2] * box[3]),
                    "iscrowd": int(rng.random() < 0.05),
                }
            )
        det_boxes, det_categories = _image_detections(rng, gt_boxes, gt_categories, detections_per_image)
        scores = rng.random(detections_per_image)
        for box, category, score in zip(det_boxes, det_categories, scores, strict=True):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(category),
                    "bbox": box.tolist(),
                    "score": float(score),
                }
            )
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, NUM_CATEGORIES + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def _image_ground_truth(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    count = int(rng.poisson(7))
    present = rng.choice(np.arange(1, NUM_CATEGORIES + 1), size=3, replace=False)
    sizes = np.exp(rng.uniform(np.log(8), np.log(400), size=(count, 2)))
    corners = rng.uniform(0, 1, size=(count, 2)) * (np.array([640, 480]) - sizes).clip(min=1)
    return np.round(np.concatenate([corners, sizes], axis=1), 2), rng.choice(present, size=count)


def _image_detections(
    rng: np.random.Generator, gt_boxes: np.ndarray, gt_categories: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray]:
    near = min(count // 3, 3 * len(gt_boxes))
    source = rng.integers(0, max(len(gt_boxes), 1), size=near)
    jittered = (
        gt_boxes[source] * np.exp(rng.normal(0, 0.1, size=(near, 4))) if len(gt_boxes) else np.zeros((0, 4))
    )
    sizes = np.exp(rng.uniform(np.log(8), np.log(400), size=(count - near, 2)))
    corners = rng.uniform(0, 1, size=(count - near, 2)) * (np.array([640, 480]) - sizes).clip(min=1)
    background = np.concatenate([corners, sizes], axis=1)
    categories = np.concatenate(
        [
            gt_categories[source] if len(gt_boxes) else np.zeros(0, int),
            rng.integers(1, NUM_CATEGORIES + 1, count - near),
        ]
    )
    return np.round(np.concatenate([jittered, background]), 2), categories


def run_pycocotools(dataset: dict, results: list[dict]) -> np.ndarray:
    """pycocotools: COCO index, loadRes, evaluate, accumulate, summarize."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats)


def run_faster_coco_eval(dataset: dict, results: list[dict]) -> np.ndarray:
    """faster-coco-eval (C++ core): COCO index, loadRes, evaluate, accumulate, summarize."""
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(dataset)
        evaluator = COCOeval_faster(gt, gt.loadRes(results), "bbox", print_function=lambda *args: None)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats[:12])


def run_structured(dataset: dict, results: list[dict]) -> np.ndarray:
    """structured.evaluation.coco.evaluate_coco on the same dicts."""
    return evaluate_coco(dataset, results, "bbox").stats


def time_best(
    runner: Callable[[dict, list[dict]], np.ndarray], case: tuple[dict, list], repeats: int
) -> tuple[float, np.ndarray]:
    """Best wall time over ``repeats`` runs on fresh deep copies, and the stats of the last run."""
    best, stats = float("inf"), np.zeros(12)
    for _ in range(repeats):
        dataset, results = copy.deepcopy(case[0]), copy.deepcopy(case[1])
        start = time.perf_counter()
        stats = runner(dataset, results)
        best = min(best, time.perf_counter() - start)
    return best, stats


def thread_report() -> str:
    """Thread settings: torch intra-op threads, BLAS/OpenMP environment, usable CPU cores."""
    env = {
        name: os.environ.get(name, "unset")
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    }
    env_text = ", ".join(f"{name}={value}" for name, value in env.items())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"torch threads {torch.get_num_threads()}, {env_text}, CPU cores usable {cores} of {os.cpu_count()}"
    )


def main() -> None:
    """Generate the set, time the three evaluators, print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    case = generate_case(args.images, args.detections)
    runners = {
        "pycocotools": run_pycocotools,
        "faster-coco-eval": run_faster_coco_eval,
        "structured": run_structured,
    }
    timings = {name: time_best(runner, case, args.repeats) for name, runner in runners.items()}
    reference_time, reference_stats = timings["pycocotools"]
    print(
        f"{args.images} images, {len(case[1])} detections, {len(case[0]['annotations'])} ground truths, bbox"
    )
    print(f"{platform.processor() or platform.machine()}; {thread_report()}; numpy {np.__version__}")
    print(f"best of {args.repeats} runs each\n")
    print("| evaluator | time (s) | speed-up vs pycocotools | max abs stat difference vs pycocotools |")
    print("|---|---:|---:|---:|")
    for name, (seconds, stats) in timings.items():
        difference = float(np.abs(stats - reference_stats).max())
        print(f"| {name} | {seconds:.3f} | {reference_time / seconds:.1f}x | {difference:.1e} |")
    ours, faster = timings["structured"][0], timings["faster-coco-eval"][0]
    print(f"\nstructured vs faster-coco-eval: {faster / ours:.2f}x")


if __name__ == "__main__":
    main()
