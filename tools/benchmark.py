"""Benchmark tables. ``python tools/benchmark.py backbones [--md | --csv]``.

``backbones``: for every registered backbone (or ``--names``) in classification mode: parameters, fp32
weight size (MiB), GMACs and GFLOPs at 224x224, and best-of-``--repeats`` CPU latency of one image with ``--threads``
threads. Logic lives in ``structured.backbones.profiling``.
"""

from __future__ import annotations

import argparse
import sys

import torch

from structured.backbones.profiling import format_table, profile_backbone
from structured.cli import reports_usage_errors
from structured.registry import BACKBONES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    backbones = commands.add_parser("backbones", help="params, size, GFLOPs and CPU latency of each backbone")
    output = backbones.add_mutually_exclusive_group()
    output.add_argument("--md", dest="table_format", action="store_const", const="md", help="markdown table")
    output.add_argument("--csv", dest="table_format", action="store_const", const="csv", help="CSV")
    backbones.add_argument("--names", nargs="+", default=None, help="backbones to profile (default: all)")
    backbones.add_argument("--image-size", type=int, default=224, help="square input size (default 224)")
    backbones.add_argument("--repeats", type=int, default=5, help="timed runs per backbone (default 5)")
    backbones.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    backbones.set_defaults(table_format="text")
    return parser.parse_args(argv)


@reports_usage_errors
def main(argv: list[str] | None = None) -> int:
    """Print the requested table; exit status 2 for unusable input (an unknown backbone name)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.names or BACKBONES.names()
    rows = []
    for name in names:
        rows.append(profile_backbone(name, image_size=args.image_size, repeats=args.repeats))
        print(f"profiled {name}", file=sys.stderr, flush=True)
    print(format_table(rows, args.table_format), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
