"""Counting and timing primitives for a model, and the tables they fill (one copy for every profile table).

Contract: ``count_parameters`` (sum of ``numel``), ``fp32_mib`` (4 bytes a parameter, MiB = 2**20 bytes, as
torchvision's tables), ``count_flops`` (``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix
products, 2 FLOPs per multiply-accumulate; batch norm, activations, pooling, RoIAlign and NMS are not counted),
``best_latency_ms`` (the minimum wall time over a few runs, CUDA synchronised around each) and ``synchronize``.
``render_table`` writes rows as markdown, CSV or aligned text. The backbone table
(``structured.backbones.profiling``), the model table (``structured.evaluation.profiling``) and the speed
measurements (``structured.evaluation.speed``) stand on these. Importing this module loads only torch.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

BYTES_PER_FP32 = 4
MIB = 2**20
TABLE_FORMATS = ("text", "md", "csv")


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(parameter.numel() for parameter in model.parameters())


def fp32_mib(params: int) -> float:
    """Size in MiB (2**20 bytes) of ``params`` float32 values."""
    return params * BYTES_PER_FP32 / MIB


def count_flops(run: Callable[[Any], object], images: Any) -> int:
    """FLOPs (2 per multiply-accumulate) of convolutions and matrix products in ``run(images)``."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run(images)
    return counter.get_total_flops()


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_latency_ms(run: Callable[[Any], object], images: Any, repeats: int, warmup: int = 2,
                    device: torch.device | None = None) -> float:
    """Shortest wall time of ``run(images)`` in milliseconds over ``repeats`` runs after ``warmup`` runs.

    The minimum, not the median: on a shared machine other processes only ever add time. On a CUDA ``device``
    the clock is read after synchronising, so each time covers the queued kernels.
    """
    device = device or torch.device("cpu")
    times = []
    with torch.no_grad():
        for index in range(warmup + repeats):
            synchronize(device)
            start = time.perf_counter()
            run(images)
            synchronize(device)
            if index >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    return min(times)


def render_table(headers: Sequence[str], cells: Sequence[Sequence[str]], records: Sequence[Mapping[str, Any]],
                 table_format: str = "text") -> str:
    """A table as markdown (``"md"``: the first column left-aligned, the others right-aligned), CSV (``"csv"``:
    ``records``, the raw values under their keys) or aligned plain text (``"text"``); ``headers`` and ``cells``
    are the formatted text of the markdown and text forms."""
    if table_format not in TABLE_FORMATS:
        raise ValueError(f"table format must be one of {TABLE_FORMATS}, got {table_format!r}")
    if table_format == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]) if records else [], lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return buffer.getvalue()
    if table_format == "md":
        lines = [
            "| " + " | ".join(headers) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
        ]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"
    widths = [max(len(text) for text in column) for column in zip(headers, *cells, strict=True)]
    return (
        "\n".join(
            "  ".join(t.rjust(w) for t, w in zip(line, widths, strict=True)) for line in [headers, *cells]
        )
        + "\n"
    )
