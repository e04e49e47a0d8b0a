"""Grad-CAM heatmaps of a trained model's predictions on one image: which regions a detection or a class
comes from (structured.explain).

    python tools/gradcam.py IMAGE --weights runs/NAME/best.pt [--out outputs/gradcam] [--level p3]
                            [--detection K | --class NAME] [--score-thr 0.25] [--limit 8] [--device cpu]

The checkpoint's task picks the predictor (structured.load): for a detector (Faster R-CNN, Mask R-CNN, SSD)
one overlay per detection — detection K (an index into its detections, by score), or else every detection
scoring at least --score-thr (of class NAME with --class), at most --limit — with the detection's box drawn;
for a segmenter (UNet) one per class — NAME, or else the classes it finds in the image. Also a sheet of
them all (IMAGE_gradcam.png). --level is a backbone map (c2..c5) or a neck map (p2..p6), default the
backbone's deepest; a bad level lists the model's levels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import structured
from structured.api import check_score_threshold
from structured.cli import count_at_least, reports_usage_errors
from structured.data.loading import read_image
from structured.explain import save_explanations


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", type=Path, help="image file")
    parser.add_argument("--weights", required=True, help="training checkpoint (best.pt / last.pt)")
    parser.add_argument("--out", type=Path, default=Path("outputs/gradcam"))
    parser.add_argument("--level", help="feature map to explain at (c<k> backbone, p<k> neck); default the deepest c<k>")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--detection", type=int, help="index of the detection to explain (detectors)")
    chosen.add_argument("--class", dest="class_name", help="class to explain (its detections, or its pixels)")
    parser.add_argument("--score-thr", type=float, default=0.25, help="detections scoring less are not explained")
    parser.add_argument("--limit", type=count_at_least(1), default=8, help="at most this many detections or classes")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


@reports_usage_errors
def main(argv: list[str] | None = None) -> int:
    """Write the overlays; exit status 1 when there is nothing to explain, 2 for unusable input."""
    args = parse_args(argv)
    check_score_threshold(args.score_thr)
    predictor = structured.load(args.weights, device=args.device)
    image = read_image(args.image)
    explanations = predictor.explain(image, args.level, args.detection, args.class_name, args.score_thr, args.limit)
    if not explanations:
        print(f"nothing to explain in {args.image}: no detection or class above --score-thr {args.score_thr}")
        return 1
    for explanation in explanations:
        zero = "" if explanation.heatmap.any() else " (all zero: nothing at this level raises the output)"
        print(f"{explanation.title} @ {explanation.level}: output {explanation.value:.4f}{zero}")
    paths = save_explanations(image, explanations, args.out, args.image.stem, predictor.class_names)
    print(f"{len(paths) - 1} overlays and the sheet {paths[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
