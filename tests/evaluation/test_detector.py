"""Evaluating a detector on a dataset: official ground truth, ids in predictions.json, tools/eval.py, speed.

The central check: ``tools/eval.py`` on a COCO file with everything that separates the official evaluation
from one rebuilt out of loaded targets (non-contiguous category ids, image ids that are not 1..N, ``area``
fields unlike the box areas, crowd regions, a zero-area box the loader drops, an image without objects)
prints the stats that pycocotools gives on the original file and the written ``predictions.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn

from structured.data.coco import CocoDetection
from structured.data.synthetic import generate_dataset
from structured.data.voc import VOCDetection
from structured.engine.checkpoint import save_checkpoint
from structured.evaluation.coco import evaluate_coco
from structured.evaluation.detector import (
    coco_ground_truth,
    converted_ground_truth,
    evaluate_detector_on_dataset,
    predict_dataset,
)
from structured.registry import MODELS
from tools import eval as eval_tool

CATEGORY_IDS = (3, 7, 11, 20, 42)
TOY_MASK_MODEL = "evaluation_test_random_boxes_with_masks"


def image_key(image: torch.Tensor) -> int:
    """A hash of an image's pixels: how the toy model below recognises the pictures it has answers for."""
    return int((image * 255).round().sum()) % 2**31


class NoisyOracle(nn.Module):
    """Jittered ground truth plus seeded random boxes, with masks: a detector of known, middling quality.

    ``answers`` maps :func:`image_key` to the true ``boxes``, ``labels`` and ``masks`` of an image. Each
    true object comes back shifted by up to 15 % of its size, with the right label four times in five and
    its own mask; ``random_boxes`` seeded false positives per image (filled-box masks) follow. That gives
    AP well inside (0, 1) on every area range and thousands of results per evaluation.
    """

    def __init__(self, num_classes: int, answers: dict[int, dict] | None = None, random_boxes: int = 300) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.answers = answers or {}
        self.random_boxes = random_boxes
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        """Losses with targets (a zero loss: the toy does not learn), else one Prediction per image."""
        if targets is not None:
            return {"loss_zero": self.unused.sum() * 0}
        return self.postprocess(self.raw_outputs(images))

    def raw_outputs(self, images: list[torch.Tensor]) -> list[tuple[int, int, int]]:
        """``(height, width, image key)`` per image."""
        return [(int(image.shape[-2]), int(image.shape[-1]), image_key(image)) for image in images]

    def postprocess(self, raw: list[tuple[int, int, int]]) -> list[dict[str, torch.Tensor]]:
        """The noisy answers and random boxes of each ``(height, width, key)``."""
        return [self._image_prediction(*entry) for entry in raw]

    def _image_prediction(self, height: int, width: int, key: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(key)
        truth = self.answers.get(key, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                                       "masks": torch.zeros(0, height, width)})
        count = len(truth["boxes"])
        sizes = (truth["boxes"][:, 2:] - truth["boxes"][:, :2]).repeat(1, 2)
        found = truth["boxes"] + (torch.rand(count, 4, generator=generator) - 0.5) * 0.3 * sizes
        wrong = torch.rand(count, generator=generator) < 0.2
        labels = torch.where(wrong, torch.randint(1, self.num_classes + 1, (count,), generator=generator),
                             truth["labels"])
        corner = torch.rand(self.random_boxes, 2, generator=generator) * torch.tensor([width, height])
        extent = (torch.rand(self.random_boxes, 2, generator=generator) * 0.6 + 0.05) * torch.tensor([width, height])
        limit = torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes = torch.cat((found, torch.cat((corner, corner + extent), 1))).clamp(min=0).minimum(limit)
        masks = torch.zeros(len(boxes), height, width)
        masks[:count] = truth["masks"].float() * 0.9
        for index, (x1, y1, x2, y2) in enumerate(boxes[count:].round().int().tolist(), start=count):
            masks[index, y1:y2, x1:x2] = 0.8
        scores = torch.cat((torch.rand(count, generator=generator) * 0.5 + 0.5,
                            torch.rand(self.random_boxes, generator=generator) * 0.7))
        labels = torch.cat((labels, torch.randint(1, self.num_classes + 1, (self.random_boxes,), generator=generator)))
        return {"boxes": boxes, "scores": scores, "labels": labels, "masks": masks}

    def optimize_for_inference(self) -> NoisyOracle:
        """Nothing to fold: returns ``self``."""
        return self


