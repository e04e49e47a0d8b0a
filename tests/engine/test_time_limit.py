"""``train.time_limit``: a wall-clock budget that ends training and anneals the schedule, on a fake clock.

The fake clock advances only when the toy model runs: ``STEP_SECONDS`` per training forward (one per step
here) and ``EVAL_SECONDS`` per validation batch, so every figure below follows from the step count.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from structured.config import ConfigError, load_config
from structured.engine import Trainer, load_checkpoint, read_log, shutdown_distributed
from structured.engine.schedule import lr_factor, progress_lr_factor
from structured.engine.trainer import train_config
from tests.engine.conftest import toy_recipe
from tests.engine.test_distributed import _free_port
from tests.engine.toy import register_toy

STEP_SECONDS = 15.0
EVAL_SECONDS = 7.5  # per validation batch: 4 validation images in batches of 2 take 15 s
LR, MIN_LR_FACTOR = 0.05, 0.1


class FakeClock:
    """Seconds that pass only when the model runs (``attach``), plus whatever a test adds to ``now``."""

    def __init__(self, step_seconds: float = STEP_SECONDS, eval_seconds: float = EVAL_SECONDS) -> None:
        self.now = 1000.0
        self.step_seconds = step_seconds
        self.eval_seconds = eval_seconds

    def __call__(self) -> float:
        return self.now

    def attach(self, model: torch.nn.Module) -> None:
        """Advance the clock at every forward pass of ``model``."""
        def advance(module: torch.nn.Module, inputs: tuple) -> None:
            self.now += self.step_seconds if module.training else self.eval_seconds
        model.register_forward_pre_hook(advance)


def _recipe(tiny_shapes: Path, time_limit: float, **train: object) -> dict:
    # 8 training images in batches of 2: 4 steps per epoch; epochs far beyond what the budget allows
    return toy_recipe(tiny_shapes, epochs=20, time_limit=time_limit, schedule="cosine", warmup_iters=0,
                      milestones=[], lr=LR, min_lr_factor=MIN_LR_FACTOR, **train)


def _trainer(recipe: dict, run_dir: Path, clock: FakeClock, resume: bool = False) -> Trainer:
    trainer = Trainer(load_config(recipe), run_dir, resume=resume, verbose=False, clock=clock)
    clock.attach(trainer.model)
    clock.now += 500.0  # building the model and loading data happen before the first step: not counted
    return trainer


def _validated_iterations(run_dir: Path) -> list[int]:
    return [entry["iteration"] for entry in read_log(run_dir / "log.jsonl") if entry["kind"] == "epoch" and "AP50" in entry]


def test_training_stops_at_the_step_that_spends_the_budget_validates_there_and_anneals_over_it(
        toy_model: str, tiny_shapes: Path, tmp_path: Path) -> None:
    # 2 min: steps 1-4 end at 60 s, validation at 75 s, steps 5, 6, 7 end at 90, 105, 120 s, then the final
    # validation (it counts too: 135 s)
    trainer = _trainer(_recipe(tiny_shapes, time_limit=2.0), tmp_path, FakeClock())
    best = trainer.fit()
    assert trainer.position.iteration == 7 and trainer.elapsed == 135.0
    assert _validated_iterations(tmp_path) == [4, 7]
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["iteration"] == 7 and last["elapsed_seconds"] == 135.0
    assert (tmp_path / "best.pt").is_file() and best["epoch"] in (1, 1.75)
    log = read_log(tmp_path / "log.jsonl")
    [event] = [entry for entry in log if "time limit reached" in entry.get("message", "")]
    assert event["iteration"] == 7
    assert event["message"].endswith("ended training at iteration 7 after 2.00 min "
                                     "(2.25 min with the final validation and checkpoint)")
    assert [entry["epoch"] for entry in log if entry["kind"] == "epoch"] == [1, 1.75]
    # the lr of each step follows the cosine at (training seconds before the step) / budget
    seconds_before_each_step = [0, 15, 30, 45, 75, 90, 105]  # the validation's 15 s come before step 5
    expected = [LR * (MIN_LR_FACTOR + (1 - MIN_LR_FACTOR) * 0.5 * (1 + math.cos(math.pi * seconds / 120)))
                for seconds in seconds_before_each_step]
    assert [entry["lr"] for entry in log if entry["kind"] == "train"] == pytest.approx(expected, rel=1e-12)


def test_a_validation_that_would_overrun_the_budget_is_skipped_but_the_final_one_runs(
        toy_model: str, tiny_shapes: Path, tmp_path: Path) -> None:
    # 2.5 min: epoch 2 ends at 135 s and its validation would end at 150 s, the budget: skipped; step 9 ends at 150 s
    trainer = _trainer(_recipe(tiny_shapes, time_limit=2.5), tmp_path, FakeClock())
    trainer.fit()
    assert trainer.position.iteration == 9
    assert _validated_iterations(tmp_path) == [4, 9]
    assert load_checkpoint(tmp_path / "best.pt")["iteration"] in (4, 9)


def test_resume_continues_the_elapsed_time(toy_model: str, tiny_shapes: Path, tmp_path: Path) -> None:
    _trainer(_recipe(tiny_shapes, time_limit=2.0, max_iters=3), tmp_path, FakeClock()).fit()
    assert load_checkpoint(tmp_path / "last.pt")["elapsed_seconds"] == 45.0
    resumed = _trainer(_recipe(tiny_shapes, time_limit=2.0), tmp_path, FakeClock(), resume=True)
    assert resumed.elapsed == 45.0 and resumed.current_lr() == pytest.approx(
        LR * progress_lr_factor(45 / 120, 3, "cosine", min_factor=MIN_LR_FACTOR))
    resumed.fit()
    assert resumed.position.iteration == 7 and resumed.elapsed == 135.0
    assert load_checkpoint(tmp_path / "last.pt")["elapsed_seconds"] == 135.0
    again = _trainer(_recipe(tiny_shapes, time_limit=2.0), tmp_path, FakeClock(), resume=True)
    again.fit()
    assert again.position.iteration == 7  # the budget is spent: nothing more to train


def test_epochs_still_cap_a_run_with_budget_left(toy_model: str, tiny_shapes: Path, tmp_path: Path) -> None:
    recipe = _recipe(tiny_shapes, time_limit=60.0)
    recipe["train"]["epochs"] = 2
    trainer = _trainer(recipe, tmp_path, FakeClock())
    trainer.fit()
    assert trainer.position.iteration == 8 and _validated_iterations(tmp_path) == [4, 8]
    assert not any("time limit" in entry.get("message", "") for entry in read_log(tmp_path / "log.jsonl"))


def test_time_limit_must_be_positive(tiny_shapes: Path) -> None:
    with pytest.raises(ConfigError, match=r"train.time_limit must be None or > 0 minutes, got 0"):
        train_config(load_config(_recipe(tiny_shapes, time_limit=0)))


def test_step_milestones_are_fractions_of_the_budget_and_warmup_counts_steps() -> None:
    assert progress_lr_factor(0.49, 100, "step", [0.5, 0.75], gamma=0.1) == 1.0
    assert progress_lr_factor(0.5, 100, "step", [0.5, 0.75], gamma=0.1) == pytest.approx(0.1)
    assert progress_lr_factor(0.9, 100, "step", [0.5, 0.75], gamma=0.1) == pytest.approx(0.01)
    assert progress_lr_factor(0.9, 5, "constant", warmup_iterations=10, warmup_factor=0.0) == 0.5
    assert progress_lr_factor(2.0, 100, "cosine", min_factor=0.2) == pytest.approx(0.2)
    assert [lr_factor(i, 40, "step", [10, 30]) for i in (9, 10, 29, 30)] == pytest.approx([1, 0.1, 0.1, 0.01])


def _train_rank_on_its_own_clock(rank: int, world_size: int, port: int, data_root: str, out: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    register_toy()
    # rank 1's clock runs 15 times slower: on its own it would train all 20 epochs
    clock = FakeClock() if rank == 0 else FakeClock(step_seconds=1.0, eval_seconds=0.5)
    trainer = _trainer(_recipe(Path(data_root), time_limit=0.75), Path(out) / "run", clock)
    trainer.fit()
    torch.save({"iteration": trainer.position.iteration, "lr": trainer.current_lr(),
                "model": trainer.model.state_dict()}, Path(out) / f"rank{rank}.pt")
    shutdown_distributed()


@pytest.mark.slow
def test_every_rank_stops_at_rank_zeros_step(tiny_shapes: Path, tmp_path: Path) -> None:
    mp.spawn(_train_rank_on_its_own_clock, args=(2, _free_port(), str(tiny_shapes), str(tmp_path)), nprocs=2,
             join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1))
    # 2 steps per epoch on 2 ranks: steps 1-2 end at 30 s on rank 0, validation (one batch each) at 37.5 s,
    # step 3 at 52.5 s >= 45 s
    assert rank0["iteration"] == rank1["iteration"] == 3 and rank0["lr"] == rank1["lr"]
    for key, value in rank0["model"].items():
        assert torch.equal(value, rank1["model"][key]), key
