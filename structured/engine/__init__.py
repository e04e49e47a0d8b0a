"""Training engine: the config-driven ``Trainer``, checkpoints, distributed set-up, run records.

- ``trainer``: :class:`Trainer` / :func:`train_from_config` (``train:`` section = :class:`TrainConfig`);
- ``checkpoint``: atomic ``save_checkpoint``, safe ``load_checkpoint``, ``load_weights`` (weights only);
- ``distributed``: ``torchrun`` environment -> process group (nccl on CUDA, gloo on CPU), collectives;
- ``records``: ``log.jsonl``, ``metrics.csv``, loss and mAP curves of a run folder;
- ``schedule``: the learning-rate factor (warm-up, step, cosine) as a function of the step.

The names below are imported on first use (``structured.lazy``): loading a checkpoint
(``structured.engine.checkpoint``, as ``structured.Detector`` does) does not import the trainer and,
through it, the data recipes and the evaluation loop.
"""

from structured.lazy import lazy_attributes

__all__ = [
    "CheckpointError",
    "DistributedContext",
    "NonFiniteLossError",
    "RunRecords",
    "TrainConfig",
    "Trainer",
    "evaluate_shared",
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

__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        **dict.fromkeys(
            ("CheckpointError", "load_checkpoint", "load_weights", "save_checkpoint"), "structured.engine.checkpoint"
        ),
        **dict.fromkeys(
            ("DistributedContext", "init_distributed", "shutdown_distributed"), "structured.engine.distributed"
        ),
        **dict.fromkeys(("RunRecords", "read_log"), "structured.engine.records"),
        "lr_factor": "structured.engine.schedule",
        **dict.fromkeys(
            (
                "NonFiniteLossError",
                "TrainConfig",
                "Trainer",
                "evaluate_shared",
                "train_config",
                "train_from_config",
            ),
            "structured.engine.trainer",
        ),
    },
)
