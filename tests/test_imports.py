"""Importing a piece does not import the world; registries still see every built-in part.

Each case runs in a fresh interpreter (``python -c``) so ``sys.modules`` shows exactly what one import
statement loaded. The import-time comparison with torchvision only reports (run with ``-s``).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from structured.registry import BACKBONES, MODELS, NECKS
from tests.conftest import REPO_ROOT

PLOTTING = ("matplotlib",)
TRAINING = ("structured.api", "structured.engine", "structured.evaluation")
ALL_HEAVY = (
    *TRAINING,
    *PLOTTING,
    "structured.backbones",
    "structured.data",
    "structured.detection",
    "cv2",
    "pycocotools",
    "shapely",
)

IMPORT_CASES = {
    "import structured": ("torch", *ALL_HEAVY),
    "from structured.boxes import nms": ALL_HEAVY,
    "import structured.registry": ("torch", *ALL_HEAVY),
    "import structured.config": ALL_HEAVY,
    "import structured.data": (*TRAINING, *PLOTTING, "structured.backbones", "structured.detection"),
    "import structured.backbones": (*TRAINING, *PLOTTING, "structured.data", "structured.detection", "cv2", "timm"),
    "import structured.detection": (*TRAINING, *PLOTTING, "structured.data", "cv2", "pycocotools"),
    "import structured.evaluation": (
        "structured.api", "structured.engine", *PLOTTING, "structured.data", "structured.detection", "cv2",
    ),
    "from structured.engine.checkpoint import load_checkpoint": (
        "structured.engine.trainer", "structured.api", "structured.evaluation", *PLOTTING, "cv2",
    ),
    "from structured import Detector": ("structured.engine.trainer", "structured.data.recipes", *PLOTTING),
    "import structured.explain": (*TRAINING, *PLOTTING, "structured.backbones", "structured.data",
                                  "structured.detection", "pycocotools"),
}  # fmt: skip


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter at the repository root and return its standard output."""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"python -c {code!r} failed:\n{result.stderr}"
    return result.stdout


def loaded_after(statement: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` are in ``sys.modules`` after running ``statement`` in a fresh interpreter."""
    loaded = set(run_python(f"import sys\n{statement}\nprint('\\n'.join(sys.modules))").split())
    return sorted(module for module in modules if module in loaded)


@pytest.mark.parametrize("statement", IMPORT_CASES)
def test_import_loads_only_what_the_piece_needs(statement: str) -> None:
    assert loaded_after(statement, IMPORT_CASES[statement]) == []


def test_public_api_resolves_lazily() -> None:
    import structured

    assert set(structured.__all__) <= set(dir(structured))
    assert structured.Detector.__module__ == "structured.api"
    assert structured.build_model.__module__ == "structured.config"
    assert structured.list_models() == MODELS.names()
    assert structured.backbones.__name__ == "structured.backbones"
    with pytest.raises(AttributeError, match="no attribute 'Segmentor'"):
        structured.Segmentor  # noqa: B018


def registered_names_after(statement: str) -> list[list[str]]:
    """``[models, backbones, necks]`` as a fresh interpreter sees them after running ``statement``."""
    code = (
        f"{statement}\nimport json\nfrom structured.registry import BACKBONES, MODELS, NECKS\n"
        "print(json.dumps([MODELS.names(), BACKBONES.names(), NECKS.names()]))"
    )
    return json.loads(run_python(code).splitlines()[-1])


def test_registries_see_every_built_in_part_whatever_was_imported_first() -> None:
    everything = [MODELS.names(), BACKBONES.names(), NECKS.names()]
    assert "faster_rcnn_r18_fpn" in everything[0] and "resnet18" in everything[1] and everything[2] == ["fpn"]
    assert registered_names_after("import structured.backbones.resnet") == everything


def test_build_model_needs_no_prior_import() -> None:
    statement = (
        "from structured.config import build_model\n"
        "model = build_model({'model': {'name': 'faster_rcnn_r18_fpn', 'num_classes': 3}})\n"
        "assert type(model).__name__ == 'FasterRCNN'"
    )
    assert registered_names_after(statement) == [MODELS.names(), BACKBONES.names(), NECKS.names()]


def test_plotting_leaves_the_users_matplotlib_backend_alone() -> None:
    code = (
        "import sys, tempfile\nimport matplotlib\nmatplotlib.use('pdf')\n"
        "from structured.engine.records import RunRecords\n"
        "from structured.evaluation.plots import SpeedAccuracyPoint, plot_speed_accuracy\n"
        "folder = tempfile.mkdtemp()\nrecords = RunRecords(folder)\nrecords.start(None)\n"
        "records.log({'kind': 'train', 'epoch': 0, 'iteration': 1, 'loss': 1.0})\n"
        "records.log({'kind': 'epoch', 'epoch': 0, 'iteration': 1, 'loss': 1.0, 'AP': 0.1, 'AP50': 0.2, "
        "'AP75': 0.05})\nrecords.write_summaries()\n"
        "plot_speed_accuracy([SpeedAccuracyPoint('a', 10.0, 0.3)], folder + '/speed.png')\n"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)"
    )
    assert run_python(code).split() == ["pdf", "False"]


def median_import_seconds(statement: str, repeats: int) -> float:
    """Median wall time of ``statement`` in fresh interpreters (interpreter start-up excluded)."""
    code = f"import time\nstart = time.perf_counter()\n{statement}\nprint(time.perf_counter() - start)"
    return statistics.median(float(run_python(code).split()[-1]) for _ in range(repeats))


@pytest.mark.slow
def test_report_import_time_against_torchvision() -> None:
    repeats = 1
    torchvision_seconds = median_import_seconds("import torchvision", repeats)
    for statement in ("import structured", "from structured import Detector"):
        seconds = median_import_seconds(statement, repeats)
        print(
            f"\n{statement}: {seconds * 1000:.0f} ms, import torchvision: {torchvision_seconds * 1000:.0f} ms, "
            f"ratio {seconds / torchvision_seconds:.3f} (median of {repeats} fresh interpreters)"
        )