def oracle_answers(dataset) -> dict[int, dict]:
    """The :class:`NoisyOracle` answers for every image of ``dataset`` (empty masks when it has none)."""
    answers = {}
    for index in range(len(dataset)):
        image, target = dataset[index]
        masks = target.get("masks", torch.zeros(len(target["boxes"]), *image.shape[-2:]))
        answers[image_key(image)] = {"boxes": target["boxes"], "labels": target["labels"], "masks": masks}
    return answers


@pytest.fixture
def toy_mask_model(monkeypatch: pytest.MonkeyPatch, official_coco: Path) -> str:
    dataset = CocoDetection(official_coco, official_coco.parent.parent / "JPEGImages", with_masks=True)
    monkeypatch.setitem(MODELS._builders, TOY_MASK_MODEL, partial(NoisyOracle, answers=oracle_answers(dataset)))
    return TOY_MASK_MODEL


def _official_style_file(root: Path) -> Path:
    """The generated val file, edited as real files are: ids far from 1..N, odd areas, crowds, a zero box."""
    path = root / "annotations" / "instances_val.json"
    content = json.loads(path.read_text())
    new_ids = {image["id"]: 1000 + 37 * index for index, image in enumerate(content["images"])}
    for image in content["images"]:
        image["id"] = new_ids[image["id"]]
    annotations = content["annotations"]
    for index, annotation in enumerate(annotations):
        annotation["image_id"] = new_ids[annotation["image_id"]]
        annotation["area"] = (100.0, 2000.0, 9500.0)[index % 3]  # unlike the box areas; crosses area ranges
        annotation["iscrowd"] = int(index % 7 == 3)
    first = annotations[0]
    annotations.append({"id": 10_000, "image_id": first["image_id"], "category_id": first["category_id"],
                        "bbox": [12.0, 15.0, 0.0, 9.0], "area": 0.0, "iscrowd": 0,
                        "segmentation": [[12.0, 15.0, 12.0, 24.0, 12.5, 20.0]]})
    path.write_text(json.dumps(content))
    return path


@pytest.fixture(scope="module")
def official_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = generate_dataset(tmp_path_factory.mktemp("official"), num_train=1, num_val=8, image_size=96, seed=11,
                            formats=("coco",), category_ids=CATEGORY_IDS, empty_probability=0.15)
    return _official_style_file(root)


def _pycocotools_stats(ground_truth: str | dict, predictions: Path, iou_type: str) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(ground_truth) if isinstance(ground_truth, str) else COCO()
        if isinstance(ground_truth, dict):
            coco.dataset = ground_truth
            coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(str(predictions)), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def _eval_recipe(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": name}, "data": {"with_masks": True}}))
    return path


def _checkpoint(tmp_path: Path, recipe: Path, class_names: list[str]) -> Path:
    config = yaml.safe_load(recipe.read_text())
    config["model"]["num_classes"] = len(class_names) - 1
    model = MODELS.build(config["model"]["name"], num_classes=len(class_names) - 1)
    return save_checkpoint({"model": model.state_dict(), "config": config, "class_names": class_names},
                           tmp_path / "best.pt")


def test_eval_tool_gives_pycocotools_stats_on_the_original_file(toy_mask_model, official_coco, tmp_path, capsys):
    dataset = CocoDetection(official_coco, official_coco.parent.parent / "JPEGImages")
    original = json.loads(official_coco.read_text())
    assert sum(len(record.boxes) for record in dataset.records) == len(original["annotations"]) - 1  # zero box
    recipe = _eval_recipe(tmp_path, toy_mask_model)
    weights = _checkpoint(tmp_path, recipe, dataset.class_names)
    out = tmp_path / "eval"
    code = eval_tool.main([str(recipe), "--weights", str(weights), "--data", str(official_coco), "--out", str(out),
                           "--speed-iters", "1", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions) > 2000
    assert {p["image_id"] for p in predictions} == {image["id"] for image in original["images"]}
    assert {p["category_id"] for p in predictions} == set(CATEGORY_IDS)
    for iou_type in ("bbox", "segm"):
        reference = _pycocotools_stats(str(official_coco), out / "predictions.json", iou_type)
        ours = np.array(list(metrics[iou_type]["stats"].values()))
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12, err_msg=iou_type)
        assert 0.2 < reference[0] < 0.9 and all(0 < value < 1 for value in reference[3:6]), (iou_type, reference)
    assert not (out / "ground_truth.json").exists()
    assert "== segm ==" in printed and "circle" in printed


def test_rebuilt_ground_truth_would_have_given_other_numbers(toy_mask_model, official_coco, tmp_path):
    """The guard behind the test above: areas, crowds and the dropped box do change the stats here."""
    dataset = CocoDetection(official_coco, official_coco.parent.parent / "JPEGImages", with_masks=True)
    model = NoisyOracle(dataset.num_classes, oracle_answers(dataset))
    cpu = torch.device("cpu")
    _, results = predict_dataset(model, dataset, range(len(dataset)), cpu)
    evaluation = evaluate_detector_on_dataset(model, dataset, tmp_path, cpu, speed_iterations=0)
    samples = [(dataset.coco_image_id(i), *dataset[i][0].shape[-2:], dataset[i][1]) for i in range(len(dataset))]
    rebuilt = converted_ground_truth(samples, dataset.class_names)
    for category, category_id in zip(rebuilt["categories"], CATEGORY_IDS, strict=True):
        category["id"] = category_id
    for annotation in rebuilt["annotations"]:
        annotation["category_id"] = CATEGORY_IDS[annotation["category_id"] - 1]
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps(results))
    assert not np.allclose(_pycocotools_stats(rebuilt, path, "bbox"), evaluation.results["bbox"].stats)


