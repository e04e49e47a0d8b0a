"""Faster R-CNN and Mask R-CNN inference speed, ours vs torchvision's same model with the same weights (CPU).

For ``fasterrcnn_resnet50_fpn``, ``fasterrcnn_mobilenet_v3_large_fpn`` and ``maskrcnn_resnet50_fpn`` (its
masks pasted into the image by each side): build torchvision's model with its seeded default initialisation
and ``FrozenBatchNorm2d`` (how torchvision runs detection backbones with loaded weights), convert its state
dict into our recipe, and run torchvision's model, ours, and ours after ``optimize_for_inference()`` (frozen
batch norms folded into the convolutions, channels-last layout) and ``Detector.predict`` (the default path of
the API, ``tools/infer.py`` and ``tools/eval.py``: the optimized model, plus the copy of the results to the CPU
and the score filter) on the same 480x640 image (a raccoon photo from ../shared/data when present, else a
random one), with ``torch.set_num_threads(2)``, taking turns run by run.

Both sides run at the default score threshold (0.05), as a user would. A seeded model scores every class
about 1/91, below it, so the seeded weights are made to answer like a trained model's: the classifier's
bias of a few classes (``--confident-classes``) is raised by ``--confidence`` (the same weights on both
sides), which leaves each image with 100 detections of those classes. ``--score-thresh 0`` instead keeps
all 90k candidate boxes (1,000 proposals x 90 classes), the post-processing's worst case. Prints the best
(minimum) latency of each over the runs (the least disturbed by other load on the machine), the ratios
ours / torchvision (< 1: we are faster), the number of detections and the largest box difference against
torchvision's detections.

    python bench/detector_speed.py [--runs 5] [--models r50 mobilenet mask_r50] [--score-thresh 0.05]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import torch
from torch import nn
from torchvision.models.detection import (
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn,
)
from torchvision.ops.misc import FrozenBatchNorm2d

from structured import Detector
from structured.convert.torchvision import convert_faster_rcnn
from structured.data.base import numbered_class_names
from structured.data.loading import read_image
from structured.registry import MODELS

REPO_ROOT = Path(__file__).resolve().parents[1]
PAIRS = {
    "r50": (fasterrcnn_resnet50_fpn, "faster_rcnn_r50_fpn"),
    "mobilenet": (fasterrcnn_mobilenet_v3_large_fpn, "faster_rcnn_mobilenet_v3_large_fpn"),
    "mask_r50": (maskrcnn_resnet50_fpn, "mask_rcnn_r50_fpn"),
}
IMAGE_SIZE = (480, 640)


def freeze_batch_norms(module: nn.Module) -> None:
    """Swap every BatchNorm2d for torchvision's FrozenBatchNorm2d with the same statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_batch_norms(child)


@torch.no_grad()
def torchvision_model(builder, score_thresh: float, confident_classes: int, confidence: float) -> nn.Module:
    """Seeded torchvision detector (default initialisation, frozen batch norm) answering like a trained one.

    The first ``confident_classes`` object classes get ``confidence`` added to their classifier bias, so
    their scores clear the default threshold.
    """
    torch.manual_seed(0)
    model = builder(weights=None, weights_backbone=None, box_score_thresh=score_thresh)
    freeze_batch_norms(model)
    model.roi_heads.box_predictor.cls_score.bias[1:1 + confident_classes] += confidence
    return model.eval()


def bench_image() -> tuple[torch.Tensor, str]:
    """A 480x640 RGB float image: raccoon-1.jpg resized when the shared data is there, else generated."""
    path = REPO_ROOT.parent / "shared" / "data" / "raccoon" / "images" / "raccoon-1.jpg"
    if path.is_file():
        pixels = read_image(path)
        pixels = cv2.resize(pixels, IMAGE_SIZE[::-1], interpolation=cv2.INTER_AREA)
        return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255, path.name
    generator = torch.Generator().manual_seed(0)
    return torch.rand(3, *IMAGE_SIZE, generator=generator), "random"


