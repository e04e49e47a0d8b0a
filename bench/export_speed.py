"""CPU latency of exported models: onnxruntime and TorchScript against PyTorch eager, same threads, same image.

For each model (seeded weights, ``optimize_for_inference()`` as ``tools/export.py`` prepares it): export to
ONNX and TorchScript with ``structured.export``, check each file against PyTorch (``verify_export``; the
table says whether it passed), then
time PyTorch eager (``model.predict``), onnxruntime (``intra_op_num_threads`` = torch's threads) and the
traced TorchScript module on the same 480x640 image (``bench_image``: a raccoon photo when ../shared/data is
there), taking turns run by run (``time_runners``). Prints the best latency of each and the ratios to eager
(< 1: faster than eager). Seeded detectors score few boxes above their thresholds, so the post-processing is
light here; the network dominates.

    python bench/export_speed.py [--runs 5] [--threads 2] [--models unet_nuclei ssdlite320_mobilenet_v3_large ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.detector_speed import bench_image, time_runners
from bench.nms_cpu import render_table
from structured.export import ExportError, export_model, exported_runner, verification_images, verify_export
from structured.registry import MODELS

MODELS_TIMED = ("unet_nuclei", "ssdlite320_mobilenet_v3_large", "ssd300_vgg16", "faster_rcnn_mobilenet_v3_large_fpn",
                "faster_rcnn_r50_fpn")
NUM_CLASSES = {"unet_nuclei": 1}


def eager_runner(model: torch.nn.Module, image: torch.Tensor) -> Callable[[], dict]:
    """PyTorch eager inference on ``image``."""
    return lambda: model.predict([image])[0]


def file_runner(path: Path, fmt: str, image: torch.Tensor) -> Callable[[], dict]:
    """The exported file on ``image``."""
    run = exported_runner(path, fmt)
    return lambda: run(image[None])


def time_model(name: str, image: torch.Tensor, runs: int, folder: Path) -> list[str]:
    """One table row: eager, onnxruntime and TorchScript latencies of recipe ``name`` and the ratios to eager."""
    torch.manual_seed(0)
    model = MODELS.build(name, num_classes=NUM_CLASSES.get(name, 90)).eval().optimize_for_inference()
    paths, verified = {}, []
    for fmt in ("onnx", "torchscript"):
        paths[fmt] = export_model(model, folder / f"{name}.{fmt}", fmt)
        verified.append(verification(paths[fmt], model, fmt))
    runners = [eager_runner(model, image), *(file_runner(paths[fmt], fmt, image) for fmt in ("onnx", "torchscript"))]
    with torch.no_grad():
        times, _ = time_runners(runners, runs)
    eager, onnx, torchscript = (min(run_times) * 1e3 for run_times in times)
    return [name, f"{eager:.1f}", f"{onnx:.1f}", f"{torchscript:.1f}", f"{onnx / eager:.2f}", f"{torchscript / eager:.2f}",
            *verified]


def verification(path: Path, model: torch.nn.Module, fmt: str) -> str:
    """``yes`` when the file gives PyTorch's outputs on three sizes, else the first difference (seeded SSDs score
    many default boxes alike, and onnxruntime orders tied scores its own way)."""
    try:
        verify_export(path, model, verification_images(), fmt)
    except ExportError as error:
        return f"no: {str(error).split(': ', 1)[1].split(';')[0]}"
    return "yes"


def main() -> None:
    """Export, verify and time each model; print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", choices=MODELS_TIMED, default=list(MODELS_TIMED))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image, source = bench_image()
    with tempfile.TemporaryDirectory() as folder:
        rows = [time_model(name, image, args.runs, Path(folder)) for name in args.models]
    print(f"image {source} {tuple(image.shape[-2:])}, {args.threads} threads, best of {args.runs} runs")
    print(render_table(["model", "eager ms", "onnxruntime ms", "torchscript ms", "onnx / eager", "ts / eager",
                        "onnx verified", "ts verified"], rows, markdown=True))


if __name__ == "__main__":
    main()
