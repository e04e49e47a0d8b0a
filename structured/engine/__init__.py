"""Training engine: the config-driven ``Trainer``, checkpoints, distributed set-up, run records.

- ``trainer``: :class:`Trainer` / :func:`train_from_config` (``train:`` section = :class:`TrainConfig`);
- ``checkpoint``: atomic ``save_checkpoint``, safe ``load_checkpoint``, ``load_weights`` (weights only);
- ``distributed``: ``torchrun`` environment -> process group (nccl on CUDA, gloo on CPU), collectives;
- ``records``: ``log.jsonl``, ``metrics.csv``, loss and mAP curves of a run folder;
- ``schedule``: the learning-rate factor (warm-up, step, cosine) as a function of the step.
"""

from structured.engine.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from structured.engine.distributed import DistributedContext, init_distributed, shutdown_distributed
from structured.engine.records import RunRecords, read_log
from structured.engine.schedule import lr_factor
from structured.engine.trainer import (
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    evaluate_detector,
    train_config,
    train_from_config,
)

__all__ = [
    "CheckpointError",
    "DistributedContext",
    "NonFiniteLossError",
    "RunRecords",
    "TrainConfig",
    "Trainer",
    "evaluate_detector",
    "init_distributed",
    "load_checkpoint",
    "load_weights",
    "lr_factor",
    "read_log",
    "save_checkpoint",
    "shutdown_distributed",
    "train_config",
    "train_from_config",
]
