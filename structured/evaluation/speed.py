"""Latency and throughput of a model, with pre- and post-processing timed separately.

Contract: ``measure_speed(model, inputs, preprocess=..., postprocess=...)`` runs ``warmup`` untimed and then
``iterations`` timed passes of ``postprocess(model(preprocess(inputs)))`` on one fixed batch and returns a
:class:`SpeedResult` (``forward=`` times another callable of the model, e.g. the network part of a
detector's inference, in place of ``model`` itself). Each stage is timed with ``time.perf_counter`` around the call; on CUDA the device
is synchronised (``torch.cuda.synchronize``) before every clock read, so queued kernels are charged to the
stage that launched them. All three stages run under ``torch.inference_mode()``; the model runs in
``eval()`` mode (restored afterwards), and under ``torch.autocast`` when ``amp`` is set (float16 on CUDA, bfloat16 on
CPU unless ``amp_dtype`` says otherwise). Times are per batch in milliseconds; FPS is images per second
of the whole pipeline: ``batch_size / mean(pre + model + post)``. ``SpeedResult.description`` states all
of this for the numbers it carries.

``measure_pipeline(model, image_path)`` is what ``tools/eval.py`` prints: a detector's or segmenter's
whole inference on one image file, decode + to-tensor, network (``raw_outputs``) and ``postprocess`` apart.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` since a reset just before the timed loop (tensor
memory only, not the caching allocator's reserve or the CUDA context); on CPU the process' peak resident
set size, reset before the timed loop through ``/proc/self/clear_refs`` where Linux allows it, otherwise
the high-water mark since the process started (the description says which).
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from structured.measures import synchronize

STAGES = ("preprocess", "model", "postprocess", "total")


@dataclass(frozen=True)
class StageTime:
    """Summary of one stage's per-batch times in milliseconds."""

    mean_ms: float
    median_ms: float
    p90_ms: float

    @classmethod
    def from_samples(cls, samples_ms: list[float]) -> StageTime:
        """Mean, median and 90th percentile (linear interpolation) of the samples."""
        return cls(
            mean_ms=statistics.fmean(samples_ms),
            median_ms=statistics.median(samples_ms),
            p90_ms=float(np.percentile(samples_ms, 90)),
        )


