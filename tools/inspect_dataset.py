"""Inspect a dataset: counts of images, boxes per class, sizes and problems, and a mosaic PNG of samples.

Usage: python tools/inspect_dataset.py DATA [--format auto|coco|voc|yolo|folders] [--images DIR]
       [--split NAME] [--mosaic mosaic.png] [--samples 16]
DATA is a COCO .json file, a VOC folder, a YOLO folder or data.yaml, or a DSB2018-style mask folder.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from structured.cli import count_at_least, reports_usage_errors
from structured.data.summary import (
    DATASET_FORMATS,
    format_summary,
    open_dataset,
    summarize_dataset,
    write_mosaic,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="COCO .json file, VOC / YOLO / mask folder")
    parser.add_argument("--format", default="auto", choices=DATASET_FORMATS)
    parser.add_argument("--images", default=None, help="image folder of a COCO file (default: guessed)")
    parser.add_argument("--split", default=None, help="VOC ImageSets/Main split (default: every XML) or data.yaml split (default: train)")
    parser.add_argument("--mosaic", default="mosaic.png", help="output PNG of annotated samples ('' for none)")
    parser.add_argument("--samples", type=count_at_least(1), default=16, help="number of samples in the mosaic")
    return parser.parse_args(argv)


@reports_usage_errors
def main(argv: list[str] | None = None) -> int:
    """Print the summary, write the mosaic; exit status 1 when problems were found, 2 for unusable input."""
    args = parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the summary lists the same problems
        dataset = open_dataset(args.data, args.format, args.images, args.split)
    summary = summarize_dataset(dataset)
    print(format_summary(summary, args.data))
    if args.mosaic:
        print(f"mosaic: {write_mosaic(dataset, args.mosaic, count=args.samples)}")
    return 1 if summary.problems else 0


if __name__ == "__main__":
    sys.exit(main())
