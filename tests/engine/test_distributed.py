"""Two gloo processes on CPU train the toy detector and end with identical weights; one process cannot resume them."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from structured.config import load_config
from structured.engine import CheckpointError, Trainer, load_checkpoint, read_log, shutdown_distributed
from tests.engine.conftest import toy_recipe
from tests.engine.toy import register_toy


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _train_rank(rank: int, world_size: int, port: int, data_root: str, out: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    register_toy()
    config = load_config(toy_recipe(Path(data_root), epochs=2, checkpoint_every_iters=1))
    trainer = Trainer(config, Path(out) / "run", verbose=False)
    trainer.fit()
    torch.save(trainer.model.state_dict(), Path(out) / f"rank{rank}.pt")
    shutdown_distributed()


@pytest.mark.slow
def test_two_gloo_processes_agree_on_weights_and_one_process_cannot_resume_them(toy_model: str, tiny_shapes: Path, tmp_path: Path) -> None:
    mp.spawn(_train_rank, args=(2, _free_port(), str(tiny_shapes), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    # 8 images over 2 ranks, 2 per batch: 2 steps per epoch, 2 epochs
    assert checkpoint["iteration"] == 4 and checkpoint["world_size"] == 2 and len(checkpoint["rng"]) == 2
    for key, value in checkpoint["model"].items():
        assert torch.equal(value, rank0[key]), key
    log = read_log(tmp_path / "run" / "log.jsonl")
    assert log[0]["world_size"] == 2
    assert [entry["iteration"] for entry in log if entry["kind"] == "train"] == [1, 2, 3, 4]
    assert all("AP50" in entry for entry in log if entry["kind"] == "epoch")
    with pytest.raises(CheckpointError, match="world size 2 but this run has world size 1"):
        Trainer(load_config(toy_recipe(tiny_shapes, epochs=3)), tmp_path / "run", resume=True, verbose=False)


def test_a_device_that_is_not_there_is_one_sentence_naming_it(monkeypatch) -> None:
    from structured.engine.distributed import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu'; expected cpu, cuda, cuda:<index> or mps"):
        resolve_device("gpu")
    for known_to_torch_only in ("meta", "xla", "xpu", "hpu"):
        with pytest.raises(ValueError, match=f"unknown device '{known_to_torch_only}'; expected cpu, cuda"):
            resolve_device(known_to_torch_only)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda' requested but CUDA is not available; use --device cpu"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"device 'cuda:3' requested but 2 CUDA device\(s\) are visible \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:3")
