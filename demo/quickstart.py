"""Quick start: the box module at work on a generated scene.

A generated picture holds a few objects; around each, a detector-like cloud of candidate boxes with
scores (plus some background clutter). ``structured.boxes.batched_nms`` reduces the cloud to one box
per object; the script checks the result against torchvision, times both, measures how well the kept
boxes fit the objects, and writes a before/after picture.

    python demo/quickstart.py [--out outputs/quickstart] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision

from structured.boxes import BoxCoder, batched_nms, box_iou
from structured.visualize import draw_detections, save_image, side_by_side

CLASS_NAMES = ("__background__", "disc", "block", "wedge")
IMAGE_SIZE = (480, 640)


def make_scene(rng: np.random.Generator, num_objects: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured picture with ``num_objects`` shapes; returns the image, their boxes and labels."""
    height, width = IMAGE_SIZE
    noise = rng.normal(0, 1, (height // 12, width // 12))
    texture = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)[:, :, None]
    image = np.clip(np.array([214, 208, 196]) + 14 * texture, 0, 255).astype(np.uint8)
    boxes, labels = [], []
    for _ in range(num_objects):
        size = rng.uniform(50, 160, 2)
        x1, y1 = rng.uniform(0, width - size[0]), rng.uniform(0, height - size[1])
        box = np.array([x1, y1, x1 + size[0], y1 + size[1]])
        label = int(rng.integers(1, len(CLASS_NAMES)))
        _draw_shape(image, box, label, rng)
        boxes.append(box)
        labels.append(label)
    return image, np.array(boxes), np.array(labels)


def _draw_shape(image: np.ndarray, box: np.ndarray, label: int, rng: np.random.Generator) -> None:
    colour = tuple(int(c) for c in rng.integers(20, 160, 3))
    x1, y1, x2, y2 = box.astype(int)
    if label == 1:
        cv2.ellipse(image, ((x1 + x2) // 2, (y1 + y2) // 2), ((x2 - x1) // 2, (y2 - y1) // 2), 0, 0, 360,
                    colour, cv2.FILLED, cv2.LINE_AA)
    elif label == 2:
        cv2.rectangle(image, (x1, y1), (x2, y2), colour, cv2.FILLED)
    else:
        corners = np.array([[x1, y2], [(x1 + x2) // 2, y1], [x2, y2]], np.int32)
        cv2.fillPoly(image, [corners], colour, cv2.LINE_AA)


def make_candidates(
    rng: np.random.Generator, boxes: np.ndarray, labels: np.ndarray, per_object: int, clutter: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detector-like raw output: jittered boxes around each object, scores falling with the jitter."""
    height, width = IMAGE_SIZE
    jitter = rng.normal(0, 0.08, (len(boxes), per_object, 4))
    sizes = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)[:, None, :]
    candidates = boxes[:, None, :] + jitter * sizes
    scores = np.clip(0.95 - 2.5 * np.abs(jitter).mean(axis=2) + rng.normal(0, 0.03, jitter.shape[:2]), 0.05, 1)
    cand_labels = np.repeat(labels[:, None], per_object, axis=1)
    clutter_xy = rng.uniform(0, 1, (clutter, 2)) * [width, height]
    clutter_boxes = np.concatenate([clutter_xy, clutter_xy + rng.uniform(20, 90, (clutter, 2))], axis=1)
    all_boxes = np.concatenate([candidates.reshape(-1, 4), clutter_boxes])
    all_boxes[:, 0::2] = all_boxes[:, 0::2].clip(0, width)
    all_boxes[:, 1::2] = all_boxes[:, 1::2].clip(0, height)
    all_scores = np.concatenate([scores.ravel(), rng.uniform(0.05, 0.35, clutter)])
    all_labels = np.concatenate([cand_labels.ravel(), rng.integers(1, len(CLASS_NAMES), clutter)])
    return (torch.from_numpy(all_boxes).float(), torch.from_numpy(all_scores).float(),
            torch.from_numpy(all_labels).long())


def best_of(repeats: int, run) -> float:
    """Fastest of ``repeats`` runs, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def main() -> None:
    """Generate the scene, run NMS, report and draw."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/quickstart"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--objects", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    image, true_boxes, true_labels = make_scene(rng, args.objects)
    boxes, scores, labels = make_candidates(rng, true_boxes, true_labels, per_object=60, clutter=150)
    confident = scores > 0.4
    confident_index = torch.nonzero(confident).squeeze(1)
    keep = confident_index[batched_nms(boxes[confident], scores[confident], labels[confident], 0.5)]
    reference = confident_index[torchvision.ops.batched_nms(boxes[confident], scores[confident],
                                                            labels[confident], 0.5)]

    truth = torch.from_numpy(true_boxes).float()
    kept_boxes = boxes[keep]
    fit = box_iou(truth, kept_boxes).amax(dim=1)
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    matched = truth[box_iou(kept_boxes, truth).argmax(1)]
    round_trip = (coder.decode(coder.encode(matched, kept_boxes), kept_boxes) - matched).abs().max()

    print(f"scene: {args.objects} objects, {len(boxes)} candidate boxes ({int(confident.sum())} with score > 0.4)")
    print(f"batched_nms kept {len(keep)} boxes; identical to torchvision: {torch.equal(keep, reference)}")
    print(f"best IoU of a kept box with each object: {', '.join(f'{v:.2f}' for v in fit.tolist())}")
    print(f"BoxCoder (10,10,5,5) encode -> decode round trip: max error {round_trip:.2e} px")
    ours = best_of(20, lambda: batched_nms(boxes, scores, labels, 0.5))
    theirs = best_of(20, lambda: torchvision.ops.batched_nms(boxes, scores, labels, 0.5))
    print(f"batched_nms on all {len(boxes)} boxes: structured {ours:.2f} ms, torchvision {theirs:.2f} ms")

    before = draw_detections(image, boxes[confident], labels[confident], thickness=1, captions=False)
    after = draw_detections(image, boxes[keep], labels[keep], scores[keep], CLASS_NAMES)
    sheet = side_by_side([before, after], [f"before NMS: {int(confident.sum())} boxes with score > 0.4",
                                           f"after batched_nms (IoU 0.5): {len(keep)} boxes"])
    path = save_image(sheet, args.out / "nms_before_after.png")
    print(f"picture: {path}")


if __name__ == "__main__":
    main()
