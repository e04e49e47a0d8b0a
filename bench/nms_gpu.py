"""CUDA NMS: structured's Triton kernels vs torchvision's CUDA ops, measured in one run.

Cases (IoU threshold 0.5, boxes from ``bench.nms_cpu.make_boxes``): ``nms`` at N = 1k, 5k, 20k, 100k (one
class, spread and clustered); ``batched_nms`` over 80 classes at 20k; 16 images x 5k boxes x 80 classes,
ours as one ``batched_nms`` call over image x class segments against torchvision's ``batched_nms`` once
per image; and the post-processing (``postprocess``: decoding, score threshold 0, per-class NMS) of a
randomly initialised Faster R-CNN R50-FPN on one 800x800 image, ours with our kernels and with
torchvision's ops. Times are medians of CUDA-event timings after warm-up (first calls compile the
kernels); every result is checked index for index against torchvision's.

    python bench/nms_gpu.py [--repeats 50] [--markdown]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
from collections.abc import Callable, Iterator

import torch
import torchvision

from bench.nms_cpu import make_boxes, render_table
from structured.boxes import batched_nms, nms
from structured.registry import MODELS

IOU_THRESHOLD = 0.5
nms_module = importlib.import_module("structured.boxes.nms")


def cuda_median_ms(run: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``run`` on the current stream, by CUDA events, after three warm-up calls."""
    for _ in range(3):
        run()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def cuda_boxes(count: int, seed: int, clustered: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``make_boxes`` on the GPU."""
    boxes, scores, classes = make_boxes(count, seed=seed, clustered=clustered)
    return boxes.cuda(), scores.cuda(), classes.cuda()


def single_class_row(count: int, clustered: bool, repeats: int) -> list[str]:
    """``nms`` against ``torchvision.ops.nms``."""
    boxes, scores, _ = cuda_boxes(count, count, clustered)
    ours, theirs = nms(boxes, scores, IOU_THRESHOLD), torchvision.ops.nms(boxes, scores, IOU_THRESHOLD)
    return timed_row(f"nms, {'clustered' if clustered else 'spread'}", count, len(theirs), torch.equal(ours, theirs),
                     lambda: torchvision.ops.nms(boxes, scores, IOU_THRESHOLD),
                     lambda: nms(boxes, scores, IOU_THRESHOLD), repeats)


def batched_row(count: int, repeats: int) -> list[str]:
    """``batched_nms`` over 80 classes against ``torchvision.ops.batched_nms``."""
    boxes, scores, classes = cuda_boxes(count, count, clustered=True)
    ours = batched_nms(boxes, scores, classes, IOU_THRESHOLD)
    theirs = torchvision.ops.batched_nms(boxes, scores, classes, IOU_THRESHOLD)
    return timed_row("batched 80 cls, clustered", count, len(theirs), torch.equal(ours, theirs),
                     lambda: torchvision.ops.batched_nms(boxes, scores, classes, IOU_THRESHOLD),
                     lambda: batched_nms(boxes, scores, classes, IOU_THRESHOLD), repeats)


def images_row(images: int, count: int, repeats: int) -> list[str]:
    """One ``batched_nms`` over image x class segments against one torchvision call per image."""
    per_image = [cuda_boxes(count, seed, clustered=True) for seed in range(images)]
    boxes = torch.cat([image[0] for image in per_image])
    scores = torch.cat([image[1] for image in per_image])
    segments = torch.cat([image[2] + 80 * index for index, image in enumerate(per_image)])
    image_of_box = torch.arange(images, device="cuda").repeat_interleave(count)

    def torchvision_per_image() -> list[torch.Tensor]:
        return [torchvision.ops.batched_nms(b, s, c, IOU_THRESHOLD) for b, s, c in per_image]

    ours = batched_nms(boxes, scores, segments, IOU_THRESHOLD)
    same = all(torch.equal(ours[image_of_box[ours] == index] - index * count, theirs)
               for index, theirs in enumerate(torchvision_per_image()))
    return timed_row(f"{images} images x {count}, 80 cls", images * count, len(ours), same, torchvision_per_image,
                     lambda: batched_nms(boxes, scores, segments, IOU_THRESHOLD), repeats)


def timed_row(case: str, count: int, kept: int, same: bool, theirs: Callable[[], object],
              ours: Callable[[], object], repeats: int) -> list[str]:
    """A table row: both timings and their ratio."""
    theirs_ms, ours_ms = cuda_median_ms(theirs, repeats), cuda_median_ms(ours, repeats)
    return [case, str(count), str(kept), f"{theirs_ms:.3f}", f"{ours_ms:.3f}", f"{theirs_ms / ours_ms:.2f}x",
            "yes" if same else "NO"]


@contextlib.contextmanager
def torchvision_cuda_ops() -> Iterator[None]:
    """Inside: structured's NMS on CUDA tensors calls torchvision's ops (our kernels unregistered)."""
    kernel, batched = nms_module._DEVICE_KERNELS.pop("cuda"), nms_module._BATCHED_KERNELS.pop("cuda")
    try:
        yield
    finally:
        nms_module.register_nms_kernel("cuda", kernel, batched=batched)


def faster_rcnn_row(repeats: int) -> list[str]:
    """Faster R-CNN R50-FPN ``postprocess`` at score threshold 0, with our kernels and with torchvision's."""
    torch.manual_seed(0)
    model = MODELS.build("faster_rcnn_r50_fpn", roi_heads={"score_thresh": 0.0}).eval().cuda()
    with torch.no_grad():
        raw = model.raw_outputs([torch.rand(3, 800, 800, device="cuda")])
        ours = model.postprocess(raw)[0]
        with torchvision_cuda_ops():
            theirs = model.postprocess(raw)[0]
            theirs_ms = cuda_median_ms(lambda: model.postprocess(raw), repeats)
        ours_ms = cuda_median_ms(lambda: model.postprocess(raw), repeats)
    same = all(torch.equal(ours[key], theirs[key]) for key in ("boxes", "scores", "labels"))
    candidates = raw.logits.shape[0] * (raw.logits.shape[1] - 1)
    return ["Faster R-CNN R50-FPN postprocess", str(candidates), str(len(theirs["boxes"])), f"{theirs_ms:.3f}",
            f"{ours_ms:.3f}", f"{theirs_ms / ours_ms:.2f}x", "yes" if same else "NO"]


def main() -> None:
    """Run every case and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows = [single_class_row(count, clustered, args.repeats)
            for clustered in (False, True) for count in (1000, 5000, 20000, 100000)]
    rows += [batched_row(20000, args.repeats), images_row(16, 5000, args.repeats), faster_rcnn_row(args.repeats)]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"IoU threshold {IOU_THRESHOLD}, median of {args.repeats} (CUDA events)")
    header = ["case", "N", "kept", "torchvision ms", "structured ms", "tv/structured", "same indices"]
    print(render_table(header, rows, args.markdown))


if __name__ == "__main__":
    main()
