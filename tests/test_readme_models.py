"""README.md's recipe table is tools/benchmark.py's output: every recipe has a row, and its counts are the tool's.

Parameters and fp32 MiB are checked for every row; whole rows (GFLOPs, network input, detections included) for a
few models that are cheap to run at the table's 480x640 input.
"""

from __future__ import annotations

import pytest

from structured import list_models
from structured.config import build_model
from structured.evaluation.profiling import ProfileSettings, format_models, model_spec, profile_model
from structured.measures import count_parameters, fp32_mib
from tests.conftest import REPO_ROOT

BEGIN = "<!-- begin model table"
END = "<!-- end model table -->"
DATA_CLASSES = 5  # the generating command's --data-classes
CHEAP_ROWS = ("ssdlite320_mobilenet_v3_large", "ssdlite320_mobilenet_v2", "configs/demo/shapes_ssd_r18.yaml")


def readme_table() -> tuple[list[str], dict[str, str]]:
    """The generated table's header cells and its rows by recipe (the first cell, without backticks)."""
    text = (REPO_ROOT / "README.md").read_text()
    block = text[text.index(BEGIN):text.index(END)]
    lines = [line for line in block.splitlines() if line.startswith("| ")]
    rows = {_cells(line)[0].strip("`"): line for line in lines[1:]}
    return _cells(lines[0]), rows


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_the_readme_table_has_every_registered_recipe_and_demo_recipe() -> None:
    demo = [f"configs/demo/{path.name}" for path in sorted((REPO_ROOT / "configs" / "demo").glob("*.yaml"))]
    assert list(readme_table()[1]) == [*list_models(), *demo]


def test_readme_params_and_size_are_the_tools() -> None:
    header, rows = readme_table()
    params, size = header.index("params"), header.index("fp32 MiB")
    for recipe, line in rows.items():
        counted = count_parameters(build_model(model_spec(recipe, DATA_CLASSES).config))
        cells = _cells(line)
        assert (cells[params], cells[size]) == (f"{counted:,}", f"{fp32_mib(counted):.1f}"), recipe


@pytest.mark.parametrize("recipe", CHEAP_ROWS)
def test_readme_rows_of_cheap_models_are_the_tools_entirely(recipe: str) -> None:
    row = profile_model(model_spec(recipe, DATA_CLASSES), ProfileSettings((480, 640), timing=False))
    assert format_models([row], "md").splitlines()[2] == readme_table()[1][recipe]
