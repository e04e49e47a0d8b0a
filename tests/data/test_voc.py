"""Pascal VOC: both layouts, difficult flag, classes, safe XML parsing, palette segmentation masks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from structured.data.loading import write_palette_png
from structured.data.synthetic import SHAPE_CLASSES
from structured.data.voc import VOCDetection, VOCSegmentation, natural_key, parse_voc_xml

ENTITY_BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<annotation><filename>&lol3;</filename></annotation>
"""
EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<annotation><filename>&secret;</filename></annotation>
"""


def _object(name: str, box: tuple[int, int, int, int], difficult: int = 0) -> str:
    xmin, ymin, xmax, ymax = box
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin>"
            f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def _flat_dataset(root: Path, source: Path, objects_per_image: dict[str, str]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for stem, objects in objects_per_image.items():
        shutil.copy(source / "JPEGImages" / "000001.jpg", root / "images" / f"{stem}.jpg")
        xml = (f"<annotation><filename>{stem}.jpg</filename><size><width>128</width><height>128</height>"
               f"<depth>3</depth></size>{objects}</annotation>")
        (root / "annotations" / f"{stem}.xml").write_text(xml)
    return root


def test_devkit_split_matches_the_coco_boxes(synthetic_root: Path) -> None:
    dataset = VOCDetection(synthetic_root, split="train", class_names=SHAPE_CLASSES)
    coco = json.loads((synthetic_root / "annotations" / "instances_train.json").read_text())
    assert len(dataset) == len(coco["images"]) == 12
    assert dataset.class_names == ["__background__", *SHAPE_CLASSES]
    for index, image in enumerate(coco["images"]):
        tensor, target = dataset[index]
        assert target["image_id"] == image["file_name"][:-4] and tensor.shape == (3, 128, 128)
        annotations = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        expected = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations)]).reshape(-1, 4)
        np.testing.assert_allclose(target["boxes"].numpy(), expected, atol=0.5)
        small = (expected[:, 2:] - expected[:, :2]).min(axis=1, initial=99) < 10
        assert target["difficult"].tolist() == small.tolist()


def test_flat_layout_natural_order_discovered_classes_and_difficult(tmp_path: Path, synthetic_root: Path) -> None:
    root = _flat_dataset(tmp_path / "flat", synthetic_root, {
        "img-10": _object("zebra", (1, 1, 10, 10)),
        "img-2": _object("ant", (5, 6, 50, 60), difficult=1) + _object("zebra", (20, 20, 40, 40)),
        "img-1": "",
    })
    dataset = VOCDetection(root)
    assert [r.image_id for r in dataset.records] == ["img-1", "img-2", "img-10"]
    assert dataset.class_names == ["__background__", "ant", "zebra"]
    _, target = dataset[1]
    torch.testing.assert_close(target["boxes"], torch.tensor([[4.0, 5.0, 50.0, 60.0], [19.0, 19.0, 40.0, 40.0]]))
    assert target["labels"].tolist() == [1, 2] and target["difficult"].tolist() == [True, False]
    assert dataset[0][1]["boxes"].shape == (0, 4)
    easy = VOCDetection(root, keep_difficult=False, skip_empty=True)
    assert [len(r.labels) for r in easy.records] == [1, 1]
    assert natural_key("a-2") < natural_key("a-10")


def test_unknown_class_name_error_lists_known_classes(tmp_path: Path, synthetic_root: Path) -> None:
    root = _flat_dataset(tmp_path / "flat", synthetic_root, {"a": _object("unicorn", (1, 1, 5, 5))})
    with pytest.raises(ValueError, match=r"a\.xml: unknown class name 'unicorn'; known: \['circle'"):
        VOCDetection(root, class_names=SHAPE_CLASSES)


def test_inverted_box_is_dropped_with_a_counted_warning(tmp_path: Path, synthetic_root: Path) -> None:
    root = _flat_dataset(tmp_path / "flat", synthetic_root, {
        "a": _object("cat", (50, 10, 20, 40)) + _object("cat", (1, 1, 200, 30))})
    with pytest.warns(UserWarning, match="1 clipped_box, 1 degenerate_box"):
        dataset = VOCDetection(root)
    torch.testing.assert_close(dataset[0][1]["boxes"], torch.tensor([[0.0, 0.0, 128.0, 30.0]]))


@pytest.mark.parametrize(("text", "message"), [
    (ENTITY_BOMB, "refused for safety"),
    (EXTERNAL_ENTITY, "refused for safety"),
    ("<annotation><object><name>cat</name></annotation>", r"malformed XML at line 1 column"),
    ("<annotation><object><name>cat</name><bndbox><xmin>a</xmin></bndbox></object></annotation>", "<xmin> must be a number"),
    ("<annotation><object><name>cat</name></object></annotation>", "no <bndbox>"),
    ("<html/>", "expected <annotation>"),
])
def test_bad_xml_gives_a_clear_error_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        parse_voc_xml(path)
    assert str(path) in str(error.value)


def test_not_a_voc_folder_and_missing_split(tmp_path: Path, synthetic_root: Path) -> None:
    with pytest.raises(ValueError, match="not a VOC dataset"):
        VOCDetection(tmp_path)
    with pytest.raises(ValueError, match=r"available splits: \['train', 'val'\]"):
        VOCDetection(synthetic_root, split="test")


def test_segmentation_palette_masks_with_ignore(tmp_path: Path, synthetic_root: Path) -> None:
    dataset = VOCSegmentation(synthetic_root, split="val", class_names=SHAPE_CLASSES)
    assert len(dataset) == 4 and dataset.class_names[0] == "__background__"
    image, target = dataset[0]
    assert target["semantic"].shape == image.shape[1:] and target["semantic"].dtype == torch.int64
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    shutil.copy(synthetic_root / "JPEGImages" / "000001.jpg", root / "JPEGImages" / "x.jpg")
    class_map = np.zeros((128, 128), np.uint8)
    class_map[10:20, 10:30] = 2
    class_map[9, 10:30] = 255
    write_palette_png(root / "SegmentationClass" / "x.png", class_map)
    _, target = VOCSegmentation(root, class_names=("a", "b"))[0]
    np.testing.assert_array_equal(target["semantic"].numpy(), class_map)
    class_map[0, 0] = 7
    write_palette_png(root / "SegmentationClass" / "x.png", class_map)
    with pytest.raises(ValueError, match=r"x\.png: class indices \[7\] outside 0\.\.2"):
        VOCSegmentation(root, class_names=("a", "b"))[0]


def test_asking_voc_for_instance_masks_is_a_clear_error(synthetic_root):
    dataset = VOCDetection(synthetic_root, split="train", class_names=SHAPE_CLASSES)
    dataset.with_masks = True
    with pytest.raises(ValueError, match=r"VOCDetection has no instance masks \(.*\.jpg\)"):
        dataset[0]


def _exif_rotated_dataset(root: Path) -> Path:
    """A flat VOC set of one 40x20 (WxH) JPEG whose EXIF orientation 6 turns it to 20x40, its XML saying 40x20."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), (90, 120, 30)).save(root / "images" / "a.jpg", exif=exif)
    (root / "annotations" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>40</width><height>20</height></size>"
        f"{_object('cat', (5, 5, 35, 15))}</annotation>")
    return root


