"""Evaluate a trained detector or segmenter: COCO mAP and per-class AP, or per-class IoU, mIoU, Dice; FPS.

    python tools/eval.py CONFIG --weights W [--data D] [--split val] [--out outputs/eval] [--device cpu]
                         [--set key=value ...] [--speed-iters 20]

The recipe's task (its model's; the checkpoint's must agree) picks the data and the metrics
(structured.evaluation.tasks). D is a dataset in any supported format of that task (detection: COCO .json,
VOC folder, YOLO folder, mask folder; semantic: VOC SegmentationClass, images/ + masks/, mask folders as
foreground/background, COCO instances). Without --data, the recipe's own validation set: the one training
validated on (data.val, a val split, or the data.val_fraction held out with train.seed: a run folder's
config.yaml gives that run's split). Both print the time of each stage a user pays for (decode,
network, post-processing) and write metrics.json to --out (with the recipe, checkpoint and dataset it scored:
structured.evaluation.metrics_file). A dataset without images is refused; detection ground truth without
objects (an unlabelled split, scored for predictions.json) is a warning: every AP and AR is then -1.

- detection: the pycocotools-style summary (box, and mask when the model has masks) and a per-class table;
  predictions.json (COCO results with the dataset's own image and category ids: pycocotools on the
  original annotation file and this file prints the same stats), pr_curves.png, and ground_truth.json for
  data that is not COCO;
- semantic: per-class IoU and Dice, mIoU, fg_IoU, Dice, pixel accuracy; confusion_matrix.png.

The model is prepared for inference (batch norms folded, channels-last) unless --no-optimize.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from structured.cli import count_at_least, reports_usage_errors
from structured.config import a_task_model, build_model, load_config, model_task
from structured.data.recipes import data_config, open_evaluation_dataset, recipe_validation_dataset
from structured.engine.checkpoint import apply_weights, load_checkpoint, model_state_from
from structured.engine.distributed import resolve_device
from structured.engine.trainer import train_config
from structured.evaluation.metrics_file import EvaluatedModel, recipe_label
from structured.evaluation.tasks import evaluation_task


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="recipe YAML the weights were trained with")
    parser.add_argument("--weights", required=True, help="checkpoint (best.pt / last.pt) or state dict")
    parser.add_argument("--data", help="dataset to evaluate on (default: the recipe's validation set)")
    parser.add_argument("--split", default=None, help="VOC ImageSets split (e.g. val)")
    parser.add_argument("--out", type=Path, default=Path("outputs/eval"))
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    parser.add_argument("--batch-size", type=count_at_least(1), default=2)
    parser.add_argument("--speed-iters", type=count_at_least(0), default=20, help="timed runs for the FPS line (0: skip)")
    parser.add_argument("--no-optimize", dest="optimize", action="store_false",
                        help="evaluate the model as trained, without folding batch norms (same outputs up to rounding)")
    return parser.parse_args(argv)


@reports_usage_errors
def main(argv: list[str] | None = None) -> int:
    """Evaluate; exit status 2 for unusable input."""
    args = parse_args(argv)
    config = load_config(args.config, args.overrides)
    task = evaluation_task(model_task(config))
    checkpoint = load_checkpoint(args.weights)
    if checkpoint.get("task", task.name) != task.name:
        raise ValueError(f"{args.weights} holds {a_task_model(checkpoint['task'])} but the recipe {args.config} "
                         f"describes {a_task_model(task.name)}")
    settings = data_config(config, require_train=False)
    if args.data is None:
        if args.split is not None:
            raise ValueError(f"--split {args.split} chooses a split of --data; without --data the recipe's own "
                             "validation set is scored")
        dataset = recipe_validation_dataset(settings, train_config(config).seed, task.name)
        data_label = f"{settings.val or settings.train} (the recipe's validation set)"
    else:
        dataset = open_evaluation_dataset(args.data, settings, args.split, task.name)
        data_label = str(args.data)
    if len(dataset) == 0:
        raise ValueError(f"{data_label} has no images to evaluate on; expected a dataset with at least one image")
    checkpoint_classes = checkpoint.get("class_names")
    if checkpoint_classes and list(checkpoint_classes) != list(dataset.class_names):
        raise ValueError(f"the weights {args.weights} were trained on classes {list(checkpoint_classes)[1:]}, "
                         f"the dataset {data_label} has {list(dataset.class_names)[1:]}")
    config.set("model.num_classes", len(dataset.class_names) - 1)
    model = build_model(config)
    apply_weights(model, model_state_from(checkpoint), args.weights)
    if args.optimize:
        model.optimize_for_inference()
    device = resolve_device(args.device)
    evaluated = EvaluatedModel(recipe_label(args.config), config.get("model.name"), str(args.config),
                               str(args.weights), data_label)
    evaluation = task.evaluate_on_dataset(model.to(device), dataset, args.out, device, args.batch_size,
                                          speed_iterations=args.speed_iters, evaluated=evaluated)
    print(evaluation.report())
    print("wrote " + ", ".join(str(path) for path in evaluation.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