def first_prediction(model: nn.Module, image: torch.Tensor) -> dict:
    """``model``'s prediction for ``image`` alone."""
    return model([image])[0]


def max_box_difference(expected: dict, actual: dict) -> float:
    """Largest coordinate difference between each of our boxes and its nearest same-label reference box."""
    if len(actual["boxes"]) != len(expected["boxes"]):
        return float("inf")
    worst = 0.0
    for box, label in zip(actual["boxes"], actual["labels"], strict=True):
        same = expected["boxes"][expected["labels"] == label]
        worst = max(worst, float((same - box).abs().amax(dim=1).min()) if len(same) else float("inf"))
    return worst


@torch.no_grad()
def time_runners(runners: list[Callable[[], dict]], runs: int) -> tuple[list[list[float]], list[dict]]:
    """One warm-up each, then ``runs`` turns over ``runners``; latencies (s) per runner and first outputs."""
    outputs = [run() for run in runners]
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(runs):
        for run, run_times in zip(runners, times, strict=True):
            start = time.perf_counter()
            run()
            run_times.append(time.perf_counter() - start)
    return times, outputs


def detector_runner(detector: Detector, image: torch.Tensor) -> Callable[[], dict]:
    """``Detector.predict`` on ``image`` (the user's default path), its result as a Prediction dict."""
    def run() -> dict:
        result = detector.predict(image)
        return {"boxes": result.boxes, "scores": result.scores, "labels": result.labels}
    return run


def main() -> None:
    """Run the comparison and print a markdown table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--models", nargs="+", choices=sorted(PAIRS), default=["r50", "mobilenet", "mask_r50"])
    parser.add_argument("--score-thresh", type=float, default=0.05, help="both sides' box score threshold")
    parser.add_argument("--confident-classes", type=int, default=5)
    parser.add_argument("--confidence", type=float, default=3.0, help="added to those classes' logit bias")
    args = parser.parse_args()
    torch.set_num_threads(2)
    image, source = bench_image()
    print(
        f"image: {source} {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, threads: {torch.get_num_threads()}, runs: {args.runs}, "
        f"score threshold {args.score_thresh}, {args.confident_classes} classes' bias +{args.confidence}"
    )
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}\n")
    print(
        "| model | torchvision (s) | ours (s) | ours optimized (s) | Detector.predict (s) | ratio ours/tv "
        "| ratio optimized/tv | ratio Detector/tv | detections | max box diff ours | max box diff optimized |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key in args.models:
        builder, recipe = PAIRS[key]
        reference = torchvision_model(builder, args.score_thresh, args.confident_classes, args.confidence)
        heads = {"score_thresh": args.score_thresh}
        converted = convert_faster_rcnn(reference.state_dict(), recipe)
        ours = MODELS.build(recipe, roi_heads=heads).eval()
        ours.load_state_dict(converted)
        optimized = MODELS.build(recipe, roi_heads=heads).eval()
        optimized.load_state_dict(converted)
        optimized.optimize_for_inference()
        default = MODELS.build(recipe, roi_heads=heads)
        default.load_state_dict(converted)
        detector = Detector(default, numbered_class_names(90))
        runners = [*(partial(first_prediction, model, image) for model in (reference, ours, optimized)),
                   detector_runner(detector, image)]
        times, outputs = time_runners(runners, args.runs)
        tv, plain, fast, through_api = (min(t) for t in times)
        plain_diff = max_box_difference(outputs[0], outputs[1])
        fast_diff = max_box_difference(outputs[0], outputs[2])
        print(
            f"| {recipe} | {tv:.3f} | {plain:.3f} | {fast:.3f} | {through_api:.3f} | {plain / tv:.3f} "
            f"| {fast / tv:.3f} | {through_api / tv:.3f} | {len(outputs[0]['boxes'])} | {plain_diff:.1e} | {fast_diff:.1e} |"
        )


if __name__ == "__main__":
    main()
