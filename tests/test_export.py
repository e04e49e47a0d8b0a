"""ONNX and TorchScript export (structured/export.py, tools/export.py): the exported file gives PyTorch's outputs
on images of other sizes than the traced one, and what cannot be exported is one clear error."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import pytest
import torch

from structured.detection.roi_heads import MultiLevelRoIAlign
from structured.engine.checkpoint import save_checkpoint
from structured.export import (
    EXAMPLE_SIZE,
    ONNX_OPSET,
    VERIFY_SIZES,
    ExportError,
    check_outputs,
    compare_output,
    cut_ties,
    export_model,
    format_for,
    tie_order,
    tolerance_of,
    verification_images,
    verification_sizes,
    verify_export,
)
from structured.registry import MODELS
from tools import export as export_tool

UNET = {"name": "unet_nuclei", "num_classes": 2, "encoder": {"width": 4, "depth": 3},
        "decoder": {"channels": [16, 8, 4]}}
SSD = {"name": "ssdlite320_mobilenet_v3_large", "num_classes": 3, "transform": {"size": 64},
       "head": {"extras": [[32, 64, 3, 2, 1], [32, 64, 3, 2, 1]]},
       "default_boxes": {"aspect_ratios": [[2]] * 4, "scales": [], "steps": []},
       "postprocess": {"detections_per_img": 50}}
MASK_RCNN = {"name": "mask_rcnn_r18_fpn", "num_classes": 3, "transform": {"min_size": 128, "max_size": 160},
               "rpn": {"pre_nms_top_n_test": 100, "post_nms_top_n_test": 32}}
SIZES = [(61, 47), (96, 200), (130, 41)]
needs_onnxruntime = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                                       reason="needs the export extra (onnxruntime)")


def build(recipe: dict, spread: bool = False) -> torch.nn.Module:
    """The recipe's model, seeded, prepared for inference as the export tool prepares it. ``spread`` adds noise
    to its parameters: a fresh SSD scores many default boxes exactly alike, and the order of tied scores is
    the runtime's choice (onnxruntime's top-k breaks ties by index, torch's not), which trained weights avoid."""
    torch.manual_seed(0)
    options = dict(recipe)
    model = MODELS.build(options.pop("name"), **options)
    if spread:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval().optimize_for_inference()


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return {"unet": build(UNET), "ssd": build(SSD, spread=True), "mask_rcnn": build(MASK_RCNN)}


CASES = [("unet", "onnx"), ("unet", "torchscript"), ("ssd", "onnx"), ("ssd", "torchscript"),
         ("mask_rcnn", "onnx"), ("mask_rcnn", "torchscript")]
"""Mask R-CNN runs Faster R-CNN's whole box path (the resize rule, anchors, proposals, NMS) and its masks."""


@pytest.mark.parametrize(("family", "fmt"), CASES)
def test_the_exported_file_gives_pytorchs_outputs_on_three_sizes(models, family, fmt, tmp_path):
    if fmt == "onnx" and importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("needs the export extra (onnxruntime)")
    model = models[family]
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", DeprecationWarning)  # shown by default only for code in __main__
        path = export_model(model, tmp_path / f"{family}.{fmt}", fmt)
        checks = verify_export(path, model, verification_images(SIZES), fmt)
    assert [str(warning.message) for warning in shown] == []  # torch's deprecations, the exporter's notes
    assert {check.image for check in checks} == {0, 1, 2} and all(check.passed for check in checks)
    names = [check.name for check in checks if check.image == 0]
    assert tuple(names) == model.EXPORT_OUTPUTS
    if family != "unet":  # the detections are not empty: the comparison compares something
        assert all(check.shape[0] > 0 for check in checks)


@needs_onnxruntime
def test_the_onnx_unet_takes_a_batch_of_any_size(models, tmp_path):
    from structured.export import exported_runner

    model = models["unet"]
    run = exported_runner(export_model(model, tmp_path / "unet.onnx", "onnx"), "onnx")
    images = torch.rand(3, 3, 50, 70, generator=torch.Generator().manual_seed(2))
    outputs = run(images)
    expected = model.predict(list(images))
    assert torch.equal(outputs["mask"], torch.stack([prediction["mask"] for prediction in expected]))


