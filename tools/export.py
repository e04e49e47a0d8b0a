"""Export a trained model to ONNX or TorchScript and check the file against PyTorch.

    python tools/export.py CHECKPOINT --out PATH [--format onnx|torchscript] [--no-dynamic] [--no-verify]

Without --format the format follows the suffix of --out (.onnx: ONNX; .pt, .pth, .ts: TorchScript); with it, a
suffix of the other format is refused.

The checkpoint's task picks the model (structured.load); the graph takes a float RGB image in [0, 1],
``image [1, 3, H, W]`` (the UNet: any batch of same-size images), runs the model's resizing, normalisation,
network and post-processing inside, and returns the named outputs (boxes, scores, labels, Mask R-CNN's masks;
the UNet's mask and probabilities). With --no-dynamic the ONNX graph accepts only the traced size,
``image [1, 3, 240, 320]``: resize or pad images to it. With --verify (the default) the exported file runs
(onnxruntime for ONNX) on three images of different sizes (a fixed-size graph: three of its size) and must give
PyTorch's outputs; each check is printed, and a file that fails is removed. An unknown format, an unusable
checkpoint (an exported model, weights that are not finite) or output path, or a failed check is one error line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from structured.cli import reports_usage_errors
from structured.export import (
    EXAMPLE_SIZE,
    FORMATS,
    ExportError,
    check_output_path,
    export_model,
    format_for,
    load_predictor,
    verification_images,
    verification_sizes,
    verify_export,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="training checkpoint (best.pt / last.pt)")
    parser.add_argument("--format", help=f"one of {', '.join(FORMATS)} (default: from the suffix of --out)")
    parser.add_argument("--out", type=Path, required=True, help="the exported file to write")
    parser.add_argument("--no-dynamic", dest="dynamic", action="store_false",
                        help=f"ONNX: fix the input to the traced shape, image [1, 3, {EXAMPLE_SIZE[0]}, "
                             f"{EXAMPLE_SIZE[1]}], the only one the graph then accepts (dynamic height and width by "
                             "default)")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip running the exported file against PyTorch")
    return parser.parse_args(argv)


@reports_usage_errors
def main(argv: list[str] | None = None) -> int:
    """Export, then verify unless told not to; exit status 2 for unusable input or a failed verification."""
    args = parse_args(argv)
    args.format = format_for(args.out, args.format)
    check_output_path(args.out, args.checkpoint)
    predictor = load_predictor(args.checkpoint)
    path = export_model(predictor.model, args.out, args.format, args.dynamic, predictor.class_names)
    fixed_input = f"fixed input image [1, 3, {EXAMPLE_SIZE[0]}, {EXAMPLE_SIZE[1]}], " \
        if args.format == "onnx" and not args.dynamic else ""
    print(f"wrote {path} ({args.format}, {type(predictor.model).__name__}, {fixed_input}outputs "
          f"{', '.join(predictor.model.EXPORT_OUTPUTS)})")
    if args.verify:
        images = verification_images(verification_sizes(args.format, args.dynamic))
        try:
            checks = verify_export(path, predictor.model, images, args.format)
        except ExportError:
            path.unlink()  # no file that gives other outputs than the model
            raise
        for check in checks:
            height, width = images[check.image].shape[-2:]
            print(f"image {check.image} ({height}x{width}) {check.name} {list(check.shape)}: difference "
                  f"{check.difference:g} (tolerance {check.tolerance:g})")
        print(f"verified: {len(checks)} checks within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
