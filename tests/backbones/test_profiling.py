"""Backbone profiling: parameter and MAC counts against torchvision's published figures, table formats."""

from __future__ import annotations

import subprocess
import sys

import pytest

from structured.backbones.profiling import BackboneProfile, format_table, profile_backbone
from tests.conftest import REPO_ROOT


def test_resnet18_profile_matches_published_figures() -> None:
    row = profile_backbone("resnet18", repeats=1)
    assert row.params == 11_689_512
    assert row.gmacs == pytest.approx(1.81, abs=0.01)  # torchvision's table: 1.81 "GFLOPS" (multiply-adds)
    assert row.gflops == pytest.approx(2 * row.gmacs)
    assert row.size_mib == pytest.approx(11_689_512 * 4 / 2**20)
    assert row.latency_ms > 0


def test_table_formats() -> None:
    rows = [
        BackboneProfile("netA", 1234567, 4.7, 1.5, 3.0, 12.25),
        BackboneProfile("netB", 5, 0.0, 0.0, 0.0, 0.5),
    ]
    markdown = format_table(rows, "md").splitlines()
    assert markdown[0] == "| backbone | params | fp32 MiB | GMACs | GFLOPs | CPU ms (best) |"
    assert markdown[2] == "| netA | 1,234,567 | 4.7 | 1.50 | 3.00 | 12.2 |"
    csv_lines = format_table(rows, "csv").splitlines()
    assert csv_lines[0] == "name,params,size_mib,gmacs,gflops,latency_ms"
    assert csv_lines[1].startswith("netA,1234567,4.7,1.5,3.0,12.25")
    assert len(format_table(rows).splitlines()) == 3
    with pytest.raises(ValueError, match="table format"):
        format_table(rows, "html")


def test_benchmark_tool_prints_a_markdown_table() -> None:
    result = subprocess.run(
        [sys.executable, "tools/benchmark.py", "backbones", "--md", "--names", "mobilenet_v1", "--repeats", "1",
         "--image-size", "64"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| backbone |")
    assert lines[2].startswith("| mobilenet_v1 | 4,231,976 |")
