"""Calibrate the CPU NMS kernel choice (``structured.boxes.nms``) on this machine.

For sets of 2,000-20,000 boxes (spread, clustered, crowded; IoU thresholds 0.3, 0.5, 0.7) it measures
torchvision's kernel, ``nms`` as it chooses, its prefix-and-filter steps alone (the sparse kernel never
chosen), the grid, and the sparse kernel forced to run on the whole set; every result is checked index for
index against torchvision's. It prints each path's time over torchvision's (below 1 = faster) beside the best
of the two paths, fits the cost model's constants by least squares and prints them beside the ones in use.

    python bench/nms_cost_model.py [--repeats 3] [--threads 2] [--sizes 2000 3000 5000 10000 20000]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from collections.abc import Callable
from unittest import mock

import numpy as np
import torch

from bench.mask_paste import cpu_model_name
from bench.nms_cpu import make_boxes, render_table
from structured.boxes import nms

nms_module = importlib.import_module("structured.boxes.nms")
THRESHOLDS = (0.3, 0.5, 0.7)
CROWD_SIZE = 200
"""Boxes per object in the crowded sets: a detector's raw candidates piled on few objects."""


def crowded_boxes(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded boxes jittered around ``count / CROWD_SIZE`` objects, and their scores."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(max(count // CROWD_SIZE, 1), 2, generator=generator) * 1000
    pick = torch.randint(len(centres), (count,), generator=generator)
    centre = centres[pick] + torch.randn(count, 2, generator=generator) * 8
    size = 60 + torch.rand(count, 2, generator=generator) * 60
    return torch.cat([centre - size / 2, centre + size / 2], dim=1), torch.rand(count, generator=generator)


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def measure_set(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, repeats: int) -> dict[str, float]:
    """Every path's time on one set (ns), with the cost model's inputs."""
    num_boxes = boxes.shape[0]
    order = torch.sort(scores, stable=True, descending=True).indices
    ranked = boxes[order].contiguous()
    cells = nms_module._grid_cells(ranked, None, threshold)
    prefix = nms_module._prefix_size(num_boxes)
    prefix_kept = nms_module._TORCHVISION_CPU_NMS(ranked[:prefix], scores[order[:prefix]], threshold)

    def ranked_grid() -> object:
        ranks = torch.sort(scores, stable=True, descending=True).indices
        return nms_module._grid_cells(boxes[ranks].contiguous(), None, threshold)

    def sparse_after_grid() -> torch.Tensor:
        higher, lower = nms_module._suppressing_pairs(ranked, *cells, threshold)
        return order[nms_module._resolve_greedy(num_boxes, higher, lower)]

    def prefix_steps_only() -> torch.Tensor:
        with mock.patch.object(nms_module, "SPARSE_COST_MARGIN", float("inf")):
            return nms(boxes, scores, threshold)

    reference = nms_module._TORCHVISION_CPU_NMS(boxes, scores, threshold)
    for path in (sparse_after_grid, prefix_steps_only, lambda: nms(boxes, scores, threshold)):
        if not torch.equal(path(), reference):
            raise AssertionError(f"{path.__name__} differs from torchvision on {num_boxes} boxes at {threshold}")
    return {
        "N": num_boxes,
        "kept": len(reference),
        "estimated_kept": nms_module._estimated_kept(prefix_kept, prefix, num_boxes),
        "evaluations": nms_module._dense_work(cells[1]),
        "torchvision_ns": 1e9 * best_seconds(lambda: nms_module._TORCHVISION_CPU_NMS(boxes, scores, threshold),
                                             repeats),
        "chosen_ns": 1e9 * best_seconds(lambda: nms(boxes, scores, threshold), repeats),
        "prefix_ns": 1e9 * best_seconds(prefix_steps_only, repeats),
        "grid_ns": 1e9 * best_seconds(ranked_grid, repeats),
        "sparse_ns": 1e9 * best_seconds(sparse_after_grid, repeats),
    }


def fitted_constants(rows: list[dict[str, float]]) -> dict[str, float]:
    """Least-squares constants of the model's three parts (relative errors weighted alike); torchvision's, the
    median time per (kept box, box) pair."""
    kept_pairs = np.array([row["kept"] * row["N"] for row in rows])
    torchvision = np.array([row["torchvision_ns"] for row in rows])
    sizes = np.array([row["N"] for row in rows], dtype=float)
    grid = np.array([row["grid_ns"] for row in rows])
    sparse = np.array([row["sparse_ns"] for row in rows])
    evaluations = np.array([row["evaluations"] for row in rows], dtype=float)
    per_kept_pair = float(np.exp(np.median(np.log(torchvision / kept_pairs))))
    grid_fit = np.linalg.lstsq(np.stack([np.ones_like(sizes), sizes], 1) / grid[:, None], np.ones_like(grid),
                               rcond=None)[0]
    sparse_fit = np.linalg.lstsq(np.stack([sizes, evaluations], 1) / sparse[:, None], np.ones_like(sparse),
                                 rcond=None)[0]
    return {"TORCHVISION_NS_PER_KEPT_PAIR": per_kept_pair, "GRID_NS_FIXED": float(grid_fit[0]),
            "GRID_NS_PER_BOX": float(grid_fit[1]), "SPARSE_NS_PER_BOX": float(sparse_fit[0]),
            "SPARSE_NS_PER_EVALUATION": float(sparse_fit[1])}


def constants_in_use() -> dict[str, float]:
    """The cost model's constants as ``structured.boxes.nms`` defines them."""
    names = ("TORCHVISION_NS_PER_KEPT_PAIR", "GRID_NS_FIXED", "GRID_NS_PER_BOX", "SPARSE_NS_PER_BOX",
             "SPARSE_NS_PER_EVALUATION")
    return {name: float(getattr(nms_module, name)) for name in names}


def main() -> None:
    """Measure every set, fit, and print the sets, the constants and how the chosen path fared."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 3000, 5000, 10000, 20000])
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for count in args.sizes:
        sets = {"spread": make_boxes(count, count, clustered=False)[:2],
                "clustered": make_boxes(count, count, clustered=True)[:2], "crowded": crowded_boxes(count, count)}
        for kind, (boxes, scores) in sets.items():
            for threshold in THRESHOLDS:
                rows.append({"set": kind, "threshold": threshold, **measure_set(boxes, scores, threshold,
                                                                                args.repeats)})
    fitted, in_use = fitted_constants(rows), constants_in_use()
    print(f"{cpu_model_name()}, torch {torch.__version__}, {args.threads} threads, best of {args.repeats}")
    header = ["set", "thr", "N", "kept", "est. kept", "evaluations", "tv ms", "grid ms", "sparse ms", "chosen / tv",
              "prefix / tv", "grid+sparse / tv", "best / tv"]
    lines = []
    for row in rows:
        ratios = [row["prefix_ns"] / row["torchvision_ns"], (row["grid_ns"] + row["sparse_ns"]) / row["torchvision_ns"]]
        lines.append([row["set"], f"{row['threshold']:.1f}", str(row["N"]), str(row["kept"]),
                      f"{row['estimated_kept']:.0f}", str(row["evaluations"]),
                      *(f"{row[key] / 1e6:.2f}" for key in ("torchvision_ns", "grid_ns", "sparse_ns")),
                      f"{row['chosen_ns'] / row['torchvision_ns']:.2f}", *(f"{ratio:.2f}" for ratio in ratios),
                      f"{min(ratios):.2f}"])
    print(render_table(header, lines, markdown=args.markdown))
    print(render_table(["constant", "in use", "fitted here"],
                       [[name, f"{in_use[name]:.4g}", f"{fitted[name]:.4g}"] for name in in_use], markdown=args.markdown))
    chosen = [row["chosen_ns"] / row["torchvision_ns"] for row in rows]
    print(f"chosen path: worst {max(chosen):.2f}, median {statistics.median(chosen):.2f} of torchvision's time")


if __name__ == "__main__":
    main()
