"""Size, compute and CPU latency of backbones in classification mode (the course's comparison table).

Contract: ``profile_backbone(name)`` builds the registered backbone with its classifier and returns a
``BackboneProfile``: parameters, fp32 weight size in MiB (2**20 bytes, as torchvision's tables), GMACs and
GFLOPs of one forward pass at ``image_size`` (counted with ``torch.utils.flop_counter.FlopCounterMode``:
convolutions and matrix products only, 1 MAC = 2 FLOPs; batch norm, activations and pooling are not
counted) and the best CPU latency of a batch of one image over a few runs. ``format_table`` renders rows as markdown,
CSV or aligned text.

The counting, timing and table primitives are ``structured.measures``'s, shared with the model table
(``structured.evaluation.profiling``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import torch

from structured.measures import best_latency_ms, count_flops, count_parameters, fp32_mib, render_table
from structured.registry import BACKBONES

__all__ = ["BackboneProfile", "count_parameters", "format_table", "profile_backbone"]
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
        size_mib=fp32_mib(params),
        gmacs=flops / 2e9,
        gflops=flops / 1e9,
        latency_ms=best_latency_ms(model.classify, images, repeats),
    )


def format_table(rows: Sequence[BackboneProfile], table_format: str = "text") -> str:
    """Rows as a markdown table (``"md"``), CSV (``"csv"``) or aligned plain text (``"text"``)."""
    names = [f.name for f in fields(BackboneProfile)]
    return render_table([HEADERS[n] for n in names], [_formatted_cells(row) for row in rows],
                        [asdict(row) for row in rows], table_format)


def _formatted_cells(row: BackboneProfile) -> list[str]:
    return [
        row.name,
        f"{row.params:,}",
        f"{row.size_mib:.1f}",
        f"{row.gmacs:.2f}",
        f"{row.gflops:.2f}",
        f"{row.latency_ms:.1f}",
    ]
