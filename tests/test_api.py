"""The Python API and batch inference: loading, predicting, filtering, exporting, skipping bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

import structured
from structured import Detector, Segmenter
from structured.backbones import FrozenBatchNorm2d
from structured.inference import list_sources, output_names, run_inference
from tests.detection.test_faster_rcnn import assert_same_detections
from tools import infer as infer_tool

CLASS_NAMES = ["__background__", "disc", "block", "wedge"]
RECIPE = {"model": {"name": "faster_rcnn_r18_fpn", "num_classes": 3, "transform": {"min_size": 96, "max_size": 128},
                    "roi_heads": {"score_thresh": 0.0, "detections_per_img": 20}}}


@pytest.fixture(scope="module")
def detector() -> Detector:
    torch.manual_seed(0)
    return Detector.from_config(RECIPE, class_names=CLASS_NAMES, optimize=False)


@pytest.fixture(scope="module")
def checkpoint(detector, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.save({"model": detector.model.state_dict(), "config": detector.config.data, "class_names": CLASS_NAMES},
               path)
    return path


def images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (90 + 7 * i, 120, 3), dtype=np.uint8) for i in range(count)]


def test_checkpoint_round_trip_gives_identical_predictions(detector, checkpoint):
    loaded = Detector.from_checkpoint(checkpoint, optimize=False)
    image = images(1)[0]
    first, second = detector.predict(image), loaded.predict(image)
    assert len(first) > 0
    assert torch.equal(first.boxes, second.boxes) and torch.equal(first.labels, second.labels)
    assert loaded.class_names == CLASS_NAMES


def test_load_picks_the_detector_by_the_checkpoint_task(checkpoint):
    assert isinstance(structured.load(checkpoint, optimize=False), Detector)
    with pytest.raises(ValueError, match="holds a detection model, which Segmenter does not serve; load it with Detector"):
        Segmenter.from_checkpoint(checkpoint)


def _with_trained_batch_norms(recipe: dict) -> dict:
    """The recipe with trainable batch norms in the backbone (statistics updated below) and the conv box head."""
    model = {**recipe["model"], "backbone": {"norm_layer": "bn", "frozen_stages": 0},
             "roi_heads": {**recipe["model"]["roi_heads"], "head": "conv_fc"}}
    return {**recipe, "model": model}


def test_the_optimized_detector_gives_the_plain_detections(tmp_path):
    torch.manual_seed(1)
    plain = Detector.from_config(_with_trained_batch_norms(RECIPE), class_names=CLASS_NAMES, optimize=False)
    plain.model.train()
    with torch.no_grad():  # running statistics away from their initial 0 / 1, so folding them is not trivial
        for image in images(3, seed=5):
            plain.model([torch.from_numpy(image).permute(2, 0, 1).float() / 255],
                        [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([1])}])
    path = tmp_path / "best.pt"
    torch.save({"model": plain.model.state_dict(), "config": plain.config.data, "class_names": CLASS_NAMES}, path)
    plain = Detector.from_checkpoint(path, optimize=False)
    optimized = Detector.from_checkpoint(path)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.model.modules())
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d)) for m in optimized.model.modules())
    compared = 0
    for image in images(4, seed=9):
        expected, actual = plain.predict(image), optimized.predict(image)
        keys = ("boxes", "scores", "labels")
        assert_same_detections([{k: getattr(expected, k) for k in keys}], [{k: getattr(actual, k) for k in keys}])
        compared += len(actual)
    assert compared > 20


def test_predict_accepts_paths_arrays_tensors_and_lists(detector, tmp_path):
    image = images(1)[0]
    path = tmp_path / "image.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    from_path = detector.predict(path)
    from_array = detector.predict(image)
    from_tensor = detector.predict(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
    assert torch.allclose(from_path.boxes, from_array.boxes) and torch.allclose(from_array.boxes, from_tensor.boxes)
    batch = detector.predict([image, image[:60]])
    assert isinstance(batch, list) and len(batch) == 2
    assert (batch[1].boxes[:, 3] <= 60 + 1e-4).all()
    assert from_path.source == str(path)


def test_filter_plot_and_save(detector, tmp_path):
    result = detector.predict(images(1)[0])
    kept = result.filter(score_threshold=float(result.scores.median()), classes=["disc", 3])
    assert all(name in ("disc", "wedge") for name in kept.names)
    assert (kept.scores >= result.scores.median()).all()
    with pytest.raises(ValueError, match="unknown class 'cat'; classes: disc, block, wedge"):
        result.filter(classes=["cat"])
    assert result.plot().shape == result.image.shape
    assert result.save(tmp_path / "annotated.jpg").stat().st_size > 0
    assert "detections" in repr(result)


def test_to_coco_loads_in_pycocotools(detector):
    result = detector.predict(images(1)[0])
    entries = result.to_coco(image_id=7)
    ground_truth = COCO()
    ground_truth.dataset = {"images": [{"id": 7, "height": 90, "width": 120}],
                            "categories": [{"id": i, "name": n} for i, n in enumerate(CLASS_NAMES) if i],
                            "annotations": []}
    ground_truth.createIndex()
    loaded = ground_truth.loadRes(entries)
    assert len(loaded.getAnnIds()) == len(result)


def test_run_inference_skips_bad_files_and_writes_outputs(checkpoint, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for index, image in enumerate(images(3)):
        cv2.imwrite(str(source / f"img{index}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    (source / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    messages: list[str] = []
    out = tmp_path / "out"
    summary = run_inference(Detector.from_checkpoint(checkpoint), source, out, score_threshold=0.0,
                            save_txt=True, report=messages.append)
    assert summary.images == 3 and len(summary.skipped) == 1 and "broken.jpg" in summary.skipped[0][0]
    assert any("skipped" in line and "broken.jpg" in line for line in messages)
    assert sorted(p.name for p in out.glob("*.jpg")) == ["img0.jpg", "img1.jpg", "img2.jpg"]
    assert len(list((out / "labels").glob("*.txt"))) == 3
    results = json.loads((out / "predictions.json").read_text())
    catalogue = json.loads((out / "images.json").read_text())
    ground_truth = COCO()
    ground_truth.dataset = {**catalogue, "annotations": []}
    ground_truth.createIndex()
    assert len(ground_truth.loadRes(results).getAnnIds()) == summary.found > 0


def test_run_inference_on_a_video(detector, tmp_path):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (120, 96))
    for frame in images(3):
        writer.write(cv2.resize(frame, (120, 96)))
    writer.release()
    summary = run_inference(detector, video, tmp_path / "out", report=lambda _: None)
    assert summary.images == 3 and (tmp_path / "out" / "clip_annotated.mp4").stat().st_size > 0


def test_sources_and_errors(tmp_path, checkpoint):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    assert list_sources(tmp_path) == [tmp_path / "a.png"]
    assert list_sources(str(tmp_path / "*.txt")) == [tmp_path / "notes.txt"]
    with pytest.raises(FileNotFoundError, match="no file matches"):
        list_sources(str(tmp_path / "*.gif"))
    with pytest.raises(ValueError, match="checkpoint not found"):
        Detector.from_checkpoint(tmp_path / "missing.pt")
    state = torch.load(checkpoint, weights_only=True)
    state["config"]["model"]["num_classes"] = 5
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"do not fit the model: shape mismatch .*roi_heads"):
        Detector.from_checkpoint(tmp_path / "other.pt")


def test_pil_images_of_any_mode_give_the_detections_of_their_file(detector, tmp_path):
    from PIL import Image

    image = images(1)[0]
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to display
    Image.fromarray(image).save(path, exif=exif, quality=95)
    from_path = detector.predict(str(path), score_threshold=0.0)
    with Image.open(path) as opened:
        from_pil = detector.predict(opened, score_threshold=0.0)
        assert from_pil.image.shape == from_path.image.shape == (image.shape[1], image.shape[0], 3)
        assert np.array_equal(from_pil.image, from_path.image)  # cv2 and PIL decode this file alike
        assert torch.equal(from_pil.boxes, from_path.boxes) and torch.equal(from_pil.labels, from_path.labels)
    rgba = Image.fromarray(image).convert("RGBA")
    assert np.array_equal(detector.predict(rgba).image, image)
    palette = Image.fromarray(image).convert("P")
    assert np.array_equal(detector.predict(palette).image, np.array(palette.convert("RGB")))


def test_a_bad_threshold_or_class_is_refused_before_the_model_runs(detector):
    image = images(1)[0]
    with pytest.raises(ValueError, match=r"score_threshold \(--score-thr\) must be a number in \[0, 1\], got 1.5"):
        detector.predict(image, score_threshold=1.5)
    with pytest.raises(ValueError, match=r"class index 9 is out of range: the classes are 1 to 3 \(disc, block, wedge\), 0 the background"):
        detector.predict(image, classes=[9])
    kept = detector.predict(image, score_threshold=0.0, classes=[np.int64(1), CLASS_NAMES[2]])
    every = detector.predict(image, score_threshold=0.0)
    wanted = (every.labels == 1) | (every.labels == 2)
    assert len(every) > int(wanted.sum()) > 0  # the seeded model detects all three classes: the filter drops some
    assert torch.equal(kept.labels, every.labels[wanted]) and torch.equal(kept.boxes, every.boxes[wanted])


def test_sources_are_listed_once_each_in_order_and_an_empty_folder_is_an_error(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt", "sub/c.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.png").mkdir()  # a folder named like an image is not an input
    listed = list_sources([tmp_path / "b.png", tmp_path, str(tmp_path / "**" / "*.png"), tmp_path / "sub" / ".." / "b.png"])
    assert listed == [tmp_path / "b.png", tmp_path / "a.jpg", tmp_path / "sub" / "c.png"]
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no image or video in folder .*empty .*at its top level; for "
                                                r"subfolders pass a quoted pattern such as '.*empty/\*\*/\*\.png'"):
        list_sources(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="input not found: .*missing.jpg"):
        list_sources([tmp_path / "a.jpg", tmp_path / "missing.jpg"])


def test_output_names_are_distinct_with_distinct_stems():
    unique = [Path("x/one.jpg"), Path("y/two.png")]
    assert output_names(unique) == {Path("x/one.jpg"): "one.jpg", Path("y/two.png"): "two.png"}
    same_name = [Path("data/a/img.png"), Path("data/b/img.png"), Path("data/c/other.png")]
    assert list(output_names(same_name).values()) == ["a_img.png", "b_img.png", "other.png"]
    same_stem = [Path("d/img.jpg"), Path("d/img.png"), Path("d/img_2.png")]
    names = list(output_names(same_stem).values())
    assert names == ["img.jpg", "img_2.png", "img_2_2.png"]
    assert len({Path(name).stem for name in names}) == 3
    clash = [Path("a/img.png"), Path("b/img.png"), Path("a_img.png")]  # a joined name meets a real one
    assert len({Path(name).stem for name in output_names(clash).values()}) == 3


def test_infer_tool_takes_several_sources_and_keeps_same_named_images_apart(checkpoint, tmp_path, capsys):
    for index, folder in enumerate(("a", "b")):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "img.png"), images(2)[index])
    out = tmp_path / "out"
    argv = [str(tmp_path / "a" / "img.png"), str(tmp_path / "b"), "--weights", str(checkpoint), "--out", str(out),
            "--score-thr", "0", "--save-txt"]
    assert infer_tool.main(argv) == 0
    assert "2 images" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.png")) == ["a_img.png", "b_img.png"]
    assert sorted(p.name for p in (out / "labels").glob("*.txt")) == ["a_img.txt", "b_img.txt"]
    catalogue = json.loads((out / "images.json").read_text())
    assert [entry["file_name"] for entry in catalogue["images"]] == ["a_img.png", "b_img.png"]


def test_infer_tool_on_a_folder_without_images_says_so(checkpoint, tmp_path, capsys):
    (tmp_path / "data" / "train").mkdir(parents=True)
    status = infer_tool.main([str(tmp_path / "data"), "--weights", str(checkpoint), "--out", str(tmp_path / "o")])
    assert status == 2
    error = capsys.readouterr().err
    assert "no image or video in folder" in error and "Traceback" not in error


def test_infer_tool_exit_status(checkpoint, tmp_path, capsys):
    image_path = tmp_path / "one.png"
    cv2.imwrite(str(image_path), images(1)[0])
    assert infer_tool.main([str(image_path), "--weights", str(checkpoint), "--out", str(tmp_path / "o")]) == 0
    assert "1 images" in capsys.readouterr().out
    (tmp_path / "bad.png").write_bytes(b"garbage")
    assert infer_tool.main([str(tmp_path / "*.png"), "--weights", str(checkpoint), "--out", str(tmp_path / "p")]) == 1


def test_inference_writes_the_training_datas_category_ids(checkpoint, tmp_path):
    state = torch.load(checkpoint, weights_only=True)
    state["category_ids"] = [3, 7, 11]
    torch.save(state, tmp_path / "coco_ids.pt")
    source = tmp_path / "in"
    source.mkdir()
    cv2.imwrite(str(source / "one.png"), images(1)[0])
    summary = run_inference(Detector.from_checkpoint(tmp_path / "coco_ids.pt"), source, tmp_path / "out",
                            score_threshold=0.0, report=lambda _: None)
    results = json.loads((tmp_path / "out" / "predictions.json").read_text())
    catalogue = json.loads((tmp_path / "out" / "images.json").read_text())
    assert summary.found > 0 and {r["category_id"] for r in results} <= {3, 7, 11}
    assert [(c["id"], c["name"]) for c in catalogue["categories"]] == list(zip([3, 7, 11], CLASS_NAMES[1:], strict=True))


def test_progress_lines_count_in_the_right_number():
    image = np.zeros((4, 4, 3), np.uint8)
    names = ["__background__", "circle", "star"]

    def detections(count: int) -> structured.api.DetectionResult:
        return structured.api.DetectionResult(torch.zeros(count, 4), torch.zeros(count),
                                              torch.ones(count, dtype=torch.int64), names, image)

    assert [detections(count).describe() for count in (0, 1, 2)] == ["0 detections", "1 detection", "2 detections"]
    mask = torch.zeros(4, 4, dtype=torch.int64)
    mask[0, 0] = 1
    one_class = structured.api.SegmentationResult(mask, None, names, image)
    assert one_class.describe() == "1 class (circle 6.2%)"
    mask[1, 1] = 2
    assert structured.api.SegmentationResult(mask, None, names, image).describe() == "2 classes (circle 6.2%, star 6.2%)"


TINY_UNET = ["model.num_classes=2", "model.encoder.width=4", "model.encoder.depth=2", "model.decoder.channels=[8,4]"]


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    torch.manual_seed(0)
    recipe = Path(__file__).resolve().parents[1] / "configs" / "unet" / "unet_original.yaml"
    return Segmenter.from_config(recipe, class_names=["__background__", "a", "b"], overrides=TINY_UNET)


@pytest.mark.parametrize("predictor_name", ["detector", "segmenter"])
def test_images_without_an_unambiguous_picture_are_refused(predictor_name, request):
    predictor = request.getfixturevalue(predictor_name)
    image = images(1)[0]
    tensor = torch.from_numpy(image).permute(2, 0, 1).float()
    with pytest.raises(ValueError, match=r"the image has float values 0 to 254; floats must be in \[0, 1\] "
                                         r"\(pass uint8 for 0-255 values; normalise back what was standardised\)"):
        predictor.predict(tensor)
    with pytest.raises(ValueError, match=r"image 1 of the list has float values 0 to 254; floats must be in \[0, 1\]"):
        predictor.predict([image, image.astype(np.float32)])
    with pytest.raises(ValueError, match=r"the image has float values -[\d.]+ to [\d.]+; floats must be in \[0, 1\]"):
        predictor.predict((tensor / 255 - 0.45) / 0.225)  # standardised, as a training pipeline feeds a model
    overshoot = tensor / 255 * 1.2 - 0.1  # a resize's ringing: clipped to [0, 1], not refused
    assert len(predictor.predict(overshoot)) == len(predictor.predict(overshoot.clamp(0, 1)))
    with pytest.raises(ValueError, match=r"the image has non-finite pixel values \(NaN or infinity\)"):
        predictor.predict(torch.full((3, 40, 50), float("nan")))
    with pytest.raises(ValueError, match=r"the image is a boolean array; expected uint8 \(0-255\) or floats in \[0, 1\]"):
        predictor.predict(image > 128)
    for item, kind in ((None, "NoneType"), (5, "int"), (b"\xff\xd8", "bytes")):
        with pytest.raises(ValueError, match=f"the image must be a path, a PIL image, a numpy array or a torch "
                                             f"tensor, got {kind}"):
            predictor.predict(item)
    assert predictor.predict([]) == []


def test_channels_first_uint8_arrays_are_read_as_such(detector):
    image = images(1)[0]
    from_channels_first = detector.predict(np.ascontiguousarray(image.transpose(2, 0, 1)))
    assert np.array_equal(from_channels_first.image, image)
    assert torch.equal(from_channels_first.boxes, detector.predict(image).boxes)


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_pil_images_give_the_picture_of_their_file(detector, tmp_path, mode):
    from PIL import Image

    gray = images(1)[0][:, :, 0].astype(np.uint16) * 257  # 8-bit levels, which both 16-bit scalings keep exactly
    path = tmp_path / "gray16.png"
    cv2.imwrite(str(path), gray)
    from_path = detector.predict(path)
    with Image.open(path) as opened:
        pil = opened if mode == "I;16" else Image.fromarray(np.asarray(opened).astype(np.int32))
        assert pil.mode == mode
        from_pil = detector.predict(pil)
    assert np.array_equal(from_pil.image, from_path.image)
    assert torch.equal(from_pil.boxes, from_path.boxes) and torch.equal(from_pil.labels, from_path.labels)


def test_a_checkpoint_of_an_unknown_task_is_refused_in_one_sentence(checkpoint, tmp_path):
    state = torch.load(checkpoint, weights_only=True)
    state["task"] = "bogus"
    torch.save(state, tmp_path / "bogus.pt")
    message = r"bogus.pt: the checkpoint's task 'bogus' is unknown; the known tasks are detection, instance, semantic"
    for load in (structured.load, Detector.from_checkpoint, Segmenter.from_checkpoint):
        with pytest.raises(ValueError, match=message):
            load(tmp_path / "bogus.pt")


def test_class_names_or_category_ids_that_do_not_fit_the_model_are_refused_at_load(checkpoint, tmp_path):
    state = torch.load(checkpoint, weights_only=True)
    torch.save({**state, "class_names": ["a"]}, tmp_path / "few_names.pt")
    expected = (r"class_names has 1 name but the model has 3 classes \(model.num_classes\); expected 4 names: "
                r"the background \('__background__'\) first, then one per class")
    with pytest.raises(ValueError, match="few_names.pt: " + expected):
        Detector.from_checkpoint(tmp_path / "few_names.pt")
    with pytest.raises(ValueError, match="^" + expected):
        Detector.from_config(RECIPE, class_names=["a"])
    torch.save({**state, "category_ids": [3, 7]}, tmp_path / "few_ids.pt")
    with pytest.raises(ValueError, match=r"few_ids.pt: category_ids has 2 ids but the model has 3 classes; "
                                         r"expected one id per class, none for the background"):
        structured.load(tmp_path / "few_ids.pt")


def test_from_config_takes_the_classes_of_a_weights_checkpoint(detector, checkpoint, tmp_path):
    state = torch.load(checkpoint, weights_only=True)
    torch.save({**state, "category_ids": [3, 7, 11]}, tmp_path / "coco_ids.pt")
    loaded = Detector.from_config(RECIPE, weights=tmp_path / "coco_ids.pt", optimize=False)
    assert loaded.class_names == CLASS_NAMES and loaded.category_ids == [3, 7, 11]
    renamed = Detector.from_config(RECIPE, weights=tmp_path / "coco_ids.pt", class_names=["bg", "x", "y", "z"])
    assert renamed.class_names == ["bg", "x", "y", "z"] and renamed.category_ids is None
    torch.save(detector.model.state_dict(), tmp_path / "state_dict.pt")
    plain = Detector.from_config(RECIPE, weights=tmp_path / "state_dict.pt")
    assert plain.class_names == ["__background__", "class1", "class2", "class3"] and plain.category_ids is None


def test_explain_on_a_list_explains_each_image(detector, segmenter):
    first, second = images(2)
    for predictor, options in ((detector, {"limit": 1}), (segmenter, {"class_name": "a"})):
        explained = predictor.explain([first, second], **options)
        assert isinstance(explained, list) and len(explained) == 2
        for image, explanations in zip((first, second), explained, strict=True):
            single = predictor.explain(image, **options)
            assert len(explanations) == len(single) == 1
            assert explanations[0].value == pytest.approx(single[0].value)
        assert predictor.explain([], **options) == []


@pytest.mark.parametrize(("options", "message"), [
    ({"score_threshold": 1.5}, r"score_threshold \(--score-thr\) must be a number in \[0, 1\], got 1.5"),
    ({"limit": 0}, r"limit \(--limit\) must be an integer >= 1, got 0"),
])
def test_explain_checks_its_threshold_and_limit(detector, segmenter, options, message):
    for predictor in (detector, segmenter):
        with pytest.raises(ValueError, match=message):
            predictor.explain(images(1)[0], **options)


def test_thresholds_classes_and_image_ids_of_any_natural_kind_are_taken(detector, segmenter):
    image = images(1)[0]
    expected = detector.predict(image, score_threshold=0.3, classes=["disc"])
    for threshold in (np.float32(0.3), torch.tensor(0.3)):
        kept = detector.predict(image, score_threshold=threshold, classes="disc")
        assert torch.equal(kept.boxes, expected.boxes) and set(kept.names) <= {"disc"}
    assert torch.equal(detector.predict(image, classes=1).labels.unique(), torch.tensor([1]))
    background = r"classes: '__background__' \(index 0\) is the background, which predictions do not hold; " \
                 r"choose among the classes 1 to 3 \(disc, block, wedge\)"
    for classes in ([0], ["__background__"], 0):
        with pytest.raises(ValueError, match=background):
            detector.predict(image, classes=classes)
    with pytest.raises(ValueError, match=r"'__background__' \(index 0\) is the background"):
        segmenter.predict(image, classes=[0])
    result = detector.predict(image)
    with pytest.raises(ValueError, match=r"score_threshold \(--score-thr\) must be a number in \[0, 1\], got 2.0"):
        result.filter(2.0)
    with pytest.raises(ValueError, match=background):
        result.filter(classes=["__background__"])
    with pytest.raises(ValueError, match=r"image_id must be an integer \(the COCO image id\), got 'a'"):
        result.to_coco(image_id="a")
    assert {entry["image_id"] for entry in result.to_coco(image_id=np.int64(4))} == {4}
    assert repr(result.filter(classes=[])) == "DetectionResult(<ndarray>: 0 detections: nothing)"


def test_save_txt_gives_a_detection_whose_mask_has_no_contour_its_box(tmp_path):
    masks = torch.zeros(2, 40, 50)
    masks[0, 5:20, 10:30] = 1.0  # a real mask; the second is empty
    result = structured.api.DetectionResult(torch.tensor([[10.0, 5, 30, 20], [0, 10, 25, 30]]), torch.ones(2),
                                            torch.tensor([1, 2]), ["__background__", "a", "b"],
                                            np.zeros((40, 50, 3), np.uint8), masks)
    lines = result.save_txt(tmp_path / "x.txt").read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith("0 ")
    assert lines[1] == "1 0.000000 0.250000 0.500000 0.250000 0.500000 0.750000 0.000000 0.750000"


def test_a_video_in_the_output_folder_is_not_taken_for_an_overwritten_input(tmp_path):
    from structured.inference import check_inputs_are_kept

    video, picture = tmp_path / "clip.mp4", tmp_path / "photo.jpg"
    check_inputs_are_kept([video], output_names([video]), tmp_path)  # writes clip_annotated.mp4 beside it
    with pytest.raises(ValueError, match=r"holds inputs that the outputs would overwrite \(.*photo\.jpg\)"):
        check_inputs_are_kept([video, picture], output_names([video, picture]), tmp_path)
