"""The model comparison table: size, compute, speed and accuracy of every recipe (``tools/benchmark.py models``).

Contract: ``model_spec(name_or_path)`` takes a registered recipe's name or a recipe YAML file (``configs/demo/
shapes_unet.yaml``, a run's ``config.yaml``); ``profile_model(spec, settings)`` builds it with seeded random
weights (``torch.manual_seed(0)``), counts its parameters and fp32 size as built, then applies
``optimize_for_inference()`` (batch norms folded, channels-last) and, on one seeded random RGB image of
``settings.image_size`` (height, width) fed as a detector or segmenter takes it (the model resizes and pads
inside), records the padded size its backbone sees, the FLOPs of the whole inference (``structured.measures``:
convolutions and matrix products), the detections it returns, and unless ``settings.timing`` is off the best
CPU latency of ``settings.repeats`` runs at batch 1 (and the GPU's, CUDA synchronised, when ``settings.gpu``).

Timing honesty: a detector's post-processing (NMS, mask pasting) costs more the more boxes pass its score
threshold, and with random weights that number is not a trained model's (every class scores near
``1 / (C + 1)``: none pass with 90 classes, up to the detection limit with 5); the ``dets`` column shows how many
came out, so a row's time can be read against it (docs/benchmarks.md times 100 detections on purpose). ``add_accuracy`` fills each row's accuracy from ``metrics.json`` files
(``structured.evaluation.metrics_file``, matched by recipe label). ``format_models`` renders markdown, CSV or text,
``caption`` states how the numbers were taken, and ``speed_accuracy_points`` gives the scatter's points.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from structured.config import Config, build_model, load_config, model_task
from structured.evaluation.metrics_file import RecordedAccuracy, recipe_label
from structured.evaluation.plots import SpeedAccuracyPoint
from structured.measures import best_latency_ms, count_flops, count_parameters, fp32_mib, render_table
from structured.registry import MODELS

ACCURACY_METRICS = ("AP", "AP50", "mask_AP", "mIoU")
PLOTTED_METRICS = ("AP", "mIoU")  # the metric a row is plotted by: box AP for detectors, mIoU for segmenters


@dataclass(frozen=True)
class ModelSpec:
    """One row to profile: its label (``recipe_label``), what the user named it by, and the recipe."""

    label: str
    source: str
    config: Config


@dataclass(frozen=True)
class ProfileSettings:
    """How the table is measured: the fed image (height, width), timed runs, timing on or off, a GPU."""

    image_size: tuple[int, int] = (480, 640)
    repeats: int = 3
    timing: bool = True
    gpu: torch.device | None = None


@dataclass(frozen=True)
class ModelProfile:
    """One row of the model table (``None``: not measured; accuracy from ``add_accuracy``)."""

    recipe: str
    task: str
    architecture: str
    classes: int
    network_input: str
    params: int
    size_mib: float
    gflops: float
    detections: int | None
    cpu_ms: float | None = None
    cpu_fps: float | None = None
    gpu_ms: float | None = None
    gpu_fps: float | None = None
    accuracy: dict[str, float] = dataclasses.field(default_factory=dict)
    label: str = ""


def model_spec(name_or_path: str, data_classes: int | None = None) -> ModelSpec:
    """The recipe registered as ``name_or_path``, or in that YAML file; ``data_classes`` fills ``model.num_classes``
    where a file leaves it to its data. An unknown name is an ``UnknownNameError`` listing the registered ones."""
    if Path(name_or_path).suffix in (".yaml", ".yml"):
        config = load_config(name_or_path)
        if data_classes is not None and config.get("model.num_classes") is None:
            config.set("model.num_classes", data_classes)
    else:
        MODELS.get(name_or_path)
        config = Config({"model": {"name": name_or_path}}, source=name_or_path)
    return ModelSpec(recipe_label(name_or_path), name_or_path, config)


def profile_model(spec: ModelSpec, settings: ProfileSettings) -> ModelProfile:
    """Build, count and time the model of ``spec`` as the module docstring says."""
    torch.manual_seed(0)
    model = build_model(spec.config).eval()
    params = count_parameters(model)
    model.optimize_for_inference()
    height, width = settings.image_size
    images = [torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))]
    flops, network_input, predictions = counted_inference(model, images)
    row = ModelProfile(
        recipe=spec.source,
        task=model_task(spec.config),
        architecture=architecture_of(spec.config, model),
        classes=classes_of(spec.config),
        network_input=network_input,
        params=params,
        size_mib=fp32_mib(params),
        gflops=flops / 1e9,
        detections=len(predictions[0]["boxes"]) if "boxes" in predictions[0] else None,
        label=spec.label,
    )
    return timed(row, model, images, settings) if settings.timing else row


def timed(row: ModelProfile, model: nn.Module, images: list[Tensor], settings: ProfileSettings) -> ModelProfile:
    """``row`` with the CPU latency and FPS of ``model(images)``, and the GPU's when ``settings.gpu`` is set.

    On the CPU the FLOP-counting pass of ``counted_inference`` was the warm-up; the GPU gets three of its own.
    """
    cpu_ms = best_latency_ms(model, images, settings.repeats, warmup=0)
    row = dataclasses.replace(row, cpu_ms=cpu_ms, cpu_fps=1000.0 / cpu_ms)
    if settings.gpu is None:
        return row
    model.to(settings.gpu)
    gpu_ms = best_latency_ms(model, [image.to(settings.gpu) for image in images], settings.repeats, warmup=3,
                             device=settings.gpu)
    model.cpu()
    return dataclasses.replace(row, gpu_ms=gpu_ms, gpu_fps=1000.0 / gpu_ms)


def counted_inference(model: nn.Module, images: list[Tensor]) -> tuple[int, str, list[dict[str, Tensor]]]:
    """FLOPs of ``model(images)``, ``"HxW"`` of the (resized, padded) batch its ``backbone`` receives, and the
    predictions, from one pass."""
    shapes, outputs = [], []
    hook = model.backbone.register_forward_pre_hook(lambda _, inputs: shapes.append(tuple(inputs[0].shape)))
    try:
        flops = count_flops(lambda batch: outputs.append(model(batch)), images)
    finally:
        hook.remove()
    return flops, f"{shapes[0][-2]}x{shapes[0][-1]}", outputs[0]


def architecture_of(config: Config, model: nn.Module) -> str:
    """The model's class and its backbone (and neck): ``FasterRCNN: resnet50 + fpn``; the backbone's class when
    the recipe does not name a registered one (the original UNet's encoder)."""
    arguments = MODELS.get(config.get("model.name")).resolve(_model_arguments(config))
    backbone = arguments.get("backbone")
    trunk = backbone["name"] if isinstance(backbone, dict) else type(model.backbone).__name__
    neck = arguments.get("neck")
    return f"{type(model).__name__}: {trunk}" + (f" + {neck['name']}" if isinstance(neck, dict) else "")


def classes_of(config: Config) -> int:
    """``model.num_classes`` of the recipe, else its registered default."""
    given = config.get("model.num_classes")
    if given is not None:
        return int(given)
    return int(inspect.signature(MODELS.get(config.get("model.name"))).parameters["num_classes"].default)


def _model_arguments(config: Config) -> dict[str, Any]:
    return {key: value for key, value in config.data["model"].items() if key != "name"}


def add_accuracy(rows: Sequence[ModelProfile], recorded: Sequence[RecordedAccuracy]) -> tuple[list[ModelProfile],
                                                                                               list[str]]:
    """``rows`` with the metrics of each ``metrics.json`` in the row of the same label, and one note per file
    whose recipe is in no row (it is left out)."""
    by_label = {row.label: index for index, row in enumerate(rows)}
    filled = list(rows)
    notes = []
    for accuracy in recorded:
        if accuracy.recipe not in by_label:
            notes.append(f"{accuracy.path} is for recipe {accuracy.recipe!r}, which is not in the table "
                         f"(rows: {', '.join(by_label)}); left out")
            continue
        index = by_label[accuracy.recipe]
        filled[index] = dataclasses.replace(filled[index], accuracy={**filled[index].accuracy, **accuracy.metrics})
    return filled, notes


def check_unique_labels(specs: Sequence[ModelSpec]) -> None:
    """``ValueError`` naming two rows that share a label (their metrics files could not be told apart)."""
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.label in seen:
            raise ValueError(f"{seen[spec.label]} and {spec.source} both have the recipe label {spec.label!r}; "
                             "give only one of them")
        seen[spec.label] = spec.source


def speed_accuracy_points(rows: Sequence[ModelProfile]) -> list[SpeedAccuracyPoint]:
    """A point per timed row with an accuracy: its GPU time when measured, else its CPU time, and its box AP
    (detectors) or mIoU (segmenters)."""
    points = []
    for row in rows:
        metric = next((name for name in PLOTTED_METRICS if name in row.accuracy), None)
        latency = row.gpu_ms if row.gpu_ms is not None else row.cpu_ms
        if metric is not None and latency is not None:
            points.append(SpeedAccuracyPoint(row.label, latency, row.accuracy[metric], metric))
    return points


def caption(settings: ProfileSettings, threads: int) -> str:
    """One paragraph saying how the table's numbers were taken."""
    height, width = settings.image_size
    return (f"Input: one {height}x{width} (HxW) RGB image, resized and padded by each model as in use ('network "
            "input' is the padded batch its backbone sees). Seeded random weights; params and fp32 MiB as built, "
            "then optimize_for_inference() (batch norms folded, channels-last) for GFLOPs and time. GFLOPs: "
            "convolutions and matrix products of the whole inference (torch.utils.flop_counter, 2 per "
            f"multiply-add). {_timing_sentence(settings, threads)} 'dets': detections the seeded model returned (its "
            "post-processing time grows with them; a trained model's count differs). Accuracy: box AP / AP50 (mask "
            "AP) or mIoU from the metrics.json files given, on their own datasets.")


def _timing_sentence(settings: ProfileSettings, threads: int) -> str:
    if not settings.timing:
        return "Not timed."
    gpu = (f"; GPU ({_device_name(settings.gpu)}) the same after 3 warm-up runs, CUDA synchronised around each run"
           if settings.gpu is not None else "")
    return (f"CPU ms: best of {settings.repeats} runs after the FLOP-counting pass, batch 1, {threads} torch "
            f"threads; FPS = 1000 / ms{gpu}.")


def format_models(rows: Sequence[ModelProfile], table_format: str = "md") -> str:
    """The rows as a markdown table, CSV or aligned text; columns never measured (timing, GPU, accuracy) left out."""
    columns = [column for column in COLUMNS if column.shown(rows)]
    headers = [column.header for column in columns]
    cells = [[column.text(row) for column in columns] for row in rows]
    records = [{key: value for column in columns for key, value in column.record(row).items()} for row in rows]
    return render_table(headers, cells, records, table_format)


@dataclass(frozen=True)
class Column:
    """A table column: its header, the row field it shows, how to write it, and whether it is always shown."""

    header: str
    field: str
    text_format: str = "{}"
    always: bool = True

    def shown(self, rows: Sequence[ModelProfile]) -> bool:
        """Whether the column has a value in some row (always-shown columns: yes)."""
        return self.always or any(self.value(row) is not None for row in rows)

    def value(self, row: ModelProfile) -> Any:
        """The row's value of this column (an accuracy metric, or a field)."""
        if self.field in ACCURACY_METRICS:
            return row.accuracy.get(self.field)
        return getattr(row, self.field)

    def text(self, row: ModelProfile) -> str:
        """The value as the markdown / text table writes it (``-`` when missing)."""
        value = self.value(row)
        if value is None:
            return "-"
        return f"`{value}`" if self.field == "recipe" else self.text_format.format(value)

    def record(self, row: ModelProfile) -> dict[str, Any]:
        """The raw value under its CSV key (empty when missing)."""
        value = self.value(row)
        return {self.field: "" if value is None else value}


COLUMNS = (
    Column("recipe", "recipe"),
    Column("task", "task"),
    Column("model: backbone", "architecture"),
    Column("classes", "classes"),
    Column("network input", "network_input"),
    Column("params", "params", "{:,}"),
    Column("fp32 MiB", "size_mib", "{:.1f}"),
    Column("GFLOPs", "gflops", "{:.1f}"),
    Column("dets", "detections", always=False),
    Column("CPU ms", "cpu_ms", "{:.0f}", always=False),
    Column("CPU FPS", "cpu_fps", "{:.2f}", always=False),
    Column("GPU ms", "gpu_ms", "{:.1f}", always=False),
    Column("GPU FPS", "gpu_fps", "{:.1f}", always=False),
    Column("AP", "AP", "{:.3f}", always=False),
    Column("AP50", "AP50", "{:.3f}", always=False),
    Column("mask AP", "mask_AP", "{:.3f}", always=False),
    Column("mIoU", "mIoU", "{:.3f}", always=False),
)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
