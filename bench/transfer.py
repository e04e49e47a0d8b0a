"""Transfer learning on synthetic shapes: a model fine-tuned from one trained on other shapes vs from scratch.

``--model detector`` (default) is the demo detector (``configs/demo/shapes_faster_rcnn_r18_fpn.yaml``:
ResNet-18 FPN, 160 px) scored by AP50; ``--model unet`` the shapes UNet (``configs/demo/shapes_unet.yaml``:
the quarter-width original UNet) on the same pictures as class maps, scored by mIoU.

1. Pretrain the model on shapes A (circle, rectangle, triangle; ``--pretrain-images``) for
   ``--pretrain-epochs`` (the recipe's schedule over them; steps, not minutes, so the figures do not depend
   on the machine or its load).
2. On shapes B (triangle, ellipse, star: ``triangle`` is shared; 60 training images, other pictures),
   train three runs with the same steps, schedule and seed: from scratch; fine-tuned from 1 (``train.init_from``:
   everything loaded, the class-specific layer — box predictor, UNet output convolution — re-initialised
   except the background's and triangle's rows); and fine-tuned with the trunk or encoder frozen
   (``train.freeze: [backbone]``).
3. The metric on B's validation images before training and after every epoch; the step at which each run
   first reaches the from-scratch run's final value; the curves as a PNG (``--plot``).

    python -m bench.transfer [--model detector|unet] [--out DIR] [--pretrain-epochs 8] [--epochs 10] [--plot PATH]

Detector defaults: 600 pretraining steps and 3 x 150 fine-tuning steps, about 11 minutes on an unloaded
2-core CPU at the demo's 2.2 steps a second. The UNet (batch 8) takes 300 and 3 x 80 steps.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from bench.nms_cpu import render_table
from structured.config import load_config
from structured.data.synthetic import generate_dataset
from structured.engine import Trainer, read_log
from structured.evaluation.plots import new_figure, save_figure

DEMO_RECIPES = Path(__file__).resolve().parents[1] / "configs" / "demo"
SHAPES_A = ("circle", "rectangle", "triangle")
SHAPES_B = ("triangle", "ellipse", "star")
FINE_TUNE_TRAIN_IMAGES = 60
VALIDATION_IMAGES = 40
IMAGE_SIZE = 160
RUNS = {
    "from scratch": {},
    "fine-tuned": {"init_from": True},
    "fine-tuned, frozen trunk": {"init_from": True, "freeze": ["backbone"]},
}


@dataclass(frozen=True)
class ModelFamily:
    """What the benchmark needs to know of a model: its recipe, data format, metric and batch size."""

    recipe: str
    dataset_format: str
    metric: str
    batch_size: int

    def recipe_on(self, dataset: Path, **train: Any) -> dict[str, Any]:
        """The family's demo recipe on ``dataset`` with ``train`` settings replaced."""
        data = yaml.safe_load((DEMO_RECIPES / self.recipe).read_text())
        if self.dataset_format == "coco":
            data["data"]["train"] = str(dataset / "annotations" / "instances_train.json")
            data["data"]["val"] = str(dataset / "annotations" / "instances_val.json")
        else:
            data["data"]["train"] = str(dataset)
        data["data"]["batch_size"] = self.batch_size
        data["train"].update(train)
        return data


FAMILIES = {
    "detector": ModelFamily("shapes_faster_rcnn_r18_fpn.yaml", "coco", "AP50", batch_size=4),
    "unet": ModelFamily("shapes_unet.yaml", "semantic", "mIoU", batch_size=8),
}


def make_datasets(root: Path, pretrain_images: int, dataset_format: str) -> tuple[Path, Path]:
    """Shapes A (pretraining) and shapes B (fine-tuning) in ``dataset_format`` under ``root``."""
    shapes_a = generate_dataset(root / "shapes_a", pretrain_images, VALIDATION_IMAGES, IMAGE_SIZE, seed=11,
                                formats=(dataset_format,), classes=SHAPES_A)
    shapes_b = generate_dataset(root / "shapes_b", FINE_TUNE_TRAIN_IMAGES, VALIDATION_IMAGES, IMAGE_SIZE, seed=12,
                                formats=(dataset_format,), classes=SHAPES_B)
    return shapes_a, shapes_b


def pretrain(family: ModelFamily, shapes_a: Path, run_dir: Path, epochs: int) -> tuple[Path, float]:
    """Train on shapes A for ``epochs``; the checkpoint and its metric on A's validation images."""
    settings = dict(time_limit=None, epochs=epochs, eval_every_epochs=epochs, device="cpu",
                    best_metric=family.metric)
    best = Trainer(load_config(family.recipe_on(shapes_a, **settings)), run_dir, verbose=False).fit()
    return run_dir / "last.pt", float(best["value"])


