"""UNet forward latency and size, ours vs segmentation_models.pytorch's ``Unet`` on the same encoder (CPU).

For each encoder (``resnet34``, ``mobilenet_v2``): our registered recipe ``unet_<encoder>`` and smp's
``Unet(<encoder>, encoder_weights=None)``, both with one output class (smp's default), seeded default
initialisation, eval mode, on one 512x512 image with ``torch.set_num_threads(2)``, taking turns run by run.
Timed: smp's ``model(x[None])`` on the normalised image; ours ``predict([image])`` (normalisation,
padding, the network, sigmoid and the ``mask`` / ``probabilities`` of the contract) as built, and after
``optimize_for_inference()`` (eval batch norms folded into the convolutions, channels-last). Prints the
best (minimum) latency of each over the runs, the ratios ours / smp (goal <= 1.0), both parameter counts,
and the output size each gives for an odd 97x131 input. Skips (exit 0) when segmentation_models_pytorch
is not installed (it is the ``bench`` extra: ``pip install -e .[bench]``).

    python bench/unet_speed.py [--runs 5] [--encoders resnet34 mobilenet_v2] [--size 512]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import torch
from torch import nn

from bench.detector_speed import time_runners
from bench.nms_cpu import render_table
from structured.registry import MODELS

ENCODERS = ("resnet34", "mobilenet_v2")
ODD_SIZE = (97, 131)


def parameter_count(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(parameter.numel() for parameter in model.parameters())


def our_unet(encoder: str, optimize: bool) -> nn.Module:
    """Our ``unet_<encoder>`` recipe with one class, seeded, in eval mode (optionally optimized)."""
    torch.manual_seed(0)
    model = MODELS.build(f"unet_{encoder}", num_classes=1).eval()
    return model.optimize_for_inference() if optimize else model


def smp_unet(encoder: str) -> nn.Module:
    """segmentation_models.pytorch's ``Unet(encoder, encoder_weights=None)``, seeded, in eval mode."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    return smp.Unet(encoder, encoder_weights=None).eval()


@torch.no_grad()
@torch.no_grad()
def odd_size_outputs(ours: nn.Module, theirs: nn.Module) -> tuple[str, str]:
    """The map size each model gives for a 97x131 image (smp: its error, when it refuses the size)."""
    image = torch.rand(3, *ODD_SIZE)
    mask = ours.predict([image])[0]["mask"]
    try:
        logits = theirs(image[None])
    except (RuntimeError, ValueError) as error:
        return "x".join(map(str, mask.shape)), f"error: {str(error).splitlines()[0][:60]}"
    return "x".join(map(str, mask.shape)), "x".join(map(str, logits.shape[-2:]))


def bench_encoder(encoder: str, size: int, runs: int) -> list[str]:
    """One table row: latencies, ratios, parameter counts and odd-size outputs for ``encoder``."""
    ours, optimized, theirs = our_unet(encoder, False), our_unet(encoder, True), smp_unet(encoder)
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(1))
    normalised = ((image - ours.mean) / ours.std)[None]
    times, _ = time_runners(
        [lambda: ours.predict([image]), lambda: optimized.predict([image]), lambda: theirs(normalised)], runs)
    plain, fast, reference = (min(run_times) for run_times in times)
    odd_ours, odd_theirs = odd_size_outputs(ours, theirs)
    return [f"unet_{encoder}", f"{reference * 1000:.0f}", f"{plain * 1000:.0f}", f"{fast * 1000:.0f}",
            f"{plain / reference:.2f}", f"{fast / reference:.2f}", f"{parameter_count(theirs):,}",
            f"{parameter_count(ours):,}", odd_theirs, odd_ours]


def main() -> None:
    """Run the comparison and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--encoders", nargs="+", choices=ENCODERS, default=list(ENCODERS))
    parser.add_argument("--size", type=int, default=512, help="side of the square test image")
    args = parser.parse_args()
    if importlib.util.find_spec("segmentation_models_pytorch") is None:
        print("segmentation_models_pytorch is not installed (pip install -e .[bench]); skipping the UNet benchmark")
        return
    torch.set_num_threads(2)
    print(f"image {args.size}x{args.size}, batch 1, threads {torch.get_num_threads()}, runs {args.runs}, "
          f"torch {torch.__version__}, python {sys.version.split()[0]}\n")
    header = ["recipe", "smp ms", "ours ms", "ours optimized ms", "ours/smp", "optimized/smp", "smp params",
              "our params", f"smp {ODD_SIZE[0]}x{ODD_SIZE[1]} ->", f"ours {ODD_SIZE[0]}x{ODD_SIZE[1]} ->"]
    rows = [bench_encoder(encoder, args.size, args.runs) for encoder in args.encoders]
    print(render_table(header, rows, markdown=True))


if __name__ == "__main__":
    main()
