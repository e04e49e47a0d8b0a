"""Process-group set-up from ``torchrun``'s environment and the few collectives the trainer needs.

``torchrun --nproc_per_node=N tools/train_det.py ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; ``init_distributed`` reads them and joins the group with ``nccl`` on
CUDA and ``gloo`` on CPU. Without those variables (a plain ``python`` run) it is a one-process "group"
and every collective here is the identity, so the trainer calls them unconditionally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and shows progress."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when more than one process trains."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from None


SUPPORTED_DEVICE_TYPES = frozenset({"cpu", "cuda", "mps"})
"""The device types the toolkit runs on; torch knows more (``meta``, ``xla``, ``xpu``, ``hpu`` ...)."""


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """``device`` as a ``torch.device`` (default: CUDA when available, else CPU); ``cuda`` becomes ``cuda:<local_rank>``.

    A name torch does not know, one of the devices the toolkit does not run on (``meta``, ``xla``, ``xpu``
    ...), CUDA (or MPS) where there is none, or a CUDA index beyond the visible devices is a ``ValueError``
    naming the device.
    """
    name = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        resolved = torch.device(name)
    except RuntimeError:
        resolved = None
    if resolved is None or resolved.type not in SUPPORTED_DEVICE_TYPES:
        raise ValueError(f"unknown device {name!r}; expected cpu, cuda, cuda:<index> or mps")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} requested but MPS is not available; use --device cpu")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank)
        visible = torch.cuda.device_count()
        if resolved.index >= visible:
            raise ValueError(f"device {name!r} requested but {visible} CUDA device(s) are visible "
                             f"(cuda:0 to cuda:{visible - 1})")
    return resolved


def init_distributed(device: str | None = None) -> DistributedContext:
    """Join the process group described by ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (if any).

    The backend is ``nccl`` for CUDA devices and ``gloo`` otherwise. Calling it in a process that already
    joined a group reuses that group.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank if world_size > 1 else 0)
    resolved = resolve_device(device, local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, resolved)


def shutdown_distributed() -> None:
    """Leave the process group when one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``tensor`` over all ranks (a copy; the input is left unchanged)."""
    reduced = tensor.detach().clone()
    if _active():
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced


def all_gather_objects(item: Any) -> list[Any]:
    """``[item of rank 0, item of rank 1, ...]`` on every rank (picklable objects)."""
    if not _active():
        return [item]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, item)
    return gathered


def broadcast_object(item: Any, source: int = 0) -> Any:
    """Rank ``source``'s ``item`` on every rank."""
    if not _active():
        return item
    holder = [item]
    dist.broadcast_object_list(holder, src=source)
    return holder[0]


def broadcast_tensors(tensors: list[torch.Tensor], source: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``source``'s values."""
    if _active():
        for tensor in tensors:
            dist.broadcast(tensor, src=source)


def barrier() -> None:
    """Wait until every rank reaches this point."""
    if _active():
        dist.barrier()