def fine_tune_run(family: ModelFamily, shapes_b: Path, run_dir: Path, epochs: int, options: dict[str, Any],
                  weights: Path) -> list[tuple[int, float]]:
    """One run on shapes B: ``(step, metric)`` before training and after every epoch."""
    settings = dict(epochs=epochs, time_limit=None, eval_every_epochs=1, warmup_iters=30, device="cpu",
                    best_metric=family.metric, freeze=options.get("freeze", []),
                    init_from=str(weights) if options.get("init_from") else None)
    trainer = Trainer(load_config(family.recipe_on(shapes_b, **settings)), run_dir, verbose=False)
    curve = [(0, trainer.evaluate()[family.metric])]
    trainer.fit()
    curve += [(entry["iteration"], entry[family.metric]) for entry in read_log(run_dir / "log.jsonl")
              if entry["kind"] == "epoch" and family.metric in entry]
    return curve


def first_step_reaching(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first step whose value is at least ``target`` (None: never)."""
    return next((step for step, value in curve if value >= target), None)


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path, family: ModelFamily, title: str) -> Path:
    """The metric against training steps, one line per run."""
    figure = new_figure(6.0, 3.6)
    axes = figure.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        axes.plot([step for step, _ in curve], [value for _, value in curve], marker="o", markersize=3, label=name)
    axes.set_xlabel(f"training steps on shapes B (batch {family.batch_size})")
    axes.set_ylabel(f"validation {family.metric}")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.set_title(title, fontsize=9)
    axes.legend(loc="lower right")
    return save_figure(figure, path)


def summary_rows(curves: dict[str, list[tuple[int, float]]]) -> list[list[str]]:
    """Per run: the metric at the start, a third of the way, at the end, and the step reaching scratch's final value."""
    target = curves["from scratch"][-1][1]
    total = curves["from scratch"][-1][0]
    rows = []
    for name, curve in curves.items():
        third = max((value for step, value in curve if step <= total / 3), default=float("nan"))
        reached = first_step_reaching(curve, target)
        rows.append([name, f"{curve[0][1]:.3f}", f"{third:.3f}", f"{curve[-1][1]:.3f}",
                     "never" if reached is None else f"{reached} ({reached / total:.2f} of the steps)"])
    return rows


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(FAMILIES), default="detector")
    parser.add_argument("--out", type=Path, default=None, help="default runs/bench_transfer_<model>")
    parser.add_argument("--pretrain-epochs", type=int, default=8, help="epochs on shapes A")
    parser.add_argument("--pretrain-images", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs on the 60 pictures of shapes B")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=None, help="default docs/transfer_<metric>.png")
    args = parser.parse_args(argv)
    family = FAMILIES[args.model]
    out = args.out or Path(f"runs/bench_transfer_{args.model}")
    plot = args.plot or Path(f"docs/transfer_{family.metric.lower()}.png")
    torch.set_num_threads(args.threads)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty; pass another --out")
    start = time.perf_counter()
    shapes_a, shapes_b = make_datasets(out / "data", args.pretrain_images, family.dataset_format)
    weights, pretrained_value = pretrain(family, shapes_a, out / "pretrain", args.pretrain_epochs)
    print(f"pretrained on shapes A {SHAPES_A} for {args.pretrain_epochs} epochs: {family.metric} "
          f"{pretrained_value:.3f}", flush=True)
    curves = {}
    for name, options in RUNS.items():
        curves[name] = fine_tune_run(family, shapes_b, out / name.replace(" ", "_").replace(",", ""), args.epochs,
                                     options, weights)
        print(f"{name}: " + ", ".join(f"{step}:{value:.3f}" for step, value in curves[name]), flush=True)
    title = (f"shapes B {SHAPES_B}, {FINE_TUNE_TRAIN_IMAGES} training images; pretrained on {SHAPES_A} "
             f"({family.metric} {pretrained_value:.2f})")
    plot_curves(curves, plot, family, title)
    metric = family.metric
    print(render_table(["run", f"{metric} at step 0", f"best {metric} in the first third", f"final {metric}",
                        f"first step at scratch's final {metric}"], summary_rows(curves), markdown=True))
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads; "
          f"whole benchmark {(time.perf_counter() - start) / 60:.1f} min; plot {plot}")


if __name__ == "__main__":
    main()