def test_voc_ground_truth_is_a_conversion_with_difficult_as_crowd(tmp_path):
    root = generate_dataset(tmp_path / "voc", num_train=1, num_val=5, image_size=96, seed=2, formats=("voc",))
    xml = sorted((root / "Annotations").glob("*.xml"))[-1]
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1))
    dataset = VOCDetection(root, split="val")
    model = NoisyOracle(dataset.num_classes, oracle_answers(dataset))
    evaluation = evaluate_detector_on_dataset(model, dataset, tmp_path / "eval", torch.device("cpu"),
                                              speed_iterations=0)
    ground_truth = json.loads((tmp_path / "eval" / "ground_truth.json").read_text())
    assert [image["id"] for image in ground_truth["images"]] == list(range(1, len(dataset) + 1))
    difficult = [bool(flag) for record in dataset.records for flag in record.difficult]
    assert [bool(annotation["iscrowd"]) for annotation in ground_truth["annotations"]] == difficult
    assert any(difficult) and not all(difficult)
    for annotation in ground_truth["annotations"]:
        assert annotation["area"] == pytest.approx(annotation["bbox"][2] * annotation["bbox"][3])
    reference = _pycocotools_stats(ground_truth, tmp_path / "eval" / "predictions.json", "bbox")
    np.testing.assert_allclose(evaluation.results["bbox"].stats, reference, rtol=0, atol=1e-12)


def test_converted_ground_truth_takes_mask_areas_and_rle():
    target = {"boxes": torch.tensor([[1.0, 1.0, 3.0, 4.0]]), "labels": torch.tensor([2]),
              "masks": torch.zeros(1, 6, 5, dtype=torch.uint8), "difficult": torch.tensor([False])}
    target["masks"][0, 1:4, 1:3] = 1
    target["masks"][0, 5, 4] = 1
    document = converted_ground_truth([(1, 6, 5, target)], ["__background__", "a", "b"])
    annotation = document["annotations"][0]
    assert annotation["category_id"] == 2 and annotation["bbox"] == [1.0, 1.0, 2.0, 3.0]
    assert annotation["area"] == 7.0 and annotation["iscrowd"] == 0
    assert annotation["segmentation"]["size"] == [6, 5]
    assert [c["name"] for c in document["categories"]] == ["a", "b"]


def test_original_ground_truth_keeps_only_the_datasets_images_and_fills_missing_areas(tmp_path):
    root = generate_dataset(tmp_path, num_train=4, num_val=1, image_size=64, seed=4, formats=("coco",))
    path = root / "annotations" / "instances_train.json"
    content = json.loads(path.read_text())
    for annotation in content["annotations"]:
        del annotation["area"]
    path.write_text(json.dumps(content))
    dataset = CocoDetection(path, root / "JPEGImages")
    dataset.records = dataset.records[1:3]  # as a held-out validation share would leave it
    document = coco_ground_truth(dataset)
    kept_ids = [record.image_id for record in dataset.records]
    assert [image["id"] for image in document["images"]] == kept_ids
    expected = [annotation for annotation in content["annotations"] if annotation["image_id"] in kept_ids]
    assert [annotation["id"] for annotation in document["annotations"]] == [a["id"] for a in expected]
    reference = COCO()
    reference.dataset = content
    with contextlib.redirect_stdout(io.StringIO()):
        reference.createIndex()
    for annotation in document["annotations"]:
        assert annotation["area"] == float(mask_utils.area(reference.annToRLE(annotation))) > 0


