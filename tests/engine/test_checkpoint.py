"""Checkpoints survive SIGKILL at any moment of a write, and RNG states round-trip through them."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from structured.engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _with_repo_on_path() -> dict[str, str]:
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


@pytest.mark.slow
def test_sigkill_during_checkpoint_writes_never_leaves_an_unreadable_file(tmp_path: Path) -> None:
    paths = [tmp_path / f"run{index}" / "last.pt" for index in range(2)]
    writers = [subprocess.Popen([sys.executable, "-m", "tests.engine.checkpoint_writer", str(path)], cwd=REPO_ROOT,
                                stdout=subprocess.PIPE, text=True, env=_with_repo_on_path())
               for path in paths]
    delays = random.Random(0)
    numbers = []
    for writer, path in zip(writers, paths, strict=True):
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        time.sleep(delays.uniform(0.05, 0.5))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        checkpoint = load_checkpoint(path)
        assert torch.equal(checkpoint["payload"], torch.full((2_000_000,), float(checkpoint["number"])))
        numbers.append(checkpoint["number"])
    assert max(numbers) > 0  # the kills interrupted a loop of rewrites, not only the first write


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == expected
