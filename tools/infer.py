"""Run a trained detector or segmenter on images, folders, globs or videos.

    python tools/infer.py SOURCE [SOURCE ...] --weights runs/NAME/best.pt [--out outputs/infer] [--score-thr 0.25]
                          [--classes cat dog] [--save-txt] [--device cpu]

The checkpoint's task picks the predictor (structured.load). A detector writes annotated pictures (an
annotated video for a video), predictions.json (COCO results) and, with --save-txt, YOLO label files; a
segmenter writes colour overlays, a class-index PNG per image in masks/ and predictions.json (each image's
mask file and pixels per class; --score-thr: pixels whose best class is less probable become background).
Prints the time of each image. Unreadable inputs are reported and skipped; outputs of inputs with the same
name in different folders get distinct names, and pictures of a format OpenCV cannot write (.jfif, .heic,
none) are written as .jpg (structured.inference.output_names). A run whose outputs would overwrite one of
its inputs (--out the source folder) is refused.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import structured
from structured.cli import reports_usage_errors
from structured.inference import run_inference


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="+",
                        help="image files, folders, glob patterns (quoted: '**' reaches subfolders) or video files")
    parser.add_argument("--weights", required=True, help="training checkpoint (best.pt / last.pt)")
    parser.add_argument("--out", type=Path, default=Path("outputs/infer"))
    parser.add_argument("--score-thr", type=float, default=0.25)
    parser.add_argument("--classes", nargs="+", help="keep only these class names")
    parser.add_argument("--save-txt", action="store_true", help="also write YOLO label files (detectors)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-optimize", dest="optimize", action="store_false",
                        help="run the model as trained, without folding batch norms (same outputs up to rounding)")
    return parser.parse_args(argv)


@reports_usage_errors
def main(argv: list[str] | None = None) -> int:
    """Run inference; exit status 1 when some input was skipped, 2 for unusable input."""
    args = parse_args(argv)
    predictor = structured.load(args.weights, device=args.device, optimize=args.optimize)
    if args.save_txt and not predictor.writes_label_files:
        print(f"note: --save-txt writes detectors' YOLO labels; {args.weights} is a {predictor.tasks[0]} model, "
              "which writes none", file=sys.stderr)
    summary = run_inference(predictor, args.source, args.out, args.score_thr, args.classes, args.save_txt)
    print(f"{timing_summary(summary.seconds)}; {len(summary.skipped)} skipped; results in {args.out}")
    return 1 if summary.skipped else 0


def timing_summary(seconds: list[float]) -> str:
    """The summary of per-image times: ``3 images, median 41.2 ms per image``, or that none was predicted."""
    if not seconds:
        return "no image predicted"
    return f"{len(seconds)} images, median {statistics.median(seconds) * 1e3:.1f} ms per image"


if __name__ == "__main__":
    sys.exit(main())