@needs_onnxruntime
def test_a_mismatch_names_the_image_and_the_output(models, tmp_path):
    path = export_model(models["unet"], tmp_path / "unet.onnx", "onnx")
    other = build({**UNET, "num_classes": 3})
    with pytest.raises(ExportError, match=r"output 'mask' of image 0 \(61x47\) differs"):
        verify_export(path, other, verification_images(SIZES), "onnx")


class _Pooler(torch.nn.Module):
    """The multi-level RoIAlign alone, with tensors in and out, as a traced graph sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = MultiLevelRoIAlign(strides=[4, 8, 16, 32], output_size=14, sampling_ratio=2)

    def forward(self, p2: torch.Tensor, p3: torch.Tensor, p4: torch.Tensor, p5: torch.Tensor,
                boxes: torch.Tensor) -> torch.Tensor:
        return self.pool([p2, p3, p4, p5], [boxes])


@needs_onnxruntime
def test_the_pooler_exports_with_any_number_of_rois_per_level(tmp_path):
    import onnxruntime

    generator = torch.Generator().manual_seed(4)
    features = [torch.rand(1, 8, 256 // stride, 256 // stride, generator=generator) for stride in (4, 8, 16, 32)]
    # traced with one RoI on each of two levels (a count of 1 is what an exporter may bake in) ...
    traced_boxes = torch.tensor([[10.0, 10.0, 40.0, 40.0], [0.0, 0.0, 230.0, 250.0]])
    path = tmp_path / "pooler.onnx"
    names = ["p2", "p3", "p4", "p5", "boxes"]
    torch.onnx.export(_Pooler(), (*features, traced_boxes), str(path), input_names=names, output_names=["pooled"],
                      dynamic_axes={"boxes": {0: "count"}, "pooled": {0: "count"}}, opset_version=ONNX_OPSET,
                      dynamo=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # ... and run with none, one, two and five on a level, in mixed order
    for boxes in (traced_boxes[:1], torch.tensor([[5.0, 5.0, 30.0, 20.0], [0.0, 0.0, 250.0, 250.0], [3.0, 8.0, 20.0, 33.0]]),
                  torch.cat([traced_boxes, torch.rand(8, 2, generator=generator).mul(60).repeat(1, 2).add(
                      torch.tensor([0.0, 0.0, 20.0, 20.0]))])):
        inputs = {name: tensor.numpy() for name, tensor in zip(names, [*features, boxes], strict=True)}
        exported = torch.from_numpy(session.run(None, inputs)[0])
        torch.testing.assert_close(exported, _Pooler()(*features, boxes), rtol=0, atol=1e-5)


def test_a_file_that_fails_to_run_is_an_export_error_naming_the_image(models):
    def failing_run(image: torch.Tensor) -> dict:
        raise RuntimeError("Non-zero status code returned while running Reshape node\nthe rest")

    with pytest.raises(ExportError, match=r"^the exported file fails on image 0 \(61x47\): Non-zero status code "
                                          r"returned while running Reshape node$"):
        check_outputs(models["unet"], failing_run, verification_images(SIZES))


class _FixedDetector:
    """Stands for a model: ``predict`` gives the same three detections for any image."""

    EXPORT_OUTPUTS = ("boxes", "scores", "labels")

    def __init__(self, scores: list[float]) -> None:
        self.prediction = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40], [50, 5, 60, 30]]),
                           "scores": torch.tensor(scores), "labels": torch.tensor([1, 1, 1])}

    def predict(self, images: list) -> list[dict]:
        return [self.prediction]


def test_the_detection_at_a_tied_cut_may_be_another_candidate(models):
    def run_replacing_the_last(model: _FixedDetector):
        def run(image: torch.Tensor) -> dict:
            exported = {name: value.clone() for name, value in model.prediction.items()}
            exported["boxes"][2] = torch.tensor([100.0, 100, 120, 140])  # another candidate, the same score
            exported["scores"][2] += 2e-5
            return exported
        return run

    images = verification_images(SIZES[:1])
    at_the_cut = _FixedDetector([0.9, 0.6, 0.3])  # the last one is the lowest kept: only its score is compared
    assert all(check.passed for check in check_outputs(at_the_cut, run_replacing_the_last(at_the_cut), images))
    all_tied = _FixedDetector([0.3, 0.3, 0.3])  # every detection ties the cut: nothing is left out
    failed = [check.name for check in check_outputs(all_tied, run_replacing_the_last(all_tied), images) if not check.passed]
    assert failed == ["boxes"]
    assert cut_ties(torch.tensor([0.9, 0.5, 0.2, 0.20005])).tolist() == [False, False, True, True]
    assert cut_ties(torch.tensor([0.9, 0.2, 0.2, 0.2])).tolist() == [False] * 4
    assert cut_ties(torch.tensor([])).tolist() == []


def test_box_tolerance_grows_with_the_image_and_masks_compare_as_probabilities():
    assert tolerance_of("boxes", (150, 433)) == pytest.approx(1e-3 + 2e-5 * 433)
    assert tolerance_of("scores", (10, 10)) == 1e-4 and tolerance_of("masks", (10, 10)) == 1e-2
    assert tolerance_of("labels", (10, 10)) == 0
    probabilities = torch.full((1, 4, 4), 0.5)
    assert compare_output("masks", probabilities + 2e-6, probabilities) == pytest.approx(2e-6, abs=1e-7)


@pytest.mark.parametrize(("model", "fmt", "message"), [
    (torch.nn.Linear(2, 2), "onnx", "Linear is not one of the toolkit's models"),
    (None, "tflite", "export format must be one of onnx, torchscript, got 'tflite'"),
])
def test_what_cannot_be_exported_is_a_clear_error_and_no_file(models, model, fmt, message, tmp_path):
    with pytest.raises(ExportError, match=message):
        export_model(model or models["unet"], tmp_path / "model.out", fmt)
    assert not (tmp_path / "model.out").exists()


def _checkpoint(tmp_path: Path, recipe: dict, broken_weight: str | None = None) -> Path:
    """A training checkpoint of the recipe's model; ``broken_weight`` names a state entry made NaN."""
    model = MODELS.build(recipe["name"], **{key: value for key, value in recipe.items() if key != "name"})
    names = ["__background__", *[f"class{index}" for index in range(1, recipe["num_classes"] + 1)]]
    state = model.state_dict()
    if broken_weight is not None:
        state[broken_weight][0] = float("nan")
    return save_checkpoint({"model": state, "config": {"model": recipe}, "class_names": names}, tmp_path / "best.pt")


