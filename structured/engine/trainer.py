"""Config-driven training of any registered model: detectors and segmenters (contracts in docs/architecture.md).

``Trainer(config, run_dir).fit()`` builds the model (``model:``), the data (``data:``, see
``structured.data.recipes``) and the optimisation (``train:``, the fields of :class:`TrainConfig`), then
trains, evaluates on the validation set every ``eval_every_epochs`` epochs and writes the run folder
``run_dir``: ``config.yaml`` (the resolved recipe), ``log.jsonl``, ``metrics.csv``, ``loss.png``, the
validation curves (``map.png``; ``miou.png`` for a semantic model), ``last.pt`` (every epoch and every
``checkpoint_every_iters`` optimizer steps) and ``best.pt`` (best ``best_metric`` so far). Every file is
written atomically and only by rank 0.

What follows the task of the recipe's model (``structured.config.model_task``) comes from the task layer
(``structured.evaluation.tasks``): the kind of dataset opened (boxes or class maps), the validation metrics
(COCO stats; mIoU, fg_IoU, Dice, ...), the allowed and default ``best_metric``, and the plotted curves.

Definitions: a *step* (iteration) is one optimizer update over ``accumulate_steps`` consecutive batches
(fewer at the end of an epoch); an epoch has ``ceil(batches / accumulate_steps)`` steps; ``milestones`` are
in epochs; the learning rate follows ``structured.engine.schedule.lr_factor`` over ``epochs`` epochs;
``max_iters`` stops training early (saving ``last.pt``) without changing the schedule.

Wall-clock budget (``time_limit``, minutes; None: off), like ultralytics' ``time=``:

- the clock (``Trainer(clock=...)``, default ``time.perf_counter``) starts at the first optimizer step, not
  at model building or data loading, and counts everything after it: steps, validations, checkpoints. The
  training seconds so far are saved in every checkpoint (``elapsed_seconds``) and a resumed run continues
  from them, so resuming honours the budget (and a larger ``time_limit`` on resume extends it);
- the schedule is annealed over the budget: its progress is elapsed / budget instead of step / steps
  (``structured.engine.schedule.progress_lr_factor``); step ``milestones`` become fractions
  ``milestone / epochs`` of the budget; warm-up still counts steps;
- once the budget is spent, training ends at that step: a final validation (so ``best.pt`` reflects the
  end of training), ``last.pt`` (and ``best.pt`` when it improved) saved and an ``event`` log line saying
  the time limit ended it (the training minutes, and apart the total with that validation). ``epochs``
  still caps the run, whichever comes first. A mid-run validation that would not finish inside the budget
  (judged by the previous one's duration) is skipped; the final one always runs (when validation is on);
- with several processes every rank uses rank 0's clock (broadcast after each step), so all ranks use the
  same learning rate and stop at the same step.

Resume (``resume=True``) reloads ``run_dir/last.pt``: model, optimizer, AMP scaler, epoch, step, position
inside the epoch, best metric, random-generator states. The data order of an epoch is a pure function of
``(seed, epoch)`` (``ResumableSampler``) and augmentation of ``(seed, epoch, index)``, so the resumed run
sees the same batches and, on CPU with ``deterministic: true``, ends with the same weights as an
uninterrupted one. A resume must use the world size the checkpoint was saved with (``CheckpointError``
otherwise). ``weights=PATH`` (or ``train.init_from``) only loads model weights before training (a new run;
``structured.engine.transfer``: a checkpoint with other classes re-initialises the class-specific layers,
keeping the rows of classes of the same name, and the report goes to the console and ``log.jsonl``).

A resume whose recipe builds a model the checkpoint does not fit (other classes, another architecture) is a
``CheckpointError`` saying what differs from the run's ``config.yaml``; one on other data (``data.train``,
``data.val``, ...) goes on, with a warning line.

Divergence stops training with :class:`NonFiniteLossError` (on any rank; the tools exit with status 1),
naming the step, epoch and batch: a non-finite loss, before the backward pass (and the loss term); weights
that an update made NaN or infinite, before a checkpoint would keep them (and the first such tensor); a
``ValueError`` of the forward (the detectors' box checks) that activations overflowing from finite inputs
caused (and the first such layer; NaN in the data itself stays the data's error).
Nothing is saved, so ``last.pt`` stays the last good checkpoint. Ctrl-C prints the step it stopped at and the
last checkpoint ``--resume`` continues from; unusable data a ``DataLoader`` worker meets keeps the message it
had there (``structured.data.loading.worker_errors_unwrapped``).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from structured.backbones.transfer import freeze, parameter_groups
from structured.config import Config, ConfigError, build_model, model_task, validate_keys
from structured.data.base import DetectionDataset, SemanticDataset
from structured.data.loading import ResumableSampler, worker_errors_unwrapped
from structured.data.recipes import (
    build_datasets,
    build_train_loader,
    data_config,
    describe,
    fill_num_classes,
)
from structured.engine.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    mismatches,
    non_finite_tensors,
    restore_rng_state,
    save_checkpoint,
)
from structured.engine.distributed import (
    DistributedContext,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_object,
    broadcast_tensors,
    init_distributed,
)
from structured.engine.records import RunRecords
from structured.engine.schedule import SCHEDULES, lr_factor, progress_lr_factor
from structured.engine.transfer import TransferReport, load_transferred_weights
from structured.evaluation.tasks import EvaluationTask, evaluation_task
from structured.io import atomic_output

OPTIMIZERS = ("sgd", "adamw")
FUSED_OPTIMIZER_DEVICES = {"cpu", "cuda"}
"""Device types whose parameters get torch's fused optimizer kernels."""
AnyDataset = DetectionDataset | SemanticDataset
LAST_CHECKPOINT = "last.pt"
DIVERGENCE_ADVICE = "lower train.lr, lengthen train.warmup_iters or set train.clip_grad_norm"
BEST_CHECKPOINT = "best.pt"


