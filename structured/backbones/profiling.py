"""Size, compute and CPU latency of backbones in classification mode (the course's comparison table).

Contract: ``profile_backbone(name)`` builds the registered backbone with its classifier and returns a
``BackboneProfile``: parameters, fp32 weight size in MiB (2**20 bytes, as torchvision's tables), GMACs and
GFLOPs of one forward pass at ``image_size`` (counted with ``torch.utils.flop_counter.FlopCounterMode``:
convolutions and matrix products only, 1 MAC = 2 FLOPs; batch norm, activations and pooling are not
counted) and the best CPU latency of a batch of one image over a few runs. ``format_table`` renders rows as markdown,
CSV or aligned text.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from structured.registry import BACKBONES

BYTES_PER_FP32 = 4
MIB = 2**20
TABLE_FORMATS = ("text", "md", "csv")
HEADERS = {
    "name": "backbone",
    "params": "params",
    "size_mib": "fp32 MiB",
    "gmacs": "GMACs",
    "gflops": "GFLOPs",
    "latency_ms": "CPU ms (best)",
}


@dataclass(frozen=True)
class BackboneProfile:
    """One row of the backbone table."""

    name: str
    params: int
    size_mib: float
    gmacs: float
    gflops: float
    latency_ms: float


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(parameter.numel() for parameter in model.parameters())


def count_flops(run: Callable[[Tensor], object], images: Tensor) -> int:
    """FLOPs (2 per multiply-accumulate) of convolutions and matrix products in ``run(images)``."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run(images)
    return counter.get_total_flops()


def best_latency_ms(run: Callable[[Tensor], object], images: Tensor, repeats: int, warmup: int = 2) -> float:
    """Shortest wall time of ``run(images)`` in milliseconds over ``repeats`` runs after ``warmup`` runs.

    The minimum, not the median: on a shared machine other processes only ever add time.
    """
    times = []
    with torch.no_grad():
        for index in range(warmup + repeats):
            start = time.perf_counter()
            run(images)
            if index >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    return min(times)


def profile_backbone(name: str, image_size: int = 224, repeats: int = 5) -> BackboneProfile:
    """Profile registered backbone ``name`` with its classifier on one ``image_size`` x ``image_size`` image."""
    torch.manual_seed(0)
    model = BACKBONES.build(name, classifier=True).eval()
    images = torch.rand(1, 3, image_size, image_size)
    params = count_parameters(model)
    flops = count_flops(model.classify, images)
    return BackboneProfile(
        name=name,
        params=params,
        size_mib=params * BYTES_PER_FP32 / MIB,
        gmacs=flops / 2e9,
        gflops=flops / 1e9,
        latency_ms=best_latency_ms(model.classify, images, repeats),
    )


def format_table(rows: Sequence[BackboneProfile], table_format: str = "text") -> str:
    """Rows as a markdown table (``"md"``), CSV (``"csv"``) or aligned plain text (``"text"``)."""
    if table_format not in TABLE_FORMATS:
        raise ValueError(f"table format must be one of {TABLE_FORMATS}, got {table_format!r}")
    names = [f.name for f in fields(BackboneProfile)]
    if table_format == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)
        return buffer.getvalue()
    header = [HEADERS[n] for n in names]
    cells = [_formatted_cells(row) for row in rows]
    if table_format == "md":
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(names) - 1)) + "|",
        ]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"
    widths = [max(len(text) for text in column) for column in zip(header, *cells, strict=True)]
    return (
        "\n".join(
            "  ".join(t.rjust(w) for t, w in zip(line, widths, strict=True)) for line in [header, *cells]
        )
        + "\n"
    )


def _formatted_cells(row: BackboneProfile) -> list[str]:
    return [
        row.name,
        f"{row.params:,}",
        f"{row.size_mib:.1f}",
        f"{row.gmacs:.2f}",
        f"{row.gflops:.2f}",
        f"{row.latency_ms:.1f}",
    ]
