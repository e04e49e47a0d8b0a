"""Export a trained model to ONNX or TorchScript, and check the exported file against PyTorch.

The exported graph takes what the Python model takes, as a batch: float RGB in [0, 1], ``image [B, 3, H, W]``
(``B = 1`` for the detectors, any ``B`` of same-size images for the UNet), and runs the whole inference
inside: normalisation, resizing and padding, the network, and the post-processing (box decoding, score
thresholds, NMS, rescaling to the input image; the UNet's activation and argmax). It returns the model's
``EXPORT_OUTPUTS`` by name: ``boxes [K, 4]`` xyxy in the input's pixels, ``scores [K]``, ``labels [K]``
(Mask R-CNN also ``masks [K, H, W]`` probabilities), or the UNet's ``mask [B, H, W]`` class map and
``probabilities [B, C + 1, H, W]``. What the graph computes is each family's
``InferenceModel.export_outputs``, traced: ONNX through ``torch.onnx.export(..., dynamo=False)`` (the
TorchScript-based exporter; torchvision gives it symbolics for ``nms`` and ``roi_align``), TorchScript
through ``torch.jit.trace``. With ``dynamic`` the ONNX graph's input sizes (and the UNet's batch) are free;
without it the ONNX graph accepts only the traced shape, ``image [1, 3, *EXAMPLE_SIZE]`` (resize or pad
images to it). A traced TorchScript module follows the input's shape wherever the traced code computes with it.

Families: UNet (any batch and size), SSD, Faster R-CNN and Mask R-CNN (one image of any size), to ONNX and
TorchScript. Where the Python code reads sizes or data (the resize rule, padding, anchors, top-n counts, NMS
dispatch, mask pasting), it checks ``torch.jit.is_tracing()`` and computes from the traced shapes instead;
eager inference is unchanged.

``verify_export`` runs the exported file (onnxruntime for ONNX) on images of several sizes (a fixed-size
graph: several images of its size, ``verification_sizes``) and compares
each output with the PyTorch model's prediction: boxes within ``BOX_TOLERANCE`` pixels plus
``BOX_RELATIVE_TOLERANCE`` of the image's longer side, scores and probabilities within ``SCORE_TOLERANCE``,
mask probabilities within ``MASK_TOLERANCE``, labels and class maps equal; detections whose scores tie may
come in either order (``tie_order``), and those tied with the lowest kept score are compared by score only
(``cut_ties``). An exported file that fails to run on an image is an ``ExportError`` naming the image.

``load_predictor`` reads a training checkpoint for export (an exported file is refused by the checkpoint reader,
``structured.io.exported_format_of``) and refuses weights that are not finite (``check_finite_weights``) with
one sentence naming the file.

onnx and onnxruntime are the ``export`` extra (``pip install 'structured[export]'``), imported only here
and only when ONNX is asked for.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn

from structured.api import Predictor, load
from structured.detection.parts import InferenceModel
from structured.engine.checkpoint import non_finite_tensors
from structured.io import atomic_output

FORMATS = ("onnx", "torchscript")
FORMAT_OF_SUFFIX = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript"}
ONNX_OPSET = 17
BOX_TOLERANCE = 1e-3
BOX_RELATIVE_TOLERANCE = 2e-5
"""Boxes are allowed ``BOX_TOLERANCE + BOX_RELATIVE_TOLERANCE * max(H, W)`` pixels: another runtime's float
arithmetic leaves relative errors of about 1e-5 in decoded boxes (measured: 0.0025 px on a 433 px image for a
trained SSDlite, 0.0025 px on a 320 px image for Faster R-CNN R50), far below any real difference."""
SCORE_TOLERANCE = 1e-4
MASK_TOLERANCE = 1e-2
"""Mask probabilities move with their box: the pooled features and the pasted pixels are sampled where the box
says, so a box within its tolerance shifts a mask's edge by as much, and the probabilities there by that
shift times the edge's slope (measured: 5e-4 on a briefly trained nuclei Mask R-CNN). A real difference (a
pixel's offset, another class's map) changes them by 0.5 or more."""
EXAMPLE_SIZE = (240, 320)
"""``(height, width)`` of the image the graph is traced with."""
KNOWN_WARNINGS = (
    (FutureWarning, r"`torch\.jit\.\w+` is deprecated"),
    (UserWarning, r"Constant folding - Only steps=1 can be constant folded"),
    (UserWarning, r"Exporting aten::index operator of advanced indexing"),
)
"""``(category, message)`` of the warnings the export triggers knowingly: torch deprecates TorchScript, the format
asked for (torchvision's ``batched_nms`` scripts a helper when traced, for ONNX too); the ONNX exporter notes
slices it cannot fold (an optimisation only) and that negative indices would go wrong (the traced indices are
``arange`` positions and labels, never negative; ``verify_export`` checks the outputs)."""


class ExportError(ValueError):
    """A model that cannot be exported as asked, or an exported file that does not give PyTorch's outputs."""


def require_module(name: str) -> ModuleType:
    """Import an optional dependency of the export, or raise one sentence naming the extra that installs it."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ExportError(f"exporting to ONNX needs {name}, which is not installed: pip install "
                          "'structured[export]'") from error


class ExportModule(nn.Module):
    """The traced module: ``image [B, 3, H, W]`` -> the model's ``EXPORT_OUTPUTS`` (see the module docstring)."""

    def __init__(self, model: InferenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        """The model's ``export_outputs`` of ``image``."""
        return self.model.export_outputs(image)


def check_format(fmt: str) -> None:
    """``ExportError`` unless ``fmt`` is one of ``FORMATS``."""
    if fmt not in FORMATS:
        raise ExportError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")


@contextlib.contextmanager
def known_warnings_ignored() -> Iterator[None]:
    """A block where ``KNOWN_WARNINGS`` and the tracer's warnings are not shown. The tracer warns at every Python
    value it records; the code reads sizes from traced shapes where they vary (module docstring), and
    ``verify_export`` checks other sizes than the traced one."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        for category, message in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def check_exportable(model: nn.Module, fmt: str) -> InferenceModel:
    """``model`` when it can be exported to ``fmt``; else ``ExportError`` naming the model or the format."""
    check_format(fmt)
    if not isinstance(model, InferenceModel):
        raise ExportError(f"{type(model).__name__} is not one of the toolkit's models (an InferenceModel with "
                          "export_outputs); only those can be exported")
    return model


def example_image(size: tuple[int, int] = EXAMPLE_SIZE) -> Tensor:
    """The seeded random ``[1, 3, H, W]`` image the graph is traced with."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand((1, 3, *size), generator=generator)


def format_for(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """``fmt`` when given, else the format of ``path``'s suffix (``FORMAT_OF_SUFFIX``); ``ExportError`` for an
    unknown ``fmt``, a suffix of another format than ``fmt``, or no ``fmt`` and a suffix that tells none."""
    suffix = Path(path).suffix.lower()
    if fmt is not None:
        check_format(fmt)
        if FORMAT_OF_SUFFIX.get(suffix, fmt) != fmt:
            suffixes = [known for known, its_format in FORMAT_OF_SUFFIX.items() if its_format == fmt]
            raise ExportError(f"the suffix {suffix} of {path} is that of {FORMAT_OF_SUFFIX[suffix]} files, but --format "
                              f"is {fmt}; give the file a suffix of {fmt} ({', '.join(suffixes)}), or leave out --format")
        return fmt
    if suffix not in FORMAT_OF_SUFFIX:
        raise ExportError(f"cannot tell the export format from the suffix of {path} (known: "
                          f"{', '.join(FORMAT_OF_SUFFIX)}); give it with --format ({' or '.join(FORMATS)})")
    return FORMAT_OF_SUFFIX[suffix]


def export_model(model: nn.Module, path: str | os.PathLike[str], fmt: str, dynamic: bool = True,
                 class_names: Sequence[str] | None = None, example_size: tuple[int, int] = EXAMPLE_SIZE) -> Path:
    """Write ``model``'s inference as an ONNX or TorchScript file at ``path`` (atomically); returns the path.

    ``dynamic``: the ONNX input's height and width (and the UNet's batch) are left free (TorchScript: see the
    module docstring). ``class_names`` go into the file's metadata (ONNX ``metadata_props`` /
    TorchScript ``extra_files``) as ``class_names``, a JSON list.
    """
    exportable = check_exportable(model, fmt)
    check_output_path(path)
    exportable.eval()
    module = ExportModule(exportable).eval()
    example = example_image(example_size)
    metadata = {"class_names": json.dumps(list(class_names or [])), "outputs": json.dumps(exportable.EXPORT_OUTPUTS)}
    with atomic_output(path) as temporary, torch.no_grad(), known_warnings_ignored():
        if fmt == "onnx":
            _export_onnx(module, example, temporary, dynamic, metadata)
        else:
            traced = torch.jit.trace(module, example, check_trace=False)
            torch.jit.save(traced, str(temporary), _extra_files=metadata)
    return Path(path)


def check_output_path(path: str | os.PathLike[str], source: str | os.PathLike[str] | None = None) -> None:
    """``IsADirectoryError`` when ``path`` is a folder, ``ExportError`` when it is the file ``source`` (the
    checkpoint, which the export would replace): checked before the export's work."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"the export path {path} is a folder, not a file; give the path of the file to write")
    if source is not None and path.resolve() == Path(source).resolve():
        raise ExportError(f"the export path {path} is the checkpoint itself, which the export would replace; "
                          "give another file path")


def _export_onnx(module: ExportModule, example: Tensor, path: Path, dynamic: bool, metadata: dict[str, str]) -> None:
    onnx = require_module("onnx")
    names = list(module.model.EXPORT_OUTPUTS)
    axes = module.model.export_dynamic_axes() if dynamic else None
    torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET, input_names=["image"],
                      output_names=names, dynamic_axes=axes)
    graph = onnx.load(str(path))
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


def exported_runner(path: str | os.PathLike[str], fmt: str, threads: int | None = None
                    ) -> Callable[[Tensor], dict[str, Tensor]]:
    """A function running the exported file on ``image [B, 3, H, W]``: its outputs by name, as tensors.

    ONNX runs in onnxruntime on the CPU with ``threads`` intra-op threads (torch's count by default).
    """
    check_format(fmt)
    if not Path(path).is_file():
        raise FileNotFoundError(f"exported model {path} does not exist")
    if fmt == "torchscript":
        return _torchscript_runner(path)
    onnxruntime = require_module("onnxruntime")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]

    def run(image: Tensor) -> dict[str, Tensor]:
        outputs = session.run(names, {"image": image.detach().cpu().numpy()})
        return {name: torch.from_numpy(output) for name, output in zip(names, outputs, strict=True)}

    return run


def _torchscript_runner(path: str | os.PathLike[str]) -> Callable[[Tensor], dict[str, Tensor]]:
    extra = {"outputs": ""}
    with known_warnings_ignored():
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    names = json.loads(extra["outputs"])

    def run(image: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            return dict(zip(names, module(image), strict=True))

    return run


@dataclass
class OutputCheck:
    """One output of one image: its exported shape and the largest difference to PyTorch's (or the entries that
    differ, for labels and class maps)."""

    image: int
    name: str
    shape: tuple[int, ...]
    difference: float
    tolerance: float

    @property
    def passed(self) -> bool:
        """Whether the difference is within the tolerance."""
        return self.difference <= self.tolerance


def compare_output(name: str, exported: Tensor, expected: Tensor) -> float:
    """The difference of one exported output to PyTorch's: the largest absolute difference for boxes, scores
    and probabilities (masks included), the number of differing entries for labels and class maps; ``inf``
    when the shapes differ."""
    if tuple(exported.shape) != tuple(expected.shape):
        return float("inf")
    if exported.numel() == 0:
        return 0.0
    if not expected.is_floating_point():
        return float((exported.to(expected.dtype) != expected).sum())
    return float((exported.float() - expected.float()).abs().max())


def tolerance_of(name: str, image_size: tuple[int, int]) -> float:
    """The allowed difference of an output (see ``compare_output``) on an image of ``(H, W)``."""
    if name == "boxes":
        return BOX_TOLERANCE + BOX_RELATIVE_TOLERANCE * max(image_size)
    if name in ("scores", "probabilities"):
        return SCORE_TOLERANCE
    if name == "masks":
        return MASK_TOLERANCE
    return 0.0


def tie_order(exported: dict[str, Tensor], expected: dict[str, Tensor]) -> Tensor:
    """The order of the exported detections that puts each where PyTorch has it, moving a detection only among
    the exported positions whose scores tie with its own (within ``SCORE_TOLERANCE``), to a position where
    PyTorch has the same label and a tied score: the order of tied detections is arbitrary (top-k and sorting
    break exact ties differently). Each position takes the nearest box of the candidates not taken yet;
    ``arange`` (no reordering) when the counts differ or a position has no candidate."""
    count = len(exported["scores"])
    order = torch.arange(count)
    if count != len(expected["scores"]):
        return order
    scores, labels = exported["scores"].float(), exported["labels"].to(expected["labels"].dtype)
    box_distance = torch.cdist(expected["boxes"].float(), exported["boxes"].float(), p=float("inf"))
    tied = ((expected["scores"].float()[:, None] - scores[None]).abs() <= SCORE_TOLERANCE) & \
        ((scores[:, None] - scores[None]).abs() <= SCORE_TOLERANCE) & (expected["labels"][:, None] == labels[None])
    taken = torch.zeros(count, dtype=torch.bool)
    for position in range(count):
        candidates = torch.where(tied[position] & ~taken)[0]
        if len(candidates) == 0:
            return torch.arange(count)
        chosen = candidates[box_distance[position, candidates].argmin()]
        order[position], taken[chosen] = chosen, True
    return order


def check_outputs(model: InferenceModel, run: Callable[[Tensor], dict[str, Tensor]], images: Sequence[Tensor]
                  ) -> list[OutputCheck]:
    """Each output of the exported ``run`` on each ``[3, H, W]`` image against ``model.predict`` on it
    (detections with tied scores in PyTorch's order first, ``tie_order``; the detections of ``cut_ties`` are
    compared by score only)."""
    checks = []
    for index, image in enumerate(images):
        expected = model.predict([image])[0]
        height, width = image.shape[-2:]
        try:
            exported = run(image[None])
        except Exception as error:  # onnxruntime's and TorchScript's errors derive from Exception only
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ExportError(f"the exported file fails on image {index} ({height}x{width}): {message}") from error
        detections = "scores" in model.EXPORT_OUTPUTS
        order = tie_order(exported, expected) if detections else None
        compared = None  # the detections whose every output is compared (None: all)
        if detections and len(exported["scores"]) == len(expected["scores"]):
            compared = ~cut_ties(expected["scores"])
        for name in model.EXPORT_OUTPUTS:
            output, reference = exported[name], expected[name]
            if output.ndim == reference.ndim + 1:  # a batched graph (the UNet's): its one image
                output = output[0]
            if order is not None:
                output = output[order]
            shape = tuple(output.shape)
            if compared is not None and name != "scores":
                output, reference = output[compared], reference[compared]
            checks.append(OutputCheck(index, name, shape, compare_output(name, output, reference),
                                      tolerance_of(name, (height, width))))
    return checks


def cut_ties(scores: Tensor) -> Tensor:
    """``[K]`` bool: the detections whose score ties the lowest kept one (within ``SCORE_TOLERANCE``), while they
    are at most half of them. Which of several such candidates the top-k or the score threshold keeps is float
    noise (another runtime may keep another one), so only their scores are compared; when more than half tie
    the cut, nothing is left out and the check fails as for other ties (``tie_hint``)."""
    if len(scores) == 0:
        return torch.zeros(0, dtype=torch.bool)
    band = scores.float() <= scores.float().min() + SCORE_TOLERANCE
    return band if 2 * int(band.sum()) <= len(scores) else torch.zeros_like(band)


def verify_export(path: str | os.PathLike[str], model: InferenceModel, images: Sequence[Tensor], fmt: str
                  ) -> list[OutputCheck]:
    """Run the exported file on ``images`` and compare with ``model``; ``ExportError`` naming the first image
    and output outside its tolerance, else every check."""
    model.eval()
    try:
        checks = check_outputs(model, exported_runner(path, fmt), images)
    except ExportError as error:
        raise ExportError(f"{path}: {error}") from error
    failed = [check for check in checks if not check.passed]
    if failed:
        first = failed[0]
        size = tuple(images[first.image].shape[-2:])
        raise ExportError(f"{path}: output {first.name!r} of image {first.image} ({size[0]}x{size[1]}) differs from "
                          f"PyTorch's by {first.difference:g} (tolerance {first.tolerance:g}, exported shape "
                          f"{list(first.shape)}); {len(failed)} of {len(checks)} checks failed"
                          f"{tie_hint(model.predict([images[first.image]])[0])}")
    return checks


def tie_hint(prediction: dict[str, Tensor]) -> str:
    """A note for a failed check when PyTorch's detections tie exactly (a seeded model's do): which of the tied
    candidates top-k keeps is arbitrary, so their boxes may differ from any exported file's."""
    if "scores" not in prediction:
        return ""
    count, distinct = len(prediction["scores"]), len(prediction["scores"].unique())
    if distinct == count:
        return ""
    return (f" (PyTorch's {count} detections have only {distinct} distinct scores: with tied scores which boxes "
            "are kept is arbitrary; verify trained weights)")


VERIFY_SIZES = ((240, 320), (301, 207), (150, 433))
"""``(height, width)`` of the images ``verify_export`` uses by default: other sizes than the traced one."""


def verification_sizes(fmt: str, dynamic: bool) -> tuple[tuple[int, int], ...]:
    """The image sizes to verify an export of ``fmt`` with: ``VERIFY_SIZES``, or as many images of the traced
    size for an ONNX graph exported without ``dynamic`` (it accepts no other size)."""
    return VERIFY_SIZES if dynamic or fmt != "onnx" else (EXAMPLE_SIZE,) * len(VERIFY_SIZES)


def verification_images(sizes: Sequence[tuple[int, int]] = VERIFY_SIZES) -> list[Tensor]:
    """Seeded random ``[3, H, W]`` images of ``sizes`` (a real image does as well; these need no files)."""
    generator = torch.Generator().manual_seed(1)
    return [torch.rand((3, *size), generator=generator) for size in sizes]


def load_predictor(checkpoint: str | os.PathLike[str]) -> Predictor:
    """The checkpoint's predictor on the CPU, its model prepared for inference (``structured.load``; an exported
    model is refused there, ``structured.io.exported_format_of``); ``ExportError`` for weights that are not
    finite."""
    predictor = load(checkpoint, device="cpu", optimize=False)
    check_finite_weights(predictor.model, checkpoint)
    predictor.model.optimize_for_inference()
    return predictor


def check_finite_weights(model: nn.Module, source: str | os.PathLike[str]) -> None:
    """``ExportError`` naming ``source`` and the first parameter or buffer of ``model`` that holds NaN or
    infinity: such weights trace into a graph of NaN outputs, or fail inside the post-processing."""
    broken = non_finite_tensors(model.state_dict())
    if broken:
        others = f" (and {len(broken) - 1} more tensors)" if len(broken) > 1 else ""
        raise ExportError(f"the weights of checkpoint {source} are not finite: {broken[0]} holds NaN or infinite "
                          f"values{others}; export a checkpoint saved before training diverged")
