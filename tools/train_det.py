"""Train a detector or a segmenter from a recipe: python tools/train_det.py CONFIG [options].

Usage: python tools/train_det.py configs/faster_rcnn/faster_rcnn_r18_fpn.yaml
           [--data PATH] [--set train.lr=0.01 ...] [--out runs/NAME] [--resume] [--weights W] [--device D]
Multi-GPU / multi-node: torchrun --nproc_per_node=N tools/train_det.py CONFIG ...

--data PATH   train on the dataset at PATH (COCO .json, VOC folder, YOLO folder or data.yaml, mask folder; for a
              semantic model also VOC SegmentationClass and images/ + masks/; format guessed) instead of the
              recipe's; model.num_classes is then taken from the data. A data.yaml (or VOCdevkit) with train
              and val splits trains on train and validates on val. The recipe's val, splits and image root
              are dropped; those given with --set (data.val=PATH) stay.
--resume      continue the run in --out exactly where its last.pt stopped (model, optimizer, schedule,
              AMP scaler, epoch and position in it, random states).
--weights W   start a new run from the model weights of checkpoint W (sets train.init_from; nothing else is
              loaded). W may have other classes: the class-specific layers start afresh, except the rows of
              classes of the same name, and a line says what was loaded and re-initialised.
The run folder (default runs/<config name>) receives config.yaml, log.jsonl, metrics.csv, loss.png,
map.png (miou.png for a semantic model), last.pt and best.pt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from structured.cli import reports_usage_errors
from structured.config import load_config
from structured.data.recipes import use_data_path
from structured.engine import NonFiniteLossError, shutdown_distributed, train_from_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="recipe YAML (model:, data:, train: sections)")
    parser.add_argument("--data", default=None, help="dataset path replacing the recipe's data.train")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override recipe values, e.g. train.lr=0.01 data.batch_size=4")
    parser.add_argument("--out", default=None, help="run folder (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    parser.add_argument("--weights", default=None, help="initialise the model from this checkpoint's weights")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    return parser.parse_args(argv)


@reports_usage_errors
def main(argv: list[str] | None = None) -> int:
    """Train; exit status 2 for unusable input, 1 when training stopped on a non-finite loss."""
    args = parse_args(argv)
    if args.resume and args.weights:
        raise ValueError("--resume continues a run with all its state; --weights starts a new one. Pick one.")
    try:
        config = load_config(args.config, args.overrides)
        if args.data is not None:
            use_data_path(config, args.data)
        if args.device is not None:
            config.set("train.device", args.device)
        out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
        if args.weights is not None:
            config.set("train.init_from", args.weights)
        best = train_from_config(config, out, resume=args.resume)
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        shutdown_distributed()
    if best["value"] is not None:
        print(f"best {best['metric']} {best['value']:.4f} at epoch {best['epoch']}; run folder {out}")
    else:
        print(f"run folder {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