class NonFiniteLossError(RuntimeError):
    """Training diverged: a NaN or infinite loss, weights or activations; the message names the step and what
    became non-finite (the loss term, or the first layer)."""


@dataclass(frozen=True)
class TrainConfig:
    """The ``train:`` section of a recipe.

    ``optimizer``: ``sgd`` (with ``momentum``) or ``adamw``; ``lr`` is the base learning rate for the whole
    batch (all processes); ``warmup_iters`` steps of linear warm-up from ``warmup_factor * lr``; ``schedule``
    ``step`` (``gamma`` at each epoch of ``milestones``), ``cosine`` (down to ``min_lr_factor * lr``) or
    ``constant``; ``clip_grad_norm``
    (None: off); ``amp`` (CUDA only; ignored on CPU); ``accumulate_steps`` batches per step;
    ``eval_every_epochs`` (0: never); ``checkpoint_every_iters`` (0: only at epoch ends); ``best_metric``
    one of the task's metric names (detection: the COCO stat names ``AP``, ``AP50``, ... for boxes,
    ``segm_AP``, ... for masks; semantic: ``mIoU``, ``fg_IoU``, ``Dice``, ...; None: the task's default,
    ``AP50`` or ``mIoU``); ``seed``;
    ``deterministic`` (turns on torch's process-wide deterministic kernels, warning where an op has none);
    ``log_every`` steps per ``log.jsonl`` line; ``device`` (None: CUDA when available); ``max_iters``
    (None: all epochs); ``time_limit`` wall-clock minutes of training (None: off; see the module docstring);
    ``find_unused_parameters`` for DistributedDataParallel; ``channels_last`` lays out the model and its
    input batches channels-last (NHWC; the model's ``use_channels_last()``), which is faster on some CPUs and
    GPUs and changes results only by float rounding (1.05-1.09x the steps in the demo's runs on an AMD EPYC).

    Fine-tuning: ``init_from`` a checkpoint whose weights start the run (``--weights``; another class list is
    fine, see ``structured.engine.transfer``); ``freeze`` names parts of the model (its top-level modules:
    ``backbone``, ``neck``, ...) whose parameters do not train and whose batch norms stay in eval mode;
    ``backbone_lr_factor`` multiplies the learning rate of the model's ``backbone`` parameters (warm-up and
    schedule included; 1.0 keeps one parameter group).
    """

    epochs: int = 12
    optimizer: str = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    schedule: str = "step"
    milestones: Sequence[int] = field(default_factory=tuple)
    gamma: float = 0.1
    min_lr_factor: float = 0.0
    clip_grad_norm: float | None = None
    amp: bool = False
    accumulate_steps: int = 1
    eval_every_epochs: int = 1
    checkpoint_every_iters: int = 0
    best_metric: str | None = None
    seed: int = 0
    deterministic: bool = False
    log_every: int = 20
    device: str | None = None
    max_iters: int | None = None
    time_limit: float | None = None
    find_unused_parameters: bool = False
    channels_last: bool = False
    init_from: str | None = None
    freeze: Sequence[str] = field(default_factory=tuple)
    backbone_lr_factor: float = 1.0


def train_config(config: Config) -> TrainConfig:
    """The validated ``train:`` section of ``config``."""
    section = config.get("train", {}) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{config.source}: 'train' must be a mapping, got {type(section).__name__}")
    validate_keys(TrainConfig, section, "train", config.source, config.overrides_under("train"))
    settings = TrainConfig(**section)
    for key, ok, requirement in _requirements(settings):
        if not ok:
            raise ConfigError(f"{config.origin(f'train.{key}')}: train.{key} {requirement}, "
                              f"got {getattr(settings, key)!r}")
    return _with_best_metric(settings, config)


def _requirements(settings: TrainConfig) -> tuple[tuple[str, bool, str], ...]:
    """``(key, whether its value is valid, what is expected)`` for each ranged or enumerated train setting."""
    return (
        ("optimizer", settings.optimizer in OPTIMIZERS, f"must be one of {OPTIMIZERS}"),
        ("schedule", settings.schedule in SCHEDULES, f"must be one of {SCHEDULES}"),
        ("epochs", settings.epochs >= 1, "must be >= 1"),
        ("max_iters", settings.max_iters is None or settings.max_iters >= 1, "must be None (all epochs) or >= 1"),
        ("accumulate_steps", settings.accumulate_steps >= 1, "must be >= 1"),
        ("warmup_iters", settings.warmup_iters >= 0, "must be >= 0 (0: no warm-up)"),
        ("eval_every_epochs", settings.eval_every_epochs >= 0, "must be >= 0 (0: never validate)"),
        ("checkpoint_every_iters", settings.checkpoint_every_iters >= 0, "must be >= 0 (0: only at epoch ends)"),
        ("log_every", settings.log_every >= 1, "must be >= 1"),
        ("lr", settings.lr > 0, "must be > 0"),
        ("min_lr_factor", 0 <= settings.min_lr_factor <= 1, "must be in [0, 1]"),
        ("time_limit", settings.time_limit is None or settings.time_limit > 0, "must be None or > 0 minutes"),
        ("backbone_lr_factor", settings.backbone_lr_factor > 0, "must be > 0"),
    )


