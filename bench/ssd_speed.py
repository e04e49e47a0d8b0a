"""SSD speed on the CPU: ours vs torchvision (same weights), training steps, and FPS beside the paper's table.

1. Latency of ``ssd300_vgg16`` and ``ssdlite320_mobilenet_v3_large``: torchvision's model with seeded
   weights (batch-norm statistics of random images), our converted model as trained and after
   ``optimize_for_inference()``, on the same image (``bench.detector_speed.bench_image``: a raccoon photo
   when the shared data is there), taking turns; the best of ``--runs`` and the ratios ours / torchvision.
2. A training step (forward, backward, SGD step) of both at the same batch (``--train-batch`` images of
   the same photo with one box), same weights and targets, taking turns: best step time and the ratio.
3. FPS of our SSD300, SSD512 (VGG16) and Faster R-CNN VGG16 (600 / 1000) at batch 1 and 8, optimized, next
   to the course's Titan X figures (SSD300 46 FPS, SSD512 19, Faster R-CNN VGG16 7).

Threads: ``torch.set_num_threads(--threads)``. Ratios are measured in one process, so a machine shared
with other work changes absolute times more than the ratios.

    python bench/ssd_speed.py [--runs 3] [--threads 2] [--train-batch 4] [--skip-fps]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import ssd300_vgg16, ssdlite320_mobilenet_v3_large

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.detector_speed import bench_image, max_box_difference, time_runners
from structured.convert.torchvision import convert_ssd
from structured.registry import MODELS

PAIRS = {"ssd300_vgg16": ssd300_vgg16, "ssdlite320_mobilenet_v3_large": ssdlite320_mobilenet_v3_large}
PAPER_FPS = {"ssd300_vgg16": 46, "ssd512_vgg16": 19, "faster_rcnn_vgg16": 7}
TARGET = {"boxes": torch.tensor([[120.0, 90.0, 400.0, 420.0]]), "labels": torch.tensor([1])}


@torch.no_grad()
def torchvision_ssd(name: str) -> nn.Module:
    """torchvision's ``name`` with seeded weights and batch-norm statistics of random images (COCO's 91 outputs)."""
    torch.manual_seed(0)
    model = PAIRS[name](weights=None, weights_backbone=None)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 1.0
    model.train()
    model.backbone(torch.rand(2, 3, 320, 320))
    return model.eval()


def ours_from(reference: nn.Module, name: str) -> nn.Module:
    """Our recipe ``name`` with ``reference``'s weights."""
    model = MODELS.build(name).eval()
    model.load_state_dict(convert_ssd(reference.state_dict(), name))
    return model


def latency_rows(image: torch.Tensor, runs: int) -> list[str]:
    """Markdown rows: best latency of torchvision, ours, ours optimized, the ratios and the box difference."""
    rows = []
    for name in PAIRS:
        reference = torchvision_ssd(name)
        ours, optimized = ours_from(reference, name), ours_from(reference, name).optimize_for_inference()
        runners = [lambda model=model: model([image])[0] for model in (reference, ours, optimized)]
        times, outputs = time_runners(runners, runs)
        best = [min(t) for t in times]
        rows.append(f"| {name} | {best[0] * 1e3:.0f} ms | {best[1] * 1e3:.0f} ms | {best[2] * 1e3:.0f} ms | "
                    f"{best[1] / best[0]:.2f} | {best[2] / best[0]:.2f} | "
                    f"{max_box_difference(outputs[0], outputs[2]):.1e} |")
    return rows


def training_step(model: nn.Module, images: list[torch.Tensor], targets: list[dict], optimizer) -> None:
    """One forward, backward and SGD step on ``images`` (gradients on inside ``time_runners``' no-grad)."""
    with torch.enable_grad():
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()


def training_rows(image: torch.Tensor, batch: int, runs: int) -> list[str]:
    """Markdown rows: best training step of torchvision and ours at ``batch``, and the ratio."""
    rows = []
    images, targets = [image] * batch, [TARGET] * batch
    for name in PAIRS:
        reference = torchvision_ssd(name)
        ours = ours_from(reference, name)
        steps = []
        for model in (reference, ours):
            model.train()
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
            steps.append(lambda model=model, optimizer=optimizer: training_step(model, images, targets, optimizer))
        times, _ = time_runners(steps, runs)
        best = [min(t) for t in times]
        rows.append(f"| {name} | {batch} | {best[0]:.2f} s | {best[1]:.2f} s | {best[1] / best[0]:.2f} |")
    return rows


@torch.no_grad()
def fps_rows(image: torch.Tensor, runs: int) -> list[str]:
    """Markdown rows: our FPS at batch 1 and 8 (optimized) of SSD300, SSD512 and Faster R-CNN VGG16."""
    rows = []
    for name, paper in PAPER_FPS.items():
        torch.manual_seed(0)
        options = {"num_classes": 20}
        model = MODELS.build(name, **options).optimize_for_inference()
        fps = []
        for batch in (1, 8):
            times, _ = time_runners([lambda batch=batch, model=model: model([image] * batch)], runs)
            fps.append(batch / min(times[0]))
        transform = model.transform
        size = f"{transform.size}x{transform.size}" if hasattr(transform, "size") else \
            f"{transform.min_sizes[-1]} / {transform.max_size}"
        rows.append(f"| {name} | {size} | {fps[0]:.2f} | {fps[1]:.2f} | {paper} |")
    return rows


def main() -> None:
    """Run the three measurements and print markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--skip-fps", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image, source = bench_image()
    print(f"image: {source} {tuple(image.shape[1:])}, threads {args.threads}, best of {args.runs}\n")
    print("| model | torchvision | ours | ours optimized | ours / tv | optimized / tv | max box diff |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(latency_rows(image, args.runs)), flush=True)
    print("\n| model | batch | torchvision step | our step | ours / tv |\n|---|---|---|---|---|")
    print("\n".join(training_rows(image, args.train_batch, args.runs)), flush=True)
    if not args.skip_fps:
        start = time.perf_counter()
        print("\n| model (VOC, 20 classes) | input | FPS batch 1 | FPS batch 8 | paper, Titan X |\n|---|---|---|---|---|")
        print("\n".join(fps_rows(image, args.runs)))
        print(f"\n(FPS measured in {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
