"""Data-loading throughput: our COCO loader + training augmentation vs torchvision's, at 0 and 2 workers.

Both sides read the same generated synthetic COCO dataset and apply the same kind of SSD-style training
pipeline (photometric distortion, zoom-out, IoU crop, horizontal flip, resize to a 288 px short side):
ours is ``CocoDetection`` + ``structured.data.transforms.training_transforms`` (OpenCV decoding);
torchvision's is ``torchvision.datasets.CocoDetection`` wrapped for ``transforms.v2`` (PIL decoding).
Each configuration is timed over whole epochs after one warm-up epoch; the figure is images per second.

Usage: python bench/data_loading.py [--images 200] [--size 288] [--epochs 2] [--workers 0 2] [--masks]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from structured.data.coco import CocoDetection
from structured.data.loading import build_dataloader, collate_detection
from structured.data.synthetic import generate_dataset
from structured.data.transforms import training_transforms


def ours(root: Path, size: int, masks: bool) -> Dataset:
    """Our COCO dataset with the typical training pipeline."""
    return CocoDetection(root / "annotations" / "instances_train.json", root / "JPEGImages",
                         transforms=training_transforms(size), with_masks=masks)


def torchvision_peer(root: Path, size: int, masks: bool) -> Dataset:
    """torchvision's COCO dataset with the equivalent transforms.v2 pipeline."""
    from torchvision import datasets
    from torchvision.transforms import v2

    pipeline = v2.Compose([
        v2.RandomPhotometricDistort(), v2.RandomZoomOut(side_range=(1.0, 2.0)), v2.RandomIoUCrop(),
        v2.RandomHorizontalFlip(), v2.Resize(size), v2.SanitizeBoundingBoxes(), v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
    ])
    keys = ("boxes", "labels", "masks") if masks else ("boxes", "labels")
    dataset = datasets.CocoDetection(str(root / "JPEGImages"), str(root / "annotations" / "instances_train.json"),
                                     transforms=pipeline)
    return datasets.wrap_dataset_for_transforms_v2(dataset, target_keys=keys)


def images_per_second(make_loader: Callable[[], DataLoader], epochs: int) -> float:
    """Throughput over ``epochs`` full passes after one warm-up pass (workers started, caches filled)."""
    loader = make_loader()
    for _ in loader:
        pass
    start = time.perf_counter()
    count = 0
    for _ in range(epochs):
        for images, _ in loader:
            count += len(images)
    return count / (time.perf_counter() - start)


def main() -> None:
    """Generate the data, time every (loader, workers) pair, print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=288)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--masks", action="store_true", help="also decode instance masks")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        # no negatives: torchvision's RandomIoUCrop refuses images without boxes
        root = generate_dataset(folder, num_train=args.images, num_val=0, image_size=args.size, seed=0,
                                formats=("coco",), empty_probability=0.0)
        print(f"{args.images} synthetic {args.size}x{args.size} JPEGs, batch 8, masks={args.masks}, "
              f"torch threads 1\n")
        print("| workers | structured (img/s) | torchvision v2 (img/s) | ratio |")
        print("|---|---|---|---|")
        for workers in args.workers:
            ours_rate = images_per_second(
                lambda w=workers: build_dataloader(ours(root, args.size, args.masks), batch_size=8, num_workers=w),
                args.epochs)
            peer_rate = images_per_second(
                lambda w=workers: DataLoader(torchvision_peer(root, args.size, args.masks), batch_size=8, shuffle=True,
                                             num_workers=w, collate_fn=collate_detection),
                args.epochs)
            print(f"| {workers} | {ours_rate:.0f} | {peer_rate:.0f} | {ours_rate / peer_rate:.2f} |")


if __name__ == "__main__":
    main()
