"""The demo (``make demo``): a small Faster R-CNN learns the synthetic shapes from scratch on the CPU.

Four steps, each one of the toolkit's own commands (printed before it runs, so it can be repeated):

1. generate the synthetic shapes dataset in COCO form (``structured.data.generate_dataset``);
2. train ``configs/demo/shapes_faster_rcnn_r18_fpn.yaml`` on it (``tools/train_det.py``);
3. evaluate the best checkpoint on the validation split: COCO mAP, per-class AP, FPS (``tools/eval.py``);
4. detect shapes in freshly generated pictures it has never seen (``tools/infer.py``).

Training is bounded by wall-clock time, not by a number of steps: the recipe's ``train.time_limit`` (6
minutes) ends it and anneals the learning rate over it, so the demo takes about 7 minutes on 2 CPU cores
whatever their speed (a slower machine trains fewer steps; docs/benchmarks.md has the figures). Everything
goes under ``--out`` (default ``outputs/demo``); a second run replaces what the first one wrote there (and
nothing else). ``--train-images``, ``--val-images`` and ``--set`` (recipe overrides such as
``train.time_limit=1`` or ``train.max_iters=5``) make a shorter run.

    python demo/shapes_detector.py [--out outputs/demo] [--set train.time_limit=2 ...]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from structured.data.loading import read_image
from structured.data.synthetic import generate_dataset, iter_samples
from structured.visualize import save_image, side_by_side

REPOSITORY = Path(__file__).resolve().parent.parent
RECIPE = REPOSITORY / "configs" / "demo" / "shapes_faster_rcnn_r18_fpn.yaml"
# The demo's pictures: 160 px, 2 to 5 shapes of 24 to 80 px, each at least 75 % visible, clutter lines.
SCENES = dict(image_size=160, min_objects=2, max_objects=5, min_object_size=24, min_visible=0.75,
              overlap_probability=0.2, empty_probability=0.0)
FRESH_SEED = 2026
OUTPUTS = ("data", "run", "eval", "fresh", "predictions", "predictions_sheet.png")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--train-images", type=int, default=600)
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--fresh-images", type=int, default=8)
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="recipe overrides for the training and evaluation steps")
    args = parser.parse_args(argv)
    for name in ("train_images", "val_images", "fresh_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (shorter commands to read)."""
    path = path.resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def run_step(title: str, tool: str, arguments: list[str]) -> None:
    """Print ``title`` and the command, run ``tools/<tool>`` in a new process, stop the demo if it fails."""
    command = [shown(REPOSITORY / "tools" / tool), *arguments]
    print(f"\n=== {title}\n$ python {' '.join(command)}", flush=True)
    started = time.perf_counter()
    status = subprocess.run([sys.executable, *command], check=False).returncode
    if status != 0:
        sys.exit(f"demo stopped: {tool} exited with status {status}")
    print(f"({time.perf_counter() - started:.0f} s)", flush=True)


def write_fresh_images(folder: Path, count: int) -> Path:
    """``count`` new pictures (a seed the dataset never used) as JPEG files in ``folder``.

    They show the demo's scenes at twice the size (320 px): the detector resizes its input to 128 px, as it
    did the 160 px training pictures, so it sees what it was trained on, and the annotated pictures are
    large enough to read.
    """
    folder.mkdir(parents=True, exist_ok=True)
    scenes = {**SCENES, "image_size": 2 * SCENES["image_size"], "min_object_size": 2 * SCENES["min_object_size"]}
    for index, sample in enumerate(iter_samples(count, seed=FRESH_SEED, **scenes)):
        save_image(sample.image, folder / f"fresh_{index:02d}.jpg")
    return folder


def write_contact_sheet(pictures: list[Path], path: Path, columns: int = 4) -> Path:
    """The annotated ``pictures`` (all one size) in rows of ``columns``, titled by file name, as one image."""
    images = [read_image(picture) for picture in pictures]
    images += [np.full_like(images[0], 255)] * (-len(images) % columns)
    titles = [picture.name for picture in pictures] + [""] * (len(images) - len(pictures))
    rows = [side_by_side(images[i:i + columns], titles[i:i + columns]) for i in range(0, len(images), columns)]
    return save_image(np.vstack(rows), path)


def main(argv: list[str] | None = None) -> None:
    """Generate, train, evaluate, infer; print where everything went."""
    args = parse_args(argv)
    started = time.perf_counter()
    for name in OUTPUTS:
        path = args.out / name
        if path.is_dir():
            shutil.rmtree(path)
        path.unlink(missing_ok=True)
    data, run, evaluation, predictions = (args.out / name for name in ("data", "run", "eval", "predictions"))

    print(f"=== 1. generate the synthetic shapes: {args.train_images} training and {args.val_images} validation "
          f"pictures -> {data}", flush=True)
    generate_dataset(data, num_train=args.train_images, num_val=args.val_images, formats=("coco",), **SCENES)
    recipe = shown(RECIPE)
    train_json, val_json = shown(data / "annotations/instances_train.json"), shown(data / "annotations/instances_val.json")
    overrides = ["--set", *args.overrides] if args.overrides else []
    run_step("2. train a small Faster R-CNN from scratch on the CPU", "train_det.py",
             [recipe, "--out", shown(run), "--device", "cpu",
              "--set", f"data.train={train_json}", f"data.val={val_json}", *args.overrides])
    run_step("3. evaluate the best checkpoint on the validation split", "eval.py",
             [recipe, "--weights", shown(run / "best.pt"), "--data", val_json, "--out", shown(evaluation),
              "--device", "cpu", *overrides])
    fresh = write_fresh_images(args.out / "fresh", args.fresh_images)
    run_step(f"4. detect shapes in {args.fresh_images} freshly generated pictures", "infer.py",
             [shown(fresh), "--weights", shown(run / "best.pt"), "--out", shown(predictions), "--score-thr", "0.5",
              "--device", "cpu"])
    sheet = write_contact_sheet(sorted(predictions.glob("*.jpg")), args.out / "predictions_sheet.png")

    print(f"\ndone in {time.perf_counter() - started:.0f} s")
    print(f"  annotated pictures:  {sheet} (all in one), {predictions}/ (one per picture; inputs in {fresh}/)")
    print(f"  training curves:     {run / 'loss.png'}, {run / 'map.png'}")
    print(f"  evaluation:          {evaluation / 'metrics.json'}, {evaluation / 'pr_curves.png'}")


if __name__ == "__main__":
    main()