def test_an_exif_rotated_image_is_a_bad_sample_saying_what_to_do_for_either_frame(tmp_path: Path) -> None:
    dataset = VOCDetection(_exif_rotated_dataset(tmp_path / "voc"))
    with pytest.raises(ValueError, match=r"a\.jpg: the image decodes as 20x40 \(WxH\) but its annotation declares "
                                         r"40x20, the size of its stored pixels: the file's EXIF orientation rotates "
                                         r"it\. If the labels were drawn on the stored \(unrotated\) pixels, remove "
                                         r"the EXIF orientation tag from the file; if on the upright picture, declare "
                                         r"its size 20x40 in the annotation"):
        dataset[0]
    skipping = VOCDetection(tmp_path / "voc", skip_bad=True)
    assert len(skipping) == 0 and skipping.report.counts["size_mismatch"] == 1


def test_given_classes_fix_the_order_and_an_object_of_another_class_names_its_file(
        tmp_path: Path, synthetic_root: Path) -> None:
    root = _flat_dataset(tmp_path / "flat", synthetic_root, {
        "a": _object("raccoon ", (1, 1, 5, 5)), "b": _object("dog", (1, 1, 5, 5))})
    dataset = VOCDetection(root, class_names=["raccoon", "dog", "cat"])
    assert dataset.class_names == ["__background__", "raccoon", "dog", "cat"]
    assert [record.labels.tolist() for record in dataset.records] == [[1], [2]]
    with pytest.raises(ValueError, match=r"b\.xml: unknown class name 'dog'; known: \['raccoon'\]"):
        VOCDetection(root, class_names=["raccoon"])


def test_discovered_names_differing_only_in_case_are_reported(tmp_path: Path, synthetic_root: Path) -> None:
    root = _flat_dataset(tmp_path / "flat", synthetic_root, {
        "a": _object("Raccoon", (1, 1, 5, 5)), "b": _object("raccoon", (1, 1, 5, 5))})
    with pytest.warns(UserWarning, match=r"class names \['Raccoon', 'raccoon'\] differ only in letter case"):
        dataset = VOCDetection(root)
    assert dataset.report.counts["similar_class_names"] == 1