def test_eval_tool_prints_each_stage_with_device_threads_batch_and_size(toy_mask_model, official_coco, tmp_path,
                                                                        capsys):
    dataset = CocoDetection(official_coco, official_coco.parent.parent / "JPEGImages")
    recipe = _eval_recipe(tmp_path, toy_mask_model)
    weights = _checkpoint(tmp_path, recipe, dataset.class_names)
    assert eval_tool.main([str(recipe), "--weights", str(weights), "--data", str(official_coco),
                           "--out", str(tmp_path / "e"), "--speed-iters", "2", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if line.startswith("speed:"))
    height, width = dataset[0][0].shape[-2:]
    for part in ("preprocess", "model", "postprocess", "FPS on cpu", f"{torch.get_num_threads()} threads",
                 "batch 1", f"image {height}x{width}"):
        assert part in line, (part, line)
    speed = json.loads((tmp_path / "e" / "metrics.json").read_text())["speed"]
    assert "read_image" not in speed["description"] and "decode_to_tensor" in speed["description"]
    assert "raw_outputs" in speed["description"] and "postprocess" in speed["description"]
    assert all(speed["stages_ms"][stage]["mean"] > 0 for stage in ("preprocess", "model", "postprocess"))


def test_eval_tool_rejects_weights_of_other_classes(toy_mask_model, official_coco, tmp_path, capsys):
    recipe = _eval_recipe(tmp_path, toy_mask_model)
    weights = _checkpoint(tmp_path, recipe, ["__background__", "cat"])
    assert eval_tool.main([str(recipe), "--weights", str(weights), "--data", str(official_coco)]) == 2
    assert "trained on classes ['cat']" in capsys.readouterr().err


def _edited_copy(official_coco: Path, name: str, **changes) -> Path:
    """The official-style file with top-level entries replaced, written beside it (same image folder)."""
    path = official_coco.with_name(name)
    path.write_text(json.dumps({**json.loads(official_coco.read_text()), **changes}))
    return path


def test_eval_tool_refuses_a_dataset_without_images(toy_mask_model, official_coco, tmp_path, capsys):
    empty = _edited_copy(official_coco, "instances_no_images.json", images=[], annotations=[])
    recipe = _eval_recipe(tmp_path, toy_mask_model)
    weights = _checkpoint(tmp_path, recipe, CocoDetection(empty, official_coco.parent.parent / "JPEGImages").class_names)
    code = eval_tool.main([str(recipe), "--weights", str(weights), "--data", str(empty), "--out", str(tmp_path / "e"),
                           "--speed-iters", "1", "--device", "cpu"])
    assert code == 2
    assert f"error: {empty} has no images to evaluate on" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_eval_tool_warns_that_ground_truth_without_objects_leaves_ap_undefined(toy_mask_model, official_coco,
                                                                               tmp_path, capsys):
    unlabelled = _edited_copy(official_coco, "instances_unlabelled.json", annotations=[])
    recipe = _eval_recipe(tmp_path, toy_mask_model)
    dataset = CocoDetection(unlabelled, official_coco.parent.parent / "JPEGImages")
    weights = _checkpoint(tmp_path, recipe, dataset.class_names)
    with pytest.warns(UserWarning, match=f"{unlabelled} has no ground-truth objects on its {len(dataset)} images: "
                                         r"AP and AR are undefined \(reported as -1\)"):
        code = eval_tool.main([str(recipe), "--weights", str(weights), "--data", str(unlabelled),
                               "--out", str(tmp_path / "e"), "--speed-iters", "1", "--device", "cpu"])
    assert code == 0
    assert "speed:" in capsys.readouterr().out
    assert json.loads((tmp_path / "e" / "predictions.json").read_text())


def test_coco_evaluation_names_the_file_whose_image_ids_are_strings(official_coco, tmp_path):
    """A string id such as "61" would be read as the number 61, and the error would blame the results."""
    content = json.loads(official_coco.read_text())
    results = [{"image_id": annotation["image_id"], "category_id": annotation["category_id"],
                "bbox": annotation["bbox"], "score": 0.9} for annotation in content["annotations"]]
    first = content["images"][0]
    for image in content["images"]:
        image["id"] = str(image["id"])
    path = tmp_path / "string_ids.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=rf"{path} images\[0\]: 'id' must be an integer \(COCO ids are integers\), "
                                         rf"got '{first['id']}'"):
        evaluate_coco(path, results)


def test_coco_evaluation_names_the_ground_truth_a_result_image_is_missing_from(official_coco):
    result = {"image_id": 5, "category_id": CATEGORY_IDS[0], "bbox": [1.0, 1.0, 4.0, 4.0], "score": 0.5}
    with pytest.raises(ValueError, match=f"result image_id 5 \\(record 0\\) is not among the images of {official_coco}"):
        evaluate_coco(official_coco, [result])
