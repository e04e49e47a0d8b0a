"""Convert box annotations between COCO JSON, Pascal VOC XML and YOLO txt.

Usage: python tools/convert_dataset.py SRC DST --to voc [--from coco] [--images DIR] [--classes a,b,c]
       [--split NAME] [--image-mode symlink|copy|none]
SRC is a COCO .json file, a VOC folder, a YOLO folder or data.yaml (--from: its format, detected when left
out; --images: a COCO file's image folder, found beside it when left out); DST is a new or empty output
folder (a non-empty one is refused, so that no labels of an earlier conversion mix in).
Boxes the reader clipped to the image or dropped (zero area, non-finite) are listed on stderr. Crowd regions
(COCO iscrowd=1) are kept only --to coco: VOC and YOLO have no crowd flag, so they are left out and counted
(not written as VOC difficult, which marks one hard object that training keeps). With --image-mode symlink or
copy, a missing image is an error naming it. See structured/data/convert.py for the layouts written and what
each format can hold.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from structured.cli import reports_usage_errors
from structured.data.convert import (
    ANNOTATION_FORMATS,
    IMAGE_MODES,
    crowd_count,
    read_annotations,
    write_annotations,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="COCO .json file, VOC folder or YOLO folder")
    parser.add_argument("destination", help="new or empty output folder")
    parser.add_argument("--from", dest="source_format", default="auto", choices=("auto", *ANNOTATION_FORMATS))
    parser.add_argument("--to", dest="target_format", required=True, choices=ANNOTATION_FORMATS)
    parser.add_argument("--images", default=None, help="image folder of a COCO source (default: found beside it)")
    parser.add_argument("--classes", default=None, help="comma-separated class names fixing the label order")
    parser.add_argument("--split", default=None, help="VOC ImageSets/Main split (default: every XML) or data.yaml split (default: train)")
    parser.add_argument("--image-mode", default="symlink", choices=IMAGE_MODES)
    return parser.parse_args(argv)


@reports_usage_errors
def main(argv: list[str] | None = None) -> int:
    """Convert and print what was written; exit status 2 for unusable input."""
    args = parse_args(argv)
    classes = args.classes.split(",") if args.classes else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the report below lists the same problems
        annotations = read_annotations(args.source_format, args.source, args.images, classes, args.split)
    if annotations.report or annotations.report.notes:
        print(annotations.report.summary(args.source), file=sys.stderr)
    written = write_annotations(annotations, args.target_format, args.destination, args.image_mode)
    crowd = crowd_count(annotations, args.target_format)
    if crowd:
        print(f"{args.source}: left out {crowd} crowd region(s) (iscrowd=1): {args.target_format} has no crowd flag",
              file=sys.stderr)
    boxes = sum(len(record.labels) for record in annotations.records) - crowd
    print(f"{len(annotations.records)} images, {boxes} boxes, {len(annotations.class_names)} classes -> {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