def test_the_tool_exports_and_verifies_a_checkpoint(tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path, UNET)
    out = tmp_path / "exported" / "unet.pt"
    assert export_tool.main([str(checkpoint), "--format", "torchscript", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "verified: 6 checks within tolerance" in printed
    extra = {"class_names": ""}
    torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["class_names"]) == ["__background__", "class1", "class2"]


def test_the_tool_takes_the_format_from_the_suffix_of_out(tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path, UNET)
    out = tmp_path / "unet.ts"
    assert export_tool.main([str(checkpoint), "--out", str(out), "--no-verify"]) == 0
    assert "(torchscript, UNet" in capsys.readouterr().out
    torch.jit.load(str(out))
    assert [format_for(name) for name in ("m.onnx", "m.PT", "m.pth")] == ["onnx", "torchscript", "torchscript"]
    assert format_for("m.bin", "onnx") == "onnx"


@pytest.mark.parametrize(("arguments", "message"), [
    (["--format", "tflite"], "error: export format must be one of onnx, torchscript, got 'tflite'"),
    (["--out", "model.bin"], "error: cannot tell the export format from the suffix of model.bin (known: .onnx, "
                             ".pt, .pth, .ts); give it with --format (onnx or torchscript)"),
    (["--format", "torchscript", "--out", "/proc/exported.pt"], "error: "),
    (["--format", "torchscript", "--out", "x.onnx"], "error: the suffix .onnx of x.onnx is that of onnx files, but "
                                                     "--format is torchscript; give the file a suffix of torchscript "
                                                     "(.pt, .pth, .ts), or leave out --format\n"),
    (["--format", "tflite", "--out", "x.onnx"], "error: export format must be one of onnx, torchscript, got 'tflite'"),
])
def test_the_tool_reports_unusable_input_in_one_line(tmp_path, capsys, arguments, message):
    checkpoint = _checkpoint(tmp_path, UNET)
    if "--out" not in arguments:
        arguments = [*arguments, "--out", str(tmp_path / "model.onnx")]
    assert export_tool.main([str(checkpoint), *arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith(message) and error.count("\n") == 1


def test_detections_with_tied_scores_may_come_in_either_order():
    expected = {"boxes": torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 4, 4], [2, 2, 9, 9]]),
                "scores": torch.tensor([0.9, 0.5, 0.5, 0.2]), "labels": torch.tensor([1, 2, 2, 2])}
    tied_swapped = {key: value[[0, 2, 1, 3]] for key, value in expected.items()}
    order = tie_order(tied_swapped, expected)
    for key, value in expected.items():
        assert torch.equal(tied_swapped[key][order], value)
    untied_swapped = {key: value[[1, 0, 2, 3]] for key, value in expected.items()}
    assert torch.equal(tie_order(untied_swapped, expected), torch.arange(4))
    other_label = {**tied_swapped, "labels": torch.tensor([1, 2, 3, 2])}
    assert torch.equal(tie_order(other_label, expected), torch.arange(4))


