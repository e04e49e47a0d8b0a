"""Benchmark tables. ``python tools/benchmark.py backbones [--md | --csv]`` or ``python tools/benchmark.py models``.

``backbones``: for every registered backbone (or ``--names``) in classification mode: parameters, fp32
weight size (MiB), GMACs and GFLOPs at 224x224, and best-of-``--repeats`` CPU latency of one image with ``--threads``
threads. Logic lives in ``structured.backbones.profiling``.

``models``: for every registered recipe (or ``--names``: registered names or recipe YAML files), then the recipe
files of ``--recipes`` (such as configs/demo/*.yaml): task, model and backbone, classes, the padded input its backbone sees for one
``--image-size`` image, parameters, fp32 MiB, GFLOPs, detections, best-of-``--repeats`` CPU latency and FPS at batch 1
with ``--threads`` threads, the GPU's when CUDA is there (``--device``), and the accuracy of ``--metrics`` files
(metrics.json from tools/eval.py). Prints the caption and the markdown table; ``--md``, ``--csv`` and ``--plot``
(accuracy against log time, one labelled point per model with an accuracy) write files. Logic lives in
``structured.evaluation.profiling``.

    python tools/benchmark.py models --names ssdlite320_mobilenet_v3_large configs/demo/shapes_unet.yaml \
        --data-classes 5 --metrics runs/*/eval/metrics.json --md table.md --csv table.csv --plot speed.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from structured.backbones.profiling import format_table, profile_backbone
from structured.cli import count_at_least, reports_usage_errors
from structured.evaluation.metrics_file import read_accuracy
from structured.evaluation.plots import plot_speed_accuracy
from structured.evaluation.profiling import (
    ModelProfile,
    ProfileSettings,
    add_accuracy,
    caption,
    check_unique_labels,
    format_models,
    model_spec,
    profile_model,
    speed_accuracy_points,
)
from structured.io import write_text
from structured.registry import BACKBONES, list_models


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    backbones = commands.add_parser("backbones", help="params, size, GFLOPs and CPU latency of each backbone")
    output = backbones.add_mutually_exclusive_group()
    output.add_argument("--md", dest="table_format", action="store_const", const="md", help="markdown table")
    output.add_argument("--csv", dest="table_format", action="store_const", const="csv", help="CSV")
    backbones.add_argument("--names", nargs="+", default=None, help="backbones to profile (default: all)")
    backbones.add_argument("--image-size", type=count_at_least(1), default=224, help="square input size (default 224)")
    backbones.add_argument("--repeats", type=count_at_least(1), default=5, help="timed runs per backbone (default 5)")
    backbones.add_argument("--threads", type=count_at_least(1), default=2, help="torch CPU threads (default 2)")
    backbones.set_defaults(table_format="text")
    add_models_parser(commands)
    return parser.parse_args(argv)


def add_models_parser(commands: argparse._SubParsersAction) -> None:
    """The ``models`` command's arguments."""
    models = commands.add_parser("models", help="size, GFLOPs, speed and accuracy of each detector / segmenter")
    models.add_argument("--names", nargs="+", default=None,
                        help="registered recipes or recipe YAML files (default: every registered recipe)")
    models.add_argument("--recipes", nargs="+", default=[],
                        help="recipe YAML files to add after the --names rows (e.g. configs/demo/*.yaml)")
    models.add_argument("--metrics", nargs="+", type=Path, default=[],
                        help="metrics.json files of tools/eval.py; each fills its recipe's accuracy")
    models.add_argument("--md", type=Path, help="write the caption and markdown table here")
    models.add_argument("--csv", type=Path, help="write the table as CSV here")
    models.add_argument("--plot", type=Path, help="write the speed-accuracy scatter (PNG) here")
    models.add_argument("--image-size", type=count_at_least(1), nargs=2, default=[480, 640], metavar=("HEIGHT", "WIDTH"),
                        help="the image fed to every model (default 480 640)")
    models.add_argument("--repeats", type=count_at_least(1), default=3, help="timed runs per model (default 3)")
    models.add_argument("--threads", type=count_at_least(1), default=2, help="torch CPU threads (default 2)")
    models.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="cuda: time on the GPU too; auto: when CUDA is available (default)")
    models.add_argument("--no-timing", dest="timing", action="store_false",
                        help="only the deterministic columns (params, MiB, GFLOPs, network input, dets)")
    models.add_argument("--data-classes", type=count_at_least(1), default=None,
                        help="num_classes for recipe files that take it from their data (e.g. 5 for configs/demo)")


@reports_usage_errors
def main(argv: list[str] | None = None) -> int:
    """Print the requested table; exit status 2 for unusable input (an unknown backbone name)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "models":
        return run_models(args)
    names = args.names or BACKBONES.names()
    rows = []
    for name in names:
        rows.append(profile_backbone(name, image_size=args.image_size, repeats=args.repeats))
        print(f"profiled {name}", file=sys.stderr, flush=True)
    print(format_table(rows, args.table_format), end="")
    return 0


def run_models(args: argparse.Namespace) -> int:
    """The ``models`` command: profile each recipe, fill the accuracy, print and write the outputs."""
    if args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {args.repeats}")
    specs = [model_spec(name, args.data_classes) for name in [*(args.names or list_models()), *args.recipes]]
    check_unique_labels(specs)
    settings = ProfileSettings(tuple(args.image_size), args.repeats, args.timing, gpu_device(args.device))
    recorded = [read_accuracy(path) for path in args.metrics]
    rows: list[ModelProfile] = []
    for spec in specs:
        rows.append(profile_model(spec, settings))
        print(f"profiled {spec.source}", file=sys.stderr, flush=True)
    rows, notes = add_accuracy(rows, recorded)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    text = caption(settings, torch.get_num_threads()) + "\n\n" + format_models(rows, "md")
    print(text, end="")
    if args.md:
        write_text(text, args.md)
    if args.csv:
        write_text(format_models(rows, "csv"), args.csv)
    if args.plot:
        write_plot(rows, args.plot, settings)
    return 0


def gpu_device(choice: str) -> torch.device | None:
    """The GPU to time on: ``cuda`` (``ValueError`` without CUDA), ``auto`` when there is one, else none."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available; use --device cpu or auto")
    return torch.device("cuda") if choice != "cpu" and torch.cuda.is_available() else None


def write_plot(rows: list[ModelProfile], path: Path, settings: ProfileSettings) -> None:
    """The speed-accuracy scatter of the rows with an accuracy, or a note that none has one."""
    points = speed_accuracy_points(rows)
    if not points:
        print(f"note: no timed row has an accuracy (give --metrics metrics.json files), so {path} was not written",
              file=sys.stderr)
        return
    device = "GPU" if settings.gpu is not None else f"CPU, {torch.get_num_threads()} threads"
    plot_speed_accuracy(points, path, f"time per {settings.image_size[0]}x{settings.image_size[1]} image, ms "
                        f"({device}, batch 1; log scale)")
    print(f"wrote {path} ({len(points)} of {len(rows)} models have an accuracy)", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
