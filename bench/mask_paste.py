"""Mask pasting: structured's batched ``paste_masks`` vs torchvision's ``paste_masks_in_image``, in one run.

K detections (28 x 28 probabilities, boxes of 20-400 px at random places inside an 800 x 1066
image), the contenders taking turns in rotating order; median milliseconds of the repeats and the
ratio structured / torchvision (below 1 = faster). Also timed:

- ``+ threshold``: the paste followed by ``masks > 0.5`` over the whole output, what a consumer does.

Each structured result is checked against torchvision's (max |difference| per pixel).

    python -m bench.mask_paste [--repeats 9] [--threads 1] [--counts 20 100 300] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import subprocess
from collections.abc import Callable

import torch
import torchvision
from torchvision.models.detection.roi_heads import paste_masks_in_image

from bench.coco_eval import thread_report
from bench.nms_cpu import render_table, time_round_robin
from structured.detection.masks import paste_masks

IMAGE_SIZE = (800, 1066)
MASK_SIDE = 28
BOX_SIDES = (20.0, 400.0)


def make_detections(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded mask probabilities [K, 28, 28] and boxes [K, 4] of 20-400 px inside the image."""
    generator = torch.Generator().manual_seed(seed)
    height, width = IMAGE_SIZE
    low, high = BOX_SIDES
    size = low + torch.rand(count, 2, generator=generator) * (high - low)
    corner = torch.rand(count, 2, generator=generator) * (torch.tensor([width, height]) - size)
    return torch.rand(count, MASK_SIDE, MASK_SIDE, generator=generator), torch.cat([corner, corner + size], dim=1)


def contenders_for(masks: torch.Tensor, boxes: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The timed closures, all on the same detections."""
    return {
        "structured": lambda: paste_masks(masks, boxes, IMAGE_SIZE),
        "torchvision": lambda: paste_masks_in_image(masks[:, None], boxes, IMAGE_SIZE),
        "structured + threshold": lambda: paste_masks(masks, boxes, IMAGE_SIZE) > 0.5,
        "torchvision + threshold": lambda: paste_masks_in_image(masks[:, None], boxes, IMAGE_SIZE) > 0.5,
    }


def benchmark_count(count: int, repeats: int) -> dict[str, float]:
    """Median ms of every contender for K = count, and structured's largest difference from torchvision."""
    masks, boxes = make_detections(count, seed=count)
    difference = (paste_masks(masks, boxes, IMAGE_SIZE) - paste_masks_in_image(masks[:, None], boxes, IMAGE_SIZE)[:, 0])
    return {"K": count, "max_diff": float(difference.abs().max()),
            **time_round_robin(contenders_for(masks, boxes), repeats)}


def cpu_model_name() -> str:
    """lscpu's "Model name" (the platform's processor string where lscpu is missing)."""
    try:
        listing = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return os.uname().machine
    names = [line.split(":", 1)[1].strip() for line in listing.splitlines() if line.startswith("Model name")]
    return names[0] if names else os.uname().machine


def format_table(rows: list[dict[str, float]], markdown: bool) -> str:
    """The results as a plain or markdown table."""
    header = ["K", "torchvision ms", "structured ms", "structured/tv", "tv + thr ms", "structured + thr ms",
              "ratio + thr", "max |diff|"]
    lines = [[str(row["K"]), f"{row['torchvision']:.1f}", f"{row['structured']:.1f}",
              f"{row['structured'] / row['torchvision']:.3f}", f"{row['torchvision + threshold']:.1f}",
              f"{row['structured + threshold']:.1f}",
              f"{row['structured + threshold'] / row['torchvision + threshold']:.3f}",
              f"{row['max_diff']:.1e}"] for row in rows]
    return render_table(header, lines, markdown)


def main() -> None:
    """Run every K and print the table with the machine it ran on."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--counts", type=int, nargs="+", default=[20, 100, 300])
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows = [benchmark_count(count, args.repeats) for count in args.counts]
    print(f"CPU {cpu_model_name()}; {thread_report()}; torch {torch.__version__}, torchvision "
          f"{torchvision.__version__}; image {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, boxes {BOX_SIDES[0]:.0f}-"
          f"{BOX_SIDES[1]:.0f} px, median of {args.repeats}; load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    print(format_table(rows, args.markdown))


if __name__ == "__main__":
    main()
