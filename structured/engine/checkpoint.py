"""Training checkpoints: atomic writes, safe loads, random-number-generator states, weights-only loading.

A checkpoint is a plain dict (loadable with ``torch.load(..., weights_only=True)``)::

    {"format": 1, "model": state_dict, "optimizer": state_dict, "scaler": state_dict,
     "epoch": e, "batch_in_epoch": b, "iteration": i, "world_size": w, "rng": [{...} per rank], "best": {...},
     "config": resolved recipe dict, "class_names": [...]}

``epoch`` / ``batch_in_epoch`` say where training continues: batch ``b`` of epoch ``e`` (``b = 0`` at an
epoch boundary); ``iteration`` counts optimizer steps done. ``save_checkpoint`` writes to a temporary
file and renames it over the target, so a kill at any moment leaves the previous file or the new one.

Resume vs weights: ``resume`` (trainer) restores everything above and continues the same run exactly;
``load_weights`` only copies model weights (fine-tuning, evaluation) and refuses a checkpoint whose keys or
shapes do not match the model, listing the differences.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from structured.io import atomic_output, load_torch_file

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_output(path) as temporary:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, temporary)
    return Path(path)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint onto the CPU with ``weights_only=True``; a missing or unreadable file raises ``CheckpointError``."""
    try:
        state = load_torch_file(path, "checkpoint")
    except (FileNotFoundError, ValueError) as error:
        raise CheckpointError(str(error)) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(state).__name__}")
    return state


def capture_rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's, torch's CPU and (when present) CUDA generators, as tensors and lists."""
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _python_state_to_list(random.getstate()),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_state_to_list(state: tuple) -> list:
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back the generator states saved by ``capture_rng_state``."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([cuda_state.cpu() for cuda_state in state["cuda"]])


def model_state_from(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model state dict inside a training checkpoint, or the checkpoint itself when it is one."""
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise CheckpointError("expected a training checkpoint with a 'model' state dict, or a plain state dict")
    return state


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Copy the weights of checkpoint ``path`` into ``model`` (nothing else: no optimizer, no position).

    Every key must match in name and shape; otherwise ``CheckpointError`` lists the missing, unexpected and
    mis-shaped keys (torchvision checkpoints go through ``structured.convert`` first).
    """
    apply_weights(model, model_state_from(load_checkpoint(path)), str(path))


def apply_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model`` after checking every key and shape; ``source`` names it in errors."""
    problems = mismatches(model.state_dict(), state)
    if problems:
        raise CheckpointError(f"weights {source} do not fit the model: " + "; ".join(problems))
    model.load_state_dict(state)


def non_finite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The keys of ``state``'s floating-point tensors that hold a NaN or an infinity (one host sync in all)."""
    floating = [(key, tensor) for key, tensor in state.items() if tensor.is_floating_point()]
    if not floating:
        return []
    device = floating[0][1].device
    finite = torch.stack([torch.isfinite(tensor).all().to(device) for _, tensor in floating]).tolist()
    return [key for (key, _), ok in zip(floating, finite, strict=True) if not ok]


def mismatches(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
               any_shape: Callable[[str], bool] = lambda key: False) -> list[str]:
    """What keeps ``state`` from fitting a model whose state dict is ``expected``: missing, unexpected and
    mis-shaped keys (those where ``any_shape(key)`` is true excepted), each kind as one phrase; empty if it fits."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(
        f"{key} (checkpoint {tuple(state[key].shape)}, model {tuple(expected[key].shape)})"
        for key in set(state) & set(expected)
        if state[key].shape != expected[key].shape and not any_shape(key)
    )
    return [
        f"{title} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mis_shaped))
        if keys
    ]
