"""Transfer learning on synthetic shapes: a detector fine-tuned from one trained on other shapes vs from scratch.

1. Pretrain the demo detector (``configs/demo/shapes_faster_rcnn_r18_fpn.yaml``: ResNet-18 FPN, 160 px) on
   shapes A (circle, rectangle, triangle; ``--pretrain-images``) for ``--pretrain-epochs`` (the demo's
   schedule over them; steps, not minutes, so the figures do not depend on the machine or its load).
2. On shapes B (triangle, ellipse, star: ``triangle`` is shared; 60 training images, other pictures),
   train three runs with the same steps, schedule and seed: from scratch; fine-tuned from 1 (``train.init_from``:
   everything loaded, the box predictor re-initialised except the background's and triangle's rows); and
   fine-tuned with the trunk frozen (``train.freeze: [backbone]``).
3. AP50 on B's validation images before training and after every epoch; the step at which each run first
   reaches the from-scratch run's final AP50; the curves as a PNG (``--plot``).

    python -m bench.transfer [--out runs/bench_transfer] [--pretrain-epochs 8] [--epochs 10] [--plot PATH]

With the defaults: 600 pretraining steps and 3 x 150 fine-tuning steps, about 11 minutes on an unloaded
2-core CPU at the demo's 2.2 steps a second.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from bench.nms_cpu import render_table
from structured.config import load_config
from structured.data.synthetic import generate_dataset
from structured.engine import Trainer, read_log
from structured.evaluation.plots import new_figure, save_figure

DEMO_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "demo" / "shapes_faster_rcnn_r18_fpn.yaml"
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


def make_datasets(root: Path, pretrain_images: int) -> tuple[Path, Path]:
    """Shapes A (pretraining) and shapes B (fine-tuning) as COCO folders under ``root``."""
    shapes_a = generate_dataset(root / "shapes_a", pretrain_images, VALIDATION_IMAGES, IMAGE_SIZE, seed=11,
                                formats=("coco",), classes=SHAPES_A)
    shapes_b = generate_dataset(root / "shapes_b", FINE_TUNE_TRAIN_IMAGES, VALIDATION_IMAGES, IMAGE_SIZE, seed=12,
                                formats=("coco",), classes=SHAPES_B)
    return shapes_a, shapes_b


def recipe(dataset: Path, **train: Any) -> dict[str, Any]:
    """The demo recipe on ``dataset`` with ``train`` settings replaced."""
    data = yaml.safe_load(DEMO_RECIPE.read_text())
    data["data"]["train"] = str(dataset / "annotations" / "instances_train.json")
    data["data"]["val"] = str(dataset / "annotations" / "instances_val.json")
    data["train"].update(train)
    return data


def pretrain(shapes_a: Path, run_dir: Path, epochs: int) -> tuple[Path, float]:
    """Train on shapes A for ``epochs``; the checkpoint and its AP50 on A's validation images."""
    settings = dict(time_limit=None, epochs=epochs, eval_every_epochs=epochs, device="cpu")
    best = Trainer(load_config(recipe(shapes_a, **settings)), run_dir, verbose=False).fit()
    return run_dir / "last.pt", float(best["value"])


def fine_tune_run(shapes_b: Path, run_dir: Path, epochs: int, options: dict[str, Any],
                  weights: Path) -> list[tuple[int, float]]:
    """One run on shapes B: ``(step, AP50)`` before training and after every epoch."""
    settings = dict(epochs=epochs, time_limit=None, eval_every_epochs=1, warmup_iters=30, device="cpu",
                    freeze=options.get("freeze", []), init_from=str(weights) if options.get("init_from") else None)
    trainer = Trainer(load_config(recipe(shapes_b, **settings)), run_dir, verbose=False)
    curve = [(0, trainer.evaluate()["AP50"])]
    trainer.fit()
    curve += [(entry["iteration"], entry["AP50"]) for entry in read_log(run_dir / "log.jsonl")
              if entry["kind"] == "epoch" and "AP50" in entry]
    return curve


def first_step_reaching(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first step whose AP50 is at least ``target`` (None: never)."""
    return next((step for step, value in curve if value >= target), None)


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path, title: str) -> Path:
    """AP50 against training steps, one line per run."""
    figure = new_figure(6.0, 3.6)
    axes = figure.add_subplot(1, 1, 1)
    for name, curve in curves.items():
        axes.plot([step for step, _ in curve], [value for _, value in curve], marker="o", markersize=3, label=name)
    axes.set_xlabel("training steps on shapes B (batch 4)")
    axes.set_ylabel("validation AP50")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.set_title(title, fontsize=9)
    axes.legend(loc="lower right")
    return save_figure(figure, path)


def summary_rows(curves: dict[str, list[tuple[int, float]]]) -> list[list[str]]:
    """Per run: AP50 at the start, a third of the way, at the end, and the step reaching scratch's final AP50."""
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
    parser.add_argument("--out", type=Path, default=Path("runs/bench_transfer"))
    parser.add_argument("--pretrain-epochs", type=int, default=8, help="epochs on shapes A (75 steps each)")
    parser.add_argument("--pretrain-images", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs of 15 steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=Path("docs/transfer_ap50.png"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} is not empty; pass another --out")
    start = time.perf_counter()
    shapes_a, shapes_b = make_datasets(args.out / "data", args.pretrain_images)
    weights, pretrained_ap50 = pretrain(shapes_a, args.out / "pretrain", args.pretrain_epochs)
    print(f"pretrained on shapes A {SHAPES_A} for {args.pretrain_epochs} epochs: AP50 {pretrained_ap50:.3f}",
          flush=True)
    curves = {}
    for name, options in RUNS.items():
        curves[name] = fine_tune_run(shapes_b, args.out / name.replace(" ", "_").replace(",", ""), args.epochs,
                                     options, weights)
        print(f"{name}: " + ", ".join(f"{step}:{value:.3f}" for step, value in curves[name]), flush=True)
    title = (f"shapes B {SHAPES_B}, {FINE_TUNE_TRAIN_IMAGES} training images; pretrained on {SHAPES_A} "
             f"(AP50 {pretrained_ap50:.2f})")
    plot_curves(curves, args.plot, title)
    print(render_table(["run", "AP50 at step 0", "best AP50 in the first third", "final AP50",
                        "first step at scratch's final AP50"], summary_rows(curves), markdown=True))
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads; "
          f"whole benchmark {(time.perf_counter() - start) / 60:.1f} min; plot {args.plot}")


if __name__ == "__main__":
    main()