@dataclass(frozen=True)
class SpeedResult:
    """What was measured, how, and the numbers: per-stage times, FPS and peak memory."""

    batch_size: int
    warmup: int
    iterations: int
    device: str
    amp_dtype: str | None
    stage_names: dict[str, str]  # stage -> name of the callable timed ("identity" when none was given)
    stages: dict[str, StageTime]
    samples_ms: dict[str, list[float]] = field(repr=False)
    fps: float
    peak_memory_mb: float
    memory_kind: str
    image_size: tuple[int, int] | None = None

    @property
    def headline(self) -> str:
        """One line: mean time of each stage, FPS, and the device, threads, batch and image size."""
        stages = ", ".join(f"{name} {self.stages[name].mean_ms:.1f} ms" for name in STAGES[:3])
        image = f", image {self.image_size[0]}x{self.image_size[1]} (HxW)" if self.image_size else ""
        return (f"speed: {stages}; {self.fps:.1f} FPS on {self.device}, {torch.get_num_threads()} threads, "
                f"batch {self.batch_size}{image}")

    @property
    def description(self) -> str:
        """One paragraph saying exactly what the numbers time."""
        sync = (
            "CUDA synchronised before every clock read"
            if self.device.startswith("cuda")
            else "CPU, no sync needed"
        )
        amp = f"autocast {self.amp_dtype}" if self.amp_dtype else "no autocast (full precision)"
        total = self.stages["total"]
        return (
            f"{self.iterations} timed iterations after {self.warmup} warm-up, batch size {self.batch_size}, "
            f"device {self.device}, {amp}, torch threads {torch.get_num_threads()}; {sync}. Per batch: "
            f"preprocess = {self.stage_names['preprocess']}, model = {self.stage_names['model']} in eval "
            f"mode, postprocess = {self.stage_names['postprocess']}, all under inference_mode. "
            f"Total mean {total.mean_ms:.2f} ms, median {total.median_ms:.2f} ms, p90 {total.p90_ms:.2f} ms; "
            f"FPS {self.fps:.1f} images/s = batch size / mean total. Peak memory {self.peak_memory_mb:.1f} MiB "
            f"({self.memory_kind})."
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the settings, stage summaries, FPS, memory and the description."""
        return {
            "batch_size": self.batch_size,
            "warmup": self.warmup,
            "iterations": self.iterations,
            "device": self.device,
            "amp_dtype": self.amp_dtype,
            "stages_ms": {
                name: {"mean": t.mean_ms, "median": t.median_ms, "p90": t.p90_ms}
                for name, t in self.stages.items()
            },
            "fps": self.fps,
            "peak_memory_mb": self.peak_memory_mb,
            "memory_kind": self.memory_kind,
            "image_size": None if self.image_size is None else list(self.image_size),
            "threads": torch.get_num_threads(),
            "headline": self.headline,
            "description": self.description,
        }


def measure_speed(
    model: nn.Module,
    inputs: Any,
    *,
    preprocess: Callable[[Any], Any] | None = None,
    forward: Callable[[Any], Any] | None = None,
    postprocess: Callable[[Any], Any] | None = None,
    batch_size: int | None = None,
    warmup: int = 10,
    iterations: int = 50,
    amp: bool = False,
    amp_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    image_size: tuple[int, int] | None = None,
) -> SpeedResult:
    """Time ``postprocess(model(preprocess(inputs)))`` stage by stage (see the module docstring).

    ``inputs`` is one batch (a tensor, a list of images, anything ``preprocess`` accepts); ``batch_size``
    defaults to its length. ``device`` defaults to the model's; it is only used for synchronisation,
    autocast and memory: ``inputs``/``preprocess`` must put data there. ``forward`` (default ``model``) is
    the callable timed as the model stage; ``model`` is still the module put in eval mode. ``image_size``
    (height, width of the input images) is only reported.
    """
    if warmup < 0 or iterations < 1:
        raise ValueError(
            f"need warmup >= 0 and iterations >= 1, got warmup={warmup}, iterations={iterations}"
        )
    batch_size = batch_size if batch_size is not None else _batch_length(inputs)
    device = torch.device(device) if device is not None else _model_device(model)
    autocast_dtype = _autocast_dtype(device, amp, amp_dtype)
    stages = {"preprocess": preprocess or _identity, "model": forward or model, "postprocess": postprocess or _identity}
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            _timed_pass(stages, inputs, device, autocast_dtype)
        memory_kind = _reset_peak_memory(device)
        samples = [_timed_pass(stages, inputs, device, autocast_dtype) for _ in range(iterations)]
        peak_memory_mb = _peak_memory_bytes(device) / 2**20
    finally:
        model.train(was_training)
    samples_ms = {name: [sample[name] * 1e3 for sample in samples] for name in STAGES}
    summaries = {name: StageTime.from_samples(values) for name, values in samples_ms.items()}
    return SpeedResult(
        batch_size=batch_size,
        warmup=warmup,
        iterations=iterations,
        device=_device_name(device),
        amp_dtype=str(autocast_dtype).removeprefix("torch.") if autocast_dtype else None,
        stage_names={name: _callable_name(function) for name, function in stages.items()},
        stages=summaries,
        samples_ms=samples_ms,
        fps=batch_size / (summaries["total"].mean_ms / 1e3),
        peak_memory_mb=peak_memory_mb,
        memory_kind=memory_kind,
        image_size=image_size,
    )


def _timed_pass(
    stages: dict[str, Callable[[Any], Any]],
    inputs: Any,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> dict[str, float]:
    """Seconds spent in each stage of one pass, and their sum under ``total``."""
    seconds = {}
    data = inputs
    with torch.inference_mode():
        for name in ("preprocess", "model", "postprocess"):
            context = _autocast(device, autocast_dtype) if name == "model" else contextlib.nullcontext()
            synchronize(device)
            start = time.perf_counter()
            with context:
                data = stages[name](data)
            synchronize(device)
            seconds[name] = time.perf_counter() - start
    seconds["total"] = seconds["preprocess"] + seconds["model"] + seconds["postprocess"]
    return seconds


def _identity(data: Any) -> Any:
    return data


def _callable_name(function: Callable[[Any], Any]) -> str:
    if function is _identity:
        return "identity (nothing given)"
    if isinstance(function, nn.Module):
        return f"{type(function).__name__} forward"
    return getattr(function, "__qualname__", type(function).__name__)


def _batch_length(inputs: Any) -> int:
    try:
        return len(inputs)
    except TypeError as error:
        raise ValueError(
            f"cannot infer batch_size from inputs of type {type(inputs).__name__}; pass it"
        ) from error


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _autocast_dtype(device: torch.device, amp: bool, amp_dtype: torch.dtype | None) -> torch.dtype | None:
    if not amp:
        return None
    return amp_dtype or (torch.float16 if device.type == "cuda" else torch.bfloat16)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _reset_peak_memory(device: torch.device) -> str:
    """Reset the peak counter where possible; return what the peak will mean."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "CUDA max_memory_allocated during the timed iterations"
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "CPU peak RSS of the process during the timed iterations (/proc VmHWM, reset before timing)"
    except OSError:
        return "CPU peak RSS of the process since it started (the peak counter could not be reset)"


def _peak_memory_bytes(device: torch.device) -> float:
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak if sys.platform == "darwin" else peak * 1024)


def measure_pipeline(model: nn.Module, image_path: str | os.PathLike[str], device: torch.device,
                     iterations: int = 20) -> SpeedResult:
    """Time what a user pays per image, batch 1, stage by stage: decode + to tensor, network, post-processing.

    - preprocess: read and decode the image file, convert it to a float tensor on ``device``;
    - model: ``model.raw_outputs`` (the model's own resize, normalisation and padding included);
    - postprocess: ``model.postprocess`` to the model's outputs (a detector's Prediction dicts: thresholds,
      NMS, rescaling; a segmenter's class maps and probabilities at the input size).

    Any model with ``raw_outputs`` and ``postprocess`` (every detector and segmenter) can be timed. The image
    decoding (OpenCV) is imported here, so that importing ``structured.evaluation`` does not load it.
    """
    from structured.data.loading import image_to_tensor, read_image

    def decode_to_tensor(path: str | os.PathLike[str]) -> list[torch.Tensor]:
        return [image_to_tensor(read_image(path)).to(device)]

    height, width = read_image(image_path).shape[:2]
    return measure_speed(model, image_path, preprocess=decode_to_tensor, forward=model.raw_outputs,
                         postprocess=model.postprocess, batch_size=1, warmup=min(3, iterations),
                         iterations=iterations, device=device, image_size=(height, width))