@needs_onnxruntime
def test_a_fixed_size_onnx_export_is_verified_on_its_traced_size(tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path, UNET)
    out = tmp_path / "unet.onnx"
    assert export_tool.main([str(checkpoint), "--out", str(out), "--no-dynamic"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "verified: 6 checks within tolerance" in printed
    assert "fixed input image [1, 3, 240, 320]" in printed and printed.count("(240x320) mask") == 3
    assert verification_sizes("onnx", dynamic=False) == (EXAMPLE_SIZE,) * 3
    assert verification_sizes("onnx", dynamic=True) == verification_sizes("torchscript", dynamic=False) == VERIFY_SIZES


def test_a_suffix_of_the_other_format_is_refused():
    with pytest.raises(ExportError, match=r"^the suffix \.pt of m\.pt is that of torchscript files, but --format is "
                                          r"onnx; give the file a suffix of onnx \(\.onnx\)"):
        format_for("m.pt", "onnx")
    assert format_for("m.onnx", "onnx") == "onnx" and format_for("m.TS", "torchscript") == "torchscript"


@pytest.mark.parametrize(("fmt", "kind"), [("torchscript", "TorchScript"), ("onnx", "ONNX")])
def test_an_exported_model_is_not_taken_for_a_checkpoint(models, tmp_path, capsys, fmt, kind):
    if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
        pytest.skip("needs the export extra (onnx)")
    exported = export_model(models["unet"], tmp_path / "exported.pt", fmt)  # a checkpoint's suffix: told by content
    assert export_tool.main([str(exported), "--out", str(tmp_path / "again.pt")]) == 2
    assert capsys.readouterr().err == (f"error: {exported} is an exported {kind} model, not a checkpoint; use the "
                                       "checkpoint that training wrote (runs/NAME/best.pt or last.pt)\n")


def test_weights_that_are_not_finite_name_the_checkpoint_and_a_weight(tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path, SSD, broken_weight="head.classification.0.0.0.weight")
    out = tmp_path / "ssd.onnx"
    assert export_tool.main([str(checkpoint), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"error: the weights of checkpoint {checkpoint} are not finite: "
                                       "head.classification.0.0.0.weight holds NaN or infinite values; export a "
                                       "checkpoint saved before training diverged\n")
    assert not out.exists()


def test_an_unusable_output_path_is_refused_before_the_export(tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path, UNET)
    folder = tmp_path / "dir.onnx"
    folder.mkdir()
    assert export_tool.main([str(checkpoint), "--out", str(folder)]) == 2
    assert capsys.readouterr().err == (f"error: the export path {folder} is a folder, not a file; give the path of "
                                       "the file to write\n")
    assert list(folder.iterdir()) == [] and sorted(path.name for path in tmp_path.iterdir()) == ["best.pt", "dir.onnx"]
    written = checkpoint.read_bytes()
    assert export_tool.main([str(checkpoint), "--format", "torchscript", "--out", str(checkpoint)]) == 2
    assert "is the checkpoint itself, which the export would replace" in capsys.readouterr().err
    assert checkpoint.read_bytes() == written
