"""Convert a torchvision Faster R-CNN, Mask R-CNN or SSD checkpoint into ours.

python tools/convert_torchvision.py fasterrcnn_resnet50_fpn_coco.pth r50.pt --model faster_rcnn_r50_fpn --norm-eps 0
python tools/convert_torchvision.py maskrcnn_resnet50_fpn_coco.pth mask_r50.pt --model maskrcnn_resnet50_fpn --norm-eps 0
python tools/convert_torchvision.py ssd300_vgg16_coco.pth ssd300.pt --model ssd300_vgg16
python tools/convert_torchvision.py ssdlite320_mobilenet_v3_large_coco.pth ssdlite.pt --model ssdlite320_mobilenet_v3_large

The source is a torchvision state dict, also wrapped as {"model": ...} or {"state_dict": ...}; the destination
is the checkpoint file to write (a folder is refused). A state dict of another model is an error naming its keys.
"""

from __future__ import annotations

import argparse
import sys

from structured.cli import reports_usage_errors
from structured.convert.torchvision import TORCHVISION_MODELS, convert_checkpoint_file


@reports_usage_errors
def main(argv: list[str] | None = None) -> int:
    """Parse arguments, convert, print what was written; exit status 2 for unusable input."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", help="torchvision state dict (.pth)")
    parser.add_argument("destination", help="output checkpoint file (.pt)")
    choices = sorted({*TORCHVISION_MODELS, *TORCHVISION_MODELS.values()})
    parser.add_argument(
        "--model", required=True, choices=choices, help="our recipe or torchvision's model name"
    )
    parser.add_argument(
        "--norm-eps", type=float, default=None, help="batch-norm eps, >= 0 (0 for torchvision's COCO r50)"
    )
    args = parser.parse_args(argv)
    checkpoint = convert_checkpoint_file(args.source, args.destination, args.model, args.norm_eps)
    print(f"wrote {args.destination}: {checkpoint['config']['model']}, {len(checkpoint['model'])} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