def _with_best_metric(settings: TrainConfig, config: Config) -> TrainConfig:
    """``settings`` with ``best_metric`` checked against the metrics the validation will give (the task's; the
    ``segm_`` ones only for an instance model with masks in the data), its default when None."""
    task = evaluation_task(model_task(config))
    if settings.best_metric is None:
        return replace(settings, best_metric=task.default_best_metric)
    with_masks = task.name == "instance" and config.get("data.with_masks") is not False
    available = tuple(name for name in task.metric_names if with_masks or not name.startswith("segm_"))
    if settings.best_metric not in available:
        masks = "" if available == task.metric_names else "; segm_ metrics need an instance model and masks in the data"
        raise ConfigError(f"{config.origin('train.best_metric')}: train.best_metric must be one of {available} "
                          f"(the {task.name} metrics{masks}), got {settings.best_metric!r}")
    return settings


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; with ``deterministic`` also ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def build_optimizer(model: nn.Module, settings: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over the parameters that require gradients.

    Every parameter group carries ``lr_factor``, its learning rate over the schedule's: one group (factor 1)
    unless ``backbone_lr_factor`` differs from 1, then a ``backbone`` group at that factor and a ``heads`` group.
    Both use torch's fused update (one kernel over all parameters) on CPU and CUDA parameters and the
    multi-tensor (``foreach``) one elsewhere; torch picks neither by itself. On the CPU a fused AdamW step of
    ResNet-18's 11.7M parameters takes 6-7 ms against 22-85 ms for ``foreach`` and 22-32 ms for the per-tensor
    loop, the same values to float rounding.
    """
    groups = _parameter_groups(model, settings)
    kernel = ({"fused": True} if {parameter.device.type for group in groups for parameter in group["params"]}
              <= FUSED_OPTIMIZER_DEVICES else {"foreach": True})
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum,
                               weight_decay=settings.weight_decay, **kernel)
    return torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay, **kernel)


def _parameter_groups(model: nn.Module, settings: TrainConfig) -> list[dict[str, Any]]:
    if settings.backbone_lr_factor == 1.0:
        parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
        if not parameters:
            raise ValueError(f"{type(model).__name__} has no trainable parameters (train.freeze: {list(settings.freeze)})")
        return [{"params": parameters, "lr": settings.lr, "lr_factor": 1.0}]
    if not isinstance(getattr(model, "backbone", None), nn.Module):
        raise ValueError(f"train.backbone_lr_factor needs a model with a 'backbone' part; {type(model).__name__} "
                         f"has {[name for name, _ in model.named_children()]}")
    groups = parameter_groups(model, settings.lr, settings.lr * settings.backbone_lr_factor,
                              weight_decay=settings.weight_decay)
    return [dict(group, lr_factor=settings.backbone_lr_factor if group["name"] == "backbone" else 1.0)
            for group in groups]


def freeze_parts(model: nn.Module, parts: Sequence[str]) -> tuple[nn.Module, ...]:
    """Freeze the model's top-level modules named ``parts`` (no gradient); returns them.

    An unknown name is a ``ValueError`` listing the model's parts.
    """
    children = dict(model.named_children())
    unknown = [name for name in parts if name not in children]
    if unknown:
        raise ValueError(f"train.freeze names {unknown}, which {type(model).__name__} has not; its parts: "
                         f"{list(children)}")
    return tuple(freeze(children[name]) for name in parts)


def _to_device(images: list[torch.Tensor], targets: list[dict], device: torch.device) -> tuple[list, list]:
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
                for key, value in target.items()} for target in targets]
    return images, targets


@dataclass
class Position:
    """Where training stands: next batch ``batch_in_epoch`` of ``epoch``; ``iteration`` steps done."""

    epoch: int = 0
    batch_in_epoch: int = 0
    iteration: int = 0


class Trainer:
    """Trains the recipe's model on its data; see the module docstring for the run folder and resume.

    ``train_dataset`` / ``val_dataset`` replace the recipe's ``data:`` datasets (its batch and worker
    settings still apply); ``weights`` loads model weights only (instead of ``train.init_from``); ``resume``
    continues ``run_dir/last.pt``;
    ``clock`` returns seconds (the ``time_limit`` budget and ``it_per_s`` are measured with it).
    """

    def __init__(self, config: Config, run_dir: str | os.PathLike[str], *, resume: bool = False,
                 weights: str | os.PathLike[str] | None = None, train_dataset: AnyDataset | None = None,
                 val_dataset: AnyDataset | None = None, verbose: bool = True,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.config = config
        self.clock = clock
        self.settings = train_config(config)
        self.task: EvaluationTask = evaluation_task(model_task(config))
        self.data_settings = data_config(config, require_train=train_dataset is None)
        self.run_dir = Path(run_dir)
        self.context: DistributedContext = init_distributed(self.settings.device)
        self.verbose = verbose and self.context.is_main
        self._check_run_dir(resume)
        if train_dataset is None:
            train_dataset, val_dataset = build_datasets(self.data_settings, self.settings.seed, self.task.name)
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.class_names = list(train_dataset.class_names)
        fill_num_classes(config, self.class_names)
        seed_everything(self.settings.seed, self.settings.deterministic)
        self.model: nn.Module = self._in_layout(build_model(config).to(self.context.device))
        self.transfer_report = self._initialise_weights(weights, resume)
        self.frozen_parts = freeze_parts(self.model, self.settings.freeze)
        self.optimizer = build_optimizer(self.model, self.settings)
        self.lr_factors = [group["lr_factor"] for group in self.optimizer.param_groups]  # the recipe's, kept on resume
        use_amp = self.settings.amp and self.context.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.context.device.type, enabled=use_amp)
        self.autocast_enabled = use_amp
        self.sampler = ResumableSampler(len(train_dataset), shuffle=True, seed=self.settings.seed,
                                        rank=self.context.rank, num_replicas=self.context.world_size)
        self.loader = build_train_loader(train_dataset, self.data_settings, self.sampler, self.settings.seed)
        self.batches_per_epoch = math.ceil(self.sampler.samples_per_replica / self.data_settings.batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / self.settings.accumulate_steps)
        self.milestone_iterations = [epoch * self.steps_per_epoch for epoch in self.settings.milestones]
        self.milestone_fractions = [epoch / self.settings.epochs for epoch in self.settings.milestones]
        self.position = Position()
        self.clock_start: float | None = None  # clock() at this process's first step
        self.elapsed_before = 0.0  # training seconds of the runs this one resumes
        self.elapsed = 0.0  # training seconds so far (rank 0's), as of the last step, validation or save
        self.validation_seconds: float | None = None  # how long the last validation took
        self.validated_iteration: int | None = None  # the step of the last validation in this process
        self.saved_iteration: int | None = None  # the step of the run folder's last.pt (None: none yet)
        self.resumed = resume
        self._epoch_losses: dict[str, float] = {}
        self.best: dict[str, Any] = {"metric": self.settings.best_metric, "value": None, "epoch": None}
        self.records = RunRecords(self.run_dir, self.task.curves) if self.context.is_main else None
        if resume:
            self._resume()
        else:
            torch.manual_seed(self.settings.seed + self.context.rank)
        self.network = self._wrap(self.model)

    # ------------------------------------------------------------------------------------------ set-up

    def _check_run_dir(self, resume: bool) -> None:
        last = self.run_dir / LAST_CHECKPOINT
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise NotADirectoryError(f"the run folder {self.run_dir} is a file; pass --out a folder (new or a run's)")
        if resume and not last.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint {last} to continue")
        if not resume and last.is_file():
            raise FileExistsError(f"{self.run_dir} already holds a run ({last}); pass --resume to continue it "
                                  f"or --out to start a new run elsewhere")

    def _in_layout(self, model: nn.Module) -> nn.Module:
        """``model`` channels-last when ``train.channels_last`` asks for it."""
        if not self.settings.channels_last:
            return model
        if not callable(getattr(model, "use_channels_last", None)):
            raise ConfigError(f"{self.config.source}: train.channels_last needs a model with use_channels_last(); "
                              f"{type(model).__name__} has none")
        return model.use_channels_last()

    def _initialise_weights(self, weights: str | os.PathLike[str] | None, resume: bool) -> TransferReport | None:
        """Load ``weights`` (else ``train.init_from``) into a new run's model; a resumed run has its own."""
        source = weights if weights is not None else self.settings.init_from
        if source is None or resume:
            return None
        return load_transferred_weights(self.model, source, self.class_names)

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.context.is_distributed:
            return model
        device_ids = [self.context.device.index] if self.context.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids,
                                       find_unused_parameters=self.settings.find_unused_parameters)

    def _resume(self) -> None:
        checkpoint = load_checkpoint(self.run_dir / LAST_CHECKPOINT)
        self._check_world_size(checkpoint)
        self._check_same_model(checkpoint)
        self._warn_of_other_data(checkpoint)
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.position = Position(checkpoint["epoch"], checkpoint["batch_in_epoch"], checkpoint["iteration"])
        self.saved_iteration = self.position.iteration
        self.best = dict(checkpoint["best"])
        self.elapsed_before = self.elapsed = float(checkpoint.get("elapsed_seconds", 0.0))
        restore_rng_state(checkpoint["rng"][self.context.rank])

    def _check_world_size(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another world size: data shares and random states are per rank."""
        saved = checkpoint.get("world_size", len(checkpoint["rng"]))  # older checkpoints: one RNG state per rank
        if saved != self.context.world_size:
            raise CheckpointError(
                f"--resume: {self.run_dir / LAST_CHECKPOINT} was saved by a run of world size {saved} but this "
                f"run has world size {self.context.world_size}; resume with {saved} processes, or start a new "
                f"run from its weights with --weights")

    def _check_same_model(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose weights do not fit this recipe's model, saying what differs."""
        problems = mismatches(self.model.state_dict(), checkpoint["model"])
        if not problems:
            return
        saved = _flat_items(checkpoint.get("config", {}).get("model", {}), "model")
        given = _flat_items(self.config.data.get("model", {}), "model")
        keys = [key for key in {**saved, **given} if saved.get(key, _UNSET) != given.get(key, _UNSET)]
        if checkpoint.get("class_names", self.class_names) != self.class_names:
            saved["classes"], given["classes"] = _class_list(checkpoint["class_names"]), _class_list(self.class_names)
            keys.append("classes")
        if keys:
            trained, recipe = _describe_items(saved, keys), _describe_items(given, keys)
        else:
            trained, recipe = "other weights", "a model they do not fit (" + "; ".join(problems) + ")"
        raise CheckpointError(
            f"--resume: {self.run_dir / LAST_CHECKPOINT} was trained with {trained}; this recipe has {recipe}. "
            f"Resume with the run's own recipe ({self.run_dir / 'config.yaml'}) or start a new run in another --out")

    def _warn_of_other_data(self, checkpoint: dict[str, Any]) -> None:
        """Say so when the resumed run trains on other data than its checkpoint was trained on."""
        saved = _flat_items(checkpoint.get("config", {}).get("data", {}), "data")
        given = _flat_items(self.config.data.get("data", {}), "data")
        changed = [key for key in DATA_PATH_KEYS if saved.get(key) != given.get(key)]
        if changed:
            self._echo(f"warning: --resume continues {self.run_dir / LAST_CHECKPOINT} on other data: "
                       + _describe_items(given, changed) + " (it was trained with "
                       + _describe_items(saved, changed) + ")")

    # ------------------------------------------------------------------------------------- checkpoints

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.position.epoch,
            "batch_in_epoch": self.position.batch_in_epoch,
            "iteration": self.position.iteration,
            "world_size": self.context.world_size,
            "best": dict(self.best),
            "elapsed_seconds": self.elapsed,
            "config": self.config.data,
            "class_names": self.class_names,
            "category_ids": list(self.train_dataset.category_ids),
            "task": self.task.name,
        }

    def sync_buffers(self) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics drift apart between DDP's broadcasts)."""
        broadcast_tensors(list(self.model.buffers()))

    def save(self, *names: str) -> None:
        """Write the current state to ``run_dir/<name>`` for each name (rank 0 only; RNG states of all ranks)."""
        self._check_finite_weights()
        self._update_elapsed()
        rng_states = all_gather_objects(capture_rng_state())
        if self.context.is_main:
            first = save_checkpoint({**self._state(), "rng": rng_states}, self.run_dir / names[0])
            for name in names[1:]:  # the same state again: copy the file instead of serialising twice
                with atomic_output(self.run_dir / name) as temporary:
                    shutil.copyfile(first, temporary)
        if LAST_CHECKPOINT in names:
            self.saved_iteration = self.position.iteration
        barrier()

    def _last_checkpoint(self) -> str:
        """The run folder's last checkpoint and its step, for messages (or that there is none yet)."""
        if self.saved_iteration is None:
            return "no checkpoint was saved yet"
        return f"last checkpoint {self.run_dir / LAST_CHECKPOINT} (iteration {self.saved_iteration})"

    # ---------------------------------------------------------------------------------------- training

    @property
    def total_iterations(self) -> int:
        """Steps of the whole schedule (``epochs`` epochs)."""
        return self.settings.epochs * self.steps_per_epoch

    @property
    def budget_seconds(self) -> float | None:
        """The ``time_limit`` budget in seconds (None: no budget)."""
        return None if self.settings.time_limit is None else 60.0 * self.settings.time_limit

    def current_lr(self) -> float:
        """Learning rate of the next step (over the time budget when there is one, else over the epochs)."""
        settings = self.settings
        if self.budget_seconds is None:
            factor = lr_factor(self.position.iteration, self.total_iterations, settings.schedule,
                               self.milestone_iterations, settings.gamma, settings.warmup_iters,
                               settings.warmup_factor, settings.min_lr_factor)
        else:
            factor = progress_lr_factor(self.elapsed / self.budget_seconds, self.position.iteration,
                                        settings.schedule, self.milestone_fractions, settings.gamma,
                                        settings.warmup_iters, settings.warmup_factor, settings.min_lr_factor)
        return settings.lr * factor

    def fit(self) -> dict[str, Any]:
        """Train to the end of the schedule, ``max_iters`` or ``time_limit``; return the best metric record.

        Ctrl-C (``KeyboardInterrupt``) prints where training stopped and what ``--resume`` continues from, and
        propagates; the run folder keeps its last checkpoint.
        """
        try:
            return self._train_to_end()
        except KeyboardInterrupt:
            resume = "; continue with --resume" if self.saved_iteration is not None else ""
            self._echo(f"interrupted after iteration {self.position.iteration}; {self._last_checkpoint()}{resume}")
            raise

    def _train_to_end(self) -> dict[str, Any]:
        self._start_records()
        while (self.position.epoch < self.settings.epochs and not self._reached_max_iters()
               and not self._time_is_up()):
            self._train_epoch()
            if self.position.batch_in_epoch >= self.batches_per_epoch:
                self._end_epoch()
            elif not self._time_is_up():
                self.save(LAST_CHECKPOINT)
                if self.records is not None:
                    self.records.write_summaries()
                self._echo(f"stopped at max_iters={self.settings.max_iters}; checkpoint {self.run_dir / LAST_CHECKPOINT}")
        if self._time_is_up():
            self._end_at_time_limit()
        self.sync_buffers()
        return dict(self.best)

    def _reached_max_iters(self) -> bool:
        return self.settings.max_iters is not None and self.position.iteration >= self.settings.max_iters

    def _update_elapsed(self) -> None:
        """Refresh ``elapsed`` from the clock, with rank 0's value on every rank (the same lr and stop)."""
        if self.clock_start is None:
            return
        seconds = torch.tensor([self.elapsed_before + self.clock() - self.clock_start], dtype=torch.float64,
                               device=self.context.device)
        broadcast_tensors([seconds])
        self.elapsed = float(seconds.item())

    def _time_is_up(self) -> bool:
        return self.budget_seconds is not None and self.elapsed >= self.budget_seconds

    def _end_at_time_limit(self) -> None:
        """Finish a run whose budget is spent: validate and save what the epoch end did not, say so."""
        if self.clock_start is None:
            self._echo(f"nothing to train: the time limit ({self.settings.time_limit} min) was already spent")
            return
        training_minutes = self.elapsed / 60
        unsaved = self.position.batch_in_epoch > 0
        unvalidated = self._validation_enabled() and self.validated_iteration != self.position.iteration
        if unsaved or unvalidated:
            stats = self._validate() if self._validation_enabled() else None
            epoch = round(self.position.epoch + self.position.batch_in_epoch / self.batches_per_epoch, 3)
            self._save_and_record(epoch, stats)
        message = (f"time limit reached: train.time_limit={self.settings.time_limit} min ended training at "
                   f"iteration {self.position.iteration} after {training_minutes:.2f} min")
        if self.elapsed / 60 - training_minutes >= 0.005:
            message += f" ({self.elapsed / 60:.2f} min with the final validation and checkpoint)"
        if self.records is not None:
            self.records.log({"kind": "event", "message": message, "iteration": self.position.iteration,
                              "epoch": self.position.epoch, "elapsed_seconds": round(self.elapsed, 3)})
        self._echo(f"{message}; checkpoint {self.run_dir / LAST_CHECKPOINT}")

    def _start_records(self) -> None:
        if self.records is None:
            return
        for stale in self.run_dir.glob(".*.tmp*"):  # temporary files of writes cut short by a kill
            stale.unlink(missing_ok=True)
        self.records.start(self.position.iteration if self.resumed else None)
        self.config.dump(self.run_dir / "config.yaml")
        what = "resume" if self.resumed else "start"
        self.records.log({"kind": "event", "message": what, "iteration": self.position.iteration,
                          "epoch": self.position.epoch, "world_size": self.context.world_size,
                          "device": str(self.context.device), "train": describe(self.train_dataset),
                          "val": describe(self.val_dataset)})
        self._echo(f"{what}: run folder {self.run_dir}, {len(self.train_dataset)} training images, "
                   f"{self.steps_per_epoch} steps per epoch, device {self.context.device} x{self.context.world_size}")
        if self.transfer_report is not None:
            report = self.transfer_report
            self.records.log({"kind": "event", "message": report.summary(), "iteration": 0, "epoch": 0,
                              "loaded": len(report.loaded), "reinitialised": list(report.reinitialised),
                              "kept_classes": list(report.kept_classes)})
            self._echo(report.summary())

    def _echo(self, message: str) -> None:
        if self.verbose:
            print(message, flush=True)

    def _train_epoch(self) -> None:
        """Train the rest of the current epoch (or up to ``max_iters``)."""
        epoch = self.position.epoch
        self.sampler.set_epoch(epoch, skip=self.position.batch_in_epoch * self.data_settings.batch_size)
        self.loader.epoch = epoch
        self.loader.generator.manual_seed(self.settings.seed + epoch)
        self._train_mode()
        first_step = math.ceil(self.position.batch_in_epoch / self.settings.accumulate_steps)
        show = self.context.is_main and self.verbose and sys.stderr.isatty()
        progress = tqdm(total=self.steps_per_epoch, initial=first_step, desc=f"epoch {epoch + 1}/{self.settings.epochs}",
                        disable=not show, dynamic_ncols=True, leave=False)
        with progress:
            self._train_steps(progress)

    def _train_steps(self, progress: tqdm) -> None:
        """The steps of ``_train_epoch``, each counted on ``progress``."""
        batches = worker_errors_unwrapped(self.loader)
        window = _LossWindow()
        epoch_totals = _LossWindow()
        window_start = self.clock()
        while (self.position.batch_in_epoch < self.batches_per_epoch and not self._reached_max_iters()
               and not self._time_is_up()):
            count = min(self.settings.accumulate_steps, self.batches_per_epoch - self.position.batch_in_epoch)
            lr = self.current_lr()
            if self.clock_start is None:
                self.clock_start = window_start = self.clock()
            losses = self._step([next(batches) for _ in range(count)], lr)
            self._update_elapsed()
            window.add(losses)
            epoch_totals.add(losses)
            progress.set_postfix(loss=f"{losses['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
            progress.update(1)
            if self.position.iteration % self.settings.log_every == 0:
                elapsed = self.clock() - window_start
                self._log_train(window, lr, len(window) / max(elapsed, 1e-9))
                window, window_start = _LossWindow(), self.clock()
            every = self.settings.checkpoint_every_iters
            if (every and self.position.iteration % every == 0 and self.position.batch_in_epoch < self.batches_per_epoch
                    and not self._reached_max_iters() and not self._time_is_up()):  # fit() saves at both anyway
                self.save(LAST_CHECKPOINT)
        if len(window):
            self._log_train(window, self.current_lr(), len(window) / max(self.clock() - window_start, 1e-9))
        self._epoch_losses = epoch_totals.means()

    def _train_mode(self) -> None:
        """Train mode, except the ``train.freeze`` parts: their batch-norm statistics do not move."""
        self.network.train()
        for part in self.frozen_parts:
            part.eval()

    def _step(self, batches: list[tuple[list, list]], lr: float) -> dict[str, float]:
        """One optimizer update over ``batches``; returns the losses averaged over batches and ranks."""
        for group, factor in zip(self.optimizer.param_groups, self.lr_factors, strict=True):
            group["lr"] = lr * factor
        self.optimizer.zero_grad(set_to_none=True)
        summed: torch.Tensor | None = None
        names: list[str] = []
        for index, (images, targets) in enumerate(batches):
            images, targets = _to_device(images, targets, self.context.device)
            last = index == len(batches) - 1
            sync = nullcontext() if last or not self.context.is_distributed else self.network.no_sync()
            with sync:
                loss_dict = self._forward(images, targets, index)
                names = sorted(loss_dict)
                values = torch.stack([loss_dict[name].detach().float() for name in names])
                reduced = all_reduce_sum(values) / self.context.world_size
                self._check_finite(reduced, names, index)
                total = sum(loss_dict[name] for name in names)
                self.scaler.scale(total / len(batches)).backward()
            summed = reduced if summed is None else summed + reduced
        if self.settings.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        means = (summed / len(batches)).tolist()
        self.position.iteration += 1
        self.position.batch_in_epoch += len(batches)
        result = dict(zip(names, means, strict=True))
        result["loss"] = sum(means)
        return result

    def _forward(self, images: list[torch.Tensor], targets: list[dict], batch_offset: int) -> dict[str, torch.Tensor]:
        """The losses of one batch. A ``ValueError`` that NaN or infinite activations caused (the model's own
        boxes checked as NaN: weights that diverged, finite but too large) is a ``NonFiniteLossError``."""
        with torch.autocast(self.context.device.type, enabled=self.autocast_enabled):
            try:
                return self.network(images, targets)
            except ValueError as error:
                layer = _first_non_finite_layer(self.model, lambda: self.model(images, targets))
                if layer is None:
                    raise
                raise NonFiniteLossError(
                    f"training diverged: at iteration {self.position.iteration + 1} (epoch {self.position.epoch + 1}, "
                    f"batch {self.position.batch_in_epoch + batch_offset + 1} of the epoch) the output of layer "
                    f"{layer!r} became NaN or infinite ({error}); {DIVERGENCE_ADVICE}. Training stopped and nothing "
                    f"was saved; {self._last_checkpoint()}") from error

    def _check_finite(self, reduced: torch.Tensor, names: list[str], batch_offset: int) -> None:
        finite = torch.isfinite(reduced)
        if bool(finite.all()):
            return
        term = names[int((~finite).nonzero()[0])]
        batch = self.position.batch_in_epoch + batch_offset
        raise NonFiniteLossError(
            f"non-finite loss at iteration {self.position.iteration + 1} (epoch {self.position.epoch + 1}, "
            f"batch {batch + 1} of the epoch): loss term {term!r} = {reduced[names.index(term)].item()}; "
            f"{DIVERGENCE_ADVICE}; training stopped and nothing was saved; {self._last_checkpoint()}"
        )

    def _check_finite_weights(self) -> None:
        """Raise ``NonFiniteLossError`` rather than save weights that hold a NaN or an infinity (an update diverged
        since the last step's loss was checked): a checkpoint keeps only weights training can go on from."""
        broken = non_finite_tensors(self.model.state_dict())
        if broken:
            others = f" (and {len(broken) - 1} more tensors)" if len(broken) > 1 else ""
            raise NonFiniteLossError(
                f"training diverged: after iteration {self.position.iteration} (epoch {self.position.epoch + 1}) the "
                f"weights {broken[0]}{others} hold NaN or infinite values; {DIVERGENCE_ADVICE}. Training stopped "
                f"and nothing was saved; {self._last_checkpoint()}")

    def _log_train(self, window: _LossWindow, lr: float, it_per_s: float) -> None:
        if self.records is None:
            return
        self.records.log({"kind": "train", "epoch": self.position.epoch + 1, "iteration": self.position.iteration,
                          "lr": lr, **window.means(), "it_per_s": round(it_per_s, 3)})

    def _end_epoch(self) -> None:
        epoch_number = self.position.epoch + 1
        final = epoch_number == self.settings.epochs or self._time_is_up()
        stats = self._validate() if self._validation_due(epoch_number, final) else None
        self.position = Position(self.position.epoch + 1, 0, self.position.iteration)
        self._save_and_record(epoch_number, stats)

    def _validation_enabled(self) -> bool:
        return self.val_dataset is not None and self.settings.eval_every_epochs > 0

    def _validation_due(self, epoch_number: int, final: bool) -> bool:
        """Validate every ``eval_every_epochs`` and at the end; skip one that would overrun the budget."""
        if not self._validation_enabled():
            return False
        if final:
            return True
        would_overrun = (self.budget_seconds is not None and self.validation_seconds is not None
                         and self.elapsed + self.validation_seconds >= self.budget_seconds)
        return epoch_number % self.settings.eval_every_epochs == 0 and not would_overrun

    def _validate(self) -> dict[str, float] | None:
        """``evaluate()``, remembering its step and its duration on the (shared) training clock."""
        self._update_elapsed()
        before = self.elapsed
        stats = self.evaluate()
        self._update_elapsed()
        self.validation_seconds = self.elapsed - before
        self.validated_iteration = self.position.iteration
        return stats

    def _save_and_record(self, epoch: float, stats: dict[str, float] | None) -> None:
        """Keep the best ``stats``, save ``last.pt`` (and ``best.pt``), log the ``epoch`` entry, print it."""
        improved = stats is not None and (self.best["value"] is None or stats[self.best["metric"]] > self.best["value"])
        if improved:
            self.best = {"metric": self.best["metric"], "value": stats[self.best["metric"]], "epoch": epoch}
        self.save(*((LAST_CHECKPOINT, BEST_CHECKPOINT) if improved else (LAST_CHECKPOINT,)))
        if self.records is not None:
            entry = {"kind": "epoch", "epoch": epoch, "iteration": self.position.iteration,
                     "lr": self.current_lr(), **self._epoch_losses, **(stats or {})}
            self.records.log(entry)
            self.records.write_summaries()
        metric = f", {self.best['metric']} {stats[self.best['metric']]:.4f}" if stats else ""
        self._echo(f"epoch {epoch}/{self.settings.epochs}: iteration {self.position.iteration}, "
                   f"loss {self._epoch_losses.get('loss', float('nan')):.4f}{metric}")

    # -------------------------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """The task's metrics of the model on the validation set by name (all ranks share the images)."""
        if self.val_dataset is None:
            return None
        self.sync_buffers()
        stats = evaluate_shared(self.model, self.val_dataset, self.task, self.context, self.data_settings.batch_size,
                                self.data_settings.workers)
        self._train_mode()
        if self.best["metric"] not in stats:
            raise ConfigError(f"{self.config.source}: train.best_metric is {self.best['metric']!r} but the validation "
                              f"gives only {sorted(stats)} (segm_ metrics need a model with masks and masks in the data)")
        return stats


class _LossWindow:
    """Running sums of the per-step loss dicts, for means over a logging window or an epoch."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, losses: dict[str, float]) -> None:
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1

    def means(self) -> dict[str, float]:
        return {name: total / max(self.count, 1) for name, total in self.sums.items()}

    def __len__(self) -> int:
        return self.count


_UNSET = "unset"
DATA_PATH_KEYS = ("data.train", "data.val", "data.image_root", "data.train_split", "data.val_split")
"""The recipe keys that say which data a run trains and validates on (a resume on other data is warned of)."""


def _flat_items(section: Any, prefix: str) -> dict[str, Any]:
    """The values of a nested recipe section by dotted key (``{"model.rpn.nms_thresh": 0.7, ...}``)."""
    if not isinstance(section, dict):
        return {prefix: section}
    items: dict[str, Any] = {}
    for key, value in section.items():
        items.update(_flat_items(value, f"{prefix}.{key}"))
    return items


def _class_list(class_names: Sequence[str], limit: int = 6) -> str:
    """``[circle, square, ...] (12)``: the first ``limit`` class names (background excluded) and their count."""
    names = list(class_names[1:])
    return f"[{', '.join(names[:limit])}{', ...' if len(names) > limit else ''}] ({len(names)})"


def _describe_items(items: dict[str, Any], keys: Sequence[str], limit: int = 5) -> str:
    """``key=value`` for the first ``limit`` of ``keys`` (``unset`` for a key ``items`` lacks)."""
    shown = ", ".join(f"{key}={items.get(key, _UNSET)}" for key in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _first_non_finite_layer(model: nn.Module, run: Callable[[], Any]) -> str | None:
    """The name of the first layer (module without children) of ``model`` whose output holds a NaN or an
    infinity from finite inputs (an overflow, not bad data) while ``run()`` runs without gradients, else None. What ``run()`` raises is ignored: it re-runs a
    forward that failed, only to see where the numbers broke."""
    found: list[str] = []

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            floating = isinstance(output, torch.Tensor) and output.is_floating_point()
            if not found and floating and not bool(torch.isfinite(output).all()) and _all_finite(inputs):
                found.append(name)
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules()
               if not list(module.children())]
    try:
        with suppress(Exception), torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def _all_finite(inputs: tuple[Any, ...]) -> bool:
    """Whether every floating-point tensor among a layer's ``inputs`` is finite."""
    return all(bool(torch.isfinite(value).all()) for value in inputs
               if isinstance(value, torch.Tensor) and value.is_floating_point())


def evaluate_shared(model: nn.Module, dataset: AnyDataset, task: EvaluationTask, context: DistributedContext,
                    batch_size: int = 2, workers: int = 0) -> dict[str, float]:
    """The ``task``'s metrics of ``model`` on ``dataset`` by name, each rank predicting a share.

    Scored as ``tools/eval.py`` scores it (for detection: against the original annotation file for COCO
    data, else the ground truth a COCO conversion would write; ``structured.evaluation.detector``). Every
    rank gets the same result.
    """
    indices = list(range(context.rank, len(dataset), context.world_size))
    shares = all_gather_objects(task.predict_share(model, dataset, indices, context.device, batch_size, workers))
    stats = task.score(dataset, shares) if context.is_main else None
    return broadcast_object(stats)


def train_from_config(config: Config, run_dir: str | os.PathLike[str], resume: bool = False,
                      weights: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Build a :class:`Trainer` and train; returns the best metric record."""
    return Trainer(config, run_dir, resume=resume, weights=weights).fit()

