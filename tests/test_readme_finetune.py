"""The README's "Fine-tune on your data" commands work as written: convert a torchvision COCO detector (seeded,
untrained, saved where the download would be), fine-tune it with --weights on synthetic shapes, detect."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from structured.data.synthetic import generate_dataset
from tests.conftest import REPO_ROOT

SECTION = "## Fine-tune on your data"
SMALL_RUN = ["--set", "train.epochs=1", "train.warmup_iters=2", "data.batch_size=2", "data.val_fraction=0.25"]


def readme_commands() -> list[list[str]]:
    """The ``python ...`` lines of the section's first code block, split into arguments."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index(SECTION):]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.startswith("python ")]


def run(command: list[str], cwd: Path) -> str:
    """Run a README command (tools/ from the repository) in ``cwd``; its output, after checking it succeeded."""
    tool = str(REPO_ROOT / command[1])
    environment = {**os.environ, "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run([sys.executable, tool, *command[2:]], cwd=cwd, env=environment, capture_output=True,
                               text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout + completed.stderr


@pytest.mark.slow
def test_readme_fine_tune_commands(tmp_path: Path) -> None:
    convert, train, infer = readme_commands()
    torch.manual_seed(0)
    coco_model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)
    torch.save(coco_model.state_dict(), tmp_path / convert[2])
    data = generate_dataset(tmp_path / "shapes", num_train=8, num_val=0, image_size=96, seed=5, formats=("coco",))
    yours = {"path/to/data": str(data / "annotations" / "instances_train.json"),
             "path/to/images": str(data / "JPEGImages"), train[2]: str(REPO_ROOT / train[2])}

    assert "wrote coco.pt" in run(convert, tmp_path)
    trained = run([yours.get(argument, argument) for argument in train] + SMALL_RUN, tmp_path)
    assert ("weights coco.pt: loaded 280 tensors; re-initialised 4 class-specific tensors (roi_heads.predictor."
            in trained)
    assert "because the classes differ (checkpoint 90, model 5); kept the rows of classes ['__background__']" in trained
    assert (tmp_path / "runs" / "finetune" / "best.pt").is_file()
    detected = run([yours.get(argument, argument) for argument in infer], tmp_path)
    assert "8 images" in detected and (tmp_path / "outputs" / "finetune" / "predictions.json").is_file()
