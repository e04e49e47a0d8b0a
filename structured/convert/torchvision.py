"""Load torchvision detection checkpoints into our models.

``convert_faster_rcnn(state_dict, model_name)`` renames the keys of a torchvision ``fasterrcnn_*`` or
``maskrcnn_*`` state dict (``fasterrcnn_resnet50_fpn``, ``fasterrcnn_mobilenet_v3_large_fpn``,
``..._320_fpn``, ``fasterrcnn_resnet50_fpn_v2``, ``maskrcnn_resnet50_fpn`` and ``_v2``) to those of the matching registered recipe; values are
untouched. The mapping:

- ``backbone.*`` -> ``backbone.*`` / ``neck.*`` by ``structured.backbones.torchvision_keys`` (trunk keys
  keep torchvision's module names; FPN block ``i`` goes to the recipe's i-th backbone level);
- ``rpn.head.conv.i.0`` (or the older ``rpn.head.conv``) -> ``rpn.head.conv.<2i>``,
  ``cls_logits`` -> ``objectness``, ``bbox_pred`` -> ``deltas``;
- ``roi_heads.box_head.*`` unchanged, ``roi_heads.box_predictor.*`` -> ``roi_heads.predictor.*``;
- ``roi_heads.mask_head.*`` -> ``mask_branch.head.*`` (the same block layout),
  ``roi_heads.mask_predictor.conv5_mask`` / ``mask_fcn_logits`` -> ``mask_branch.predictor.upsample`` /
  ``logits``.

torchvision's SSDs (``convert_ssd``: ``ssd300_vgg16`` -> ``ssd300_vgg16``, ``ssdlite320_mobilenet_v3_large``
-> ``ssdlite320_mobilenet_v3_large``):

- VGG: ``backbone.features.i`` (conv1_1..conv4_3) -> ``backbone.trunk.features.i``, ``backbone.extra.0.j``
  (pool4..conv5_3) -> ``backbone.trunk.features.<23 + j>``, ``backbone.extra.0.7.1`` / ``.3`` (fc6 / fc7)
  -> ``backbone.trunk.fc.0`` / ``.2``, ``backbone.scale_weight`` -> ``l2_norms.c3.scale``;
- MobileNetV3: ``backbone.features.0.i`` -> ``backbone.trunk.features.i`` (``i = 13``, the expansion
  of the first stride-32 block, -> ``features.13.block.0``), ``backbone.features.1.0.j`` ->
  ``backbone.trunk.features.13.block.j``, ``backbone.features.1.i`` -> ``backbone.trunk.features.<13 + i>``;
- ``backbone.extra.k`` (after VGG's first) -> ``extras.<k>``, ``head.classification_head.module_list.k`` /
  ``head.regression_head.module_list.k`` -> ``head.classification.k`` / ``head.regression.k``.

A key outside this mapping is an error naming it. ``convert_checkpoint_file`` converts a checkpoint file
and checks it by loading it into the built recipe (``tools/convert_torchvision.py`` is its CLI).
``num_classes_of`` reads the class count (without background) from the predictor (or the SSD head). Batch-norm ``eps`` is
not stored in a checkpoint: torchvision's detection backbones use 1e-5 (our recipes' default, also for
MobileNetV3 whose classifier uses 1e-3), except that its COCO ``fasterrcnn_resnet50_fpn`` and
``maskrcnn_resnet50_fpn`` weights are used with ``eps=0`` (``model.backbone.norm_eps: 0.0``).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

from torch import Tensor
from torch.nn import Module
from torchvision.models._meta import _COCO_CATEGORIES

from structured.backbones.torchvision_keys import torchvision_backbone_key
from structured.backbones.weights import OPTIONAL_KEY_SUFFIXES, WRAPPER_KEYS
from structured.config import model_task
from structured.data.base import numbered_class_names
from structured.detection.faster_rcnn import RECIPES as FASTER_RCNN_RECIPES
from structured.detection.mask_rcnn import RECIPES as MASK_RCNN_RECIPES
from structured.detection.ssd import RECIPES as SSD_RECIPES
from structured.engine.checkpoint import mismatches, save_checkpoint
from structured.io import load_torch_file
from structured.registry import MODELS

TORCHVISION_MODELS = {
    "fasterrcnn_resnet50_fpn": "faster_rcnn_r50_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn": "faster_rcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn": "faster_rcnn_mobilenet_v3_large_320_fpn",
    "fasterrcnn_resnet50_fpn_v2": "faster_rcnn_r50_fpn_v2",
    "maskrcnn_resnet50_fpn": "mask_rcnn_r50_fpn",
    "maskrcnn_resnet50_fpn_v2": "mask_rcnn_r50_fpn_v2",
    "ssd300_vgg16": "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large": "ssdlite320_mobilenet_v3_large",
}
"""torchvision builder name -> our recipe name."""

_RPN_CONV_KEY = re.compile(r"rpn\.head\.conv\.(\d+)\.0\.(weight|bias)")
_FIXED_PREFIXES = (
    ("rpn.head.cls_logits.", "rpn.head.objectness."),
    ("rpn.head.bbox_pred.", "rpn.head.deltas."),
    ("roi_heads.box_head.", "roi_heads.box_head."),
    ("roi_heads.box_predictor.", "roi_heads.predictor."),
    ("roi_heads.mask_head.", "mask_branch.head."),
    ("roi_heads.mask_predictor.conv5_mask.", "mask_branch.predictor.upsample."),
    ("roi_heads.mask_predictor.mask_fcn_logits.", "mask_branch.predictor.logits."),
)
_MASK_BRANCH_PREFIXES = ("roi_heads.mask_head.", "roi_heads.mask_predictor.")
RECIPES = {**FASTER_RCNN_RECIPES, **MASK_RCNN_RECIPES}
"""The R-CNN recipes a torchvision checkpoint can be converted onto (those with an FPN)."""
SSD_MODELS = ("ssd300_vgg16", "ssdlite320_mobilenet_v3_large")
"""The SSD recipes with a torchvision counterpart of the same name."""
VGG16_POOL4 = 23
"""Index of pool4 in torchvision's VGG16 ``features``: where its SSD form splits the trunk."""
MOBILENET_V3_LARGE_ENTRY = 13
"""Index of MobileNetV3-Large's first stride-32 block: where torchvision's SSDlite splits the trunk."""
_SSD_VGG_KEY = re.compile(r"backbone\.(features|extra)\.(\d+)\.(.+)")
_SSD_LITE_KEY = re.compile(r"backbone\.(features|extra)\.(\d+)\.(\d+)\.(.+)")
_SSD_HEAD_KEY = re.compile(r"head\.(classification|regression)_head\.module_list\.(.+)")


def _recipe(model_name: str) -> dict:
    if model_name in SSD_MODELS:
        return SSD_RECIPES[model_name]
    if model_name not in RECIPES:
        raise ValueError(
            f"no torchvision mapping for model {model_name!r}; known: {sorted(TORCHVISION_MODELS.values())}"
        )
    recipe = RECIPES[model_name]
    if recipe["neck"] is None:
        raise ValueError(
            f"{model_name} has no torchvision counterpart (torchvision has no single-level Faster R-CNN)"
        )
    return recipe


def _rename(key: str, trunk: str, levels: tuple[str, ...]) -> str:
    if key.startswith("backbone."):
        part, ours = torchvision_backbone_key(key[len("backbone.") :], trunk, levels)
        return f"{part}.{ours}"
    conv = _RPN_CONV_KEY.fullmatch(key)
    if conv:
        return f"rpn.head.conv.{2 * int(conv.group(1))}.{conv.group(2)}"
    if key in ("rpn.head.conv.weight", "rpn.head.conv.bias"):
        return "rpn.head.conv.0." + key.rsplit(".", 1)[1]
    for old, new in _FIXED_PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    raise KeyError(f"checkpoint key {key!r} has no counterpart in our Faster R-CNN / Mask R-CNN")


def convert_faster_rcnn(state_dict: Mapping[str, Tensor], model_name: str) -> OrderedDict[str, Tensor]:
    """A torchvision Faster R-CNN or Mask R-CNN ``state_dict`` with its keys renamed for our recipe ``model_name``."""
    recipe = _recipe(model_name)
    if model_name not in MASK_RCNN_RECIPES:
        mask_keys = [key for key in state_dict if key.startswith(_MASK_BRANCH_PREFIXES)]
        if mask_keys:
            raise KeyError(f"checkpoint key {mask_keys[0]!r} belongs to a mask branch, which {model_name} has not; "
                           f"convert onto one of {sorted(MASK_RCNN_RECIPES)}")
    trunk = "mobilenet" if recipe["backbone"]["name"].startswith("mobilenet") else "resnet"
    levels = tuple(recipe["backbone"]["out_levels"])
    return OrderedDict((_rename(key, trunk, levels), value) for key, value in state_dict.items())


def _vgg_ssd_key(kind: str, index: int, rest: str) -> str:
    if kind == "features":
        return f"backbone.trunk.features.{index}.{rest}"
    if index > 0:
        return f"extras.{index - 1}.{rest}"
    position, _, param = rest.partition(".")
    if int(position) < 7:
        return f"backbone.trunk.features.{VGG16_POOL4 + int(position)}.{param}"
    fc_layer, _, param = param.partition(".")
    return f"backbone.trunk.fc.{int(fc_layer) - 1}.{param}"


def _mobilenet_ssd_key(kind: str, part: int, index: int, rest: str) -> str:
    if kind == "extra":
        return f"extras.{part}.{index}.{rest}"
    entry = MOBILENET_V3_LARGE_ENTRY
    if part == 0:
        return f"backbone.trunk.features.{entry}.block.0.{rest}" if index == entry else \
            f"backbone.trunk.features.{index}.{rest}"
    if index == 0:
        return f"backbone.trunk.features.{entry}.block.{rest}"
    return f"backbone.trunk.features.{entry + index}.{rest}"


def _rename_ssd(key: str, model_name: str) -> str:
    head = _SSD_HEAD_KEY.fullmatch(key)
    if head:
        return f"head.{head.group(1)}.{head.group(2)}"
    if model_name == "ssd300_vgg16":
        if key == "backbone.scale_weight":
            return "l2_norms.c3.scale"
        vgg = _SSD_VGG_KEY.fullmatch(key)
        if vgg:
            return _vgg_ssd_key(vgg.group(1), int(vgg.group(2)), vgg.group(3))
    else:
        lite = _SSD_LITE_KEY.fullmatch(key)
        if lite:
            return _mobilenet_ssd_key(lite.group(1), int(lite.group(2)), int(lite.group(3)), lite.group(4))
    raise KeyError(f"checkpoint key {key!r} has no counterpart in our {model_name}")


def convert_ssd(state_dict: Mapping[str, Tensor], model_name: str) -> OrderedDict[str, Tensor]:
    """A torchvision ``ssd300_vgg16`` or ``ssdlite320_mobilenet_v3_large`` ``state_dict`` renamed for our recipe."""
    if model_name not in SSD_MODELS:
        raise ValueError(f"no torchvision SSD mapping for model {model_name!r}; known: {list(SSD_MODELS)}")
    return OrderedDict((_rename_ssd(key, model_name), value) for key, value in state_dict.items())


def convert_state_dict(state_dict: Mapping[str, Tensor], model_name: str) -> OrderedDict[str, Tensor]:
    """A torchvision detection ``state_dict`` renamed for our recipe ``model_name`` (any family converted here)."""
    if model_name in SSD_MODELS:
        return convert_ssd(state_dict, model_name)
    return convert_faster_rcnn(state_dict, model_name)


def num_classes_of(state_dict: Mapping[str, Tensor]) -> int:
    """Object classes (without background) of a torchvision Faster R-CNN or SSD state dict."""
    key = "roi_heads.box_predictor.cls_score.weight"
    if key in state_dict:
        return int(state_dict[key].shape[0]) - 1
    ssd_key = "head.regression_head.module_list.0."
    last_weights = [k for k in state_dict if k.startswith(ssd_key) and k.endswith("weight")][-1:]
    if last_weights:  # the first map's last layer: 4 deltas and C + 1 logits per default box
        boxes_per_cell = state_dict[last_weights[0]].shape[0] // 4
        classification = state_dict[last_weights[0].replace("regression", "classification")]
        return int(classification.shape[0]) // boxes_per_cell - 1
    raise ValueError(f"not a torchvision Faster R-CNN or SSD state dict: no {key!r} or {ssd_key!r}")


def recipe_name(name: str) -> str:
    """Our recipe name for ``name``, which may be ours or torchvision's (``fasterrcnn_resnet50_fpn``)."""
    name = TORCHVISION_MODELS.get(name, name)
    _recipe(name)
    return name


def convert_checkpoint_file(
    source: str | Path, destination: str | Path, model_name: str, norm_eps: float | None = None
) -> dict:
    """Convert a torchvision Faster R-CNN, Mask R-CNN or SSD checkpoint file into ours, checked by loading it into the model.

    ``source`` holds a state dict, or one wrapped as ``{"model": ...}`` / ``{"state_dict": ...}`` (as training
    scripts save them). Writes a checkpoint in the training format, ``{"model": state_dict, "config": {"model":
    {"name": ..., "num_classes": ...}}, "class_names": [...], "task": ...}``, atomically to the file
    ``destination`` (a folder, or ``source`` itself, is refused), so that ``Detector.from_checkpoint``,
    ``tools/eval.py --weights`` and ``tools/train_det.py --weights`` take it as it is. ``norm_eps`` (>= 0)
    overrides the recipe's batch-norm eps (0.0 for torchvision's COCO ``fasterrcnn_resnet50_fpn`` weights),
    written as the recipe's ``backbone: {norm_eps: ...}`` (merged over the registered recipe's backbone).
    A state dict of another model, our own checkpoint, or keys that do not fit raise ``ValueError`` naming
    ``source`` and the keys. Returns the written dict.
    """
    name = recipe_name(model_name)
    _check_destination(Path(source), Path(destination))
    if norm_eps is not None and not norm_eps >= 0:
        raise ValueError(f"norm_eps must be a number >= 0 (0 for torchvision's COCO ResNet-50 weights), got {norm_eps}")
    state_dict = _torchvision_state_dict(load_torch_file(source, "torchvision checkpoint"), source)
    try:
        converted = convert_state_dict(state_dict, name)
    except KeyError as error:
        unmapped = [key for key in state_dict if not _maps(key, name)]
        hint = "; it looks like a state dict of another model" if 2 * len(unmapped) > len(state_dict) else ""
        raise ValueError(f"{source}: {error.args[0]}; {len(unmapped)} of its {len(state_dict)} keys have no "
                         f"counterpart in {model_name} (e.g. {', '.join(unmapped[:5])}){hint}") from None
    try:
        model_section: dict = {"name": name, "num_classes": num_classes_of(state_dict)}
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None
    if norm_eps is not None:
        model_section["backbone"] = {"norm_eps": float(norm_eps)}
    model = MODELS.build(name, **{key: value for key, value in model_section.items() if key != "name"})
    _load_converted(model, converted, f"{source} does not fit {model_name}")
    checkpoint = {"model": model.state_dict(), "config": {"model": model_section},
                  "class_names": class_names_for(model_section["num_classes"]),
                  "task": model_task({"model": model_section})}
    save_checkpoint(checkpoint, destination)
    return checkpoint


def _check_destination(source: Path, destination: Path) -> None:
    if destination.is_dir():
        raise IsADirectoryError(f"destination {destination} is a folder; give the checkpoint file to write "
                                f"(e.g. {destination / 'converted.pt'})")
    if destination.exists() and source.exists() and destination.samefile(source):
        raise ValueError(f"destination {destination} is the source checkpoint; give another file to write")


def _torchvision_state_dict(loaded: object, source: str | Path) -> Mapping[str, Tensor]:
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{source}: expected a state dict (mapping of tensors), got {type(loaded).__name__}")
    if "config" in loaded and "model" in loaded:
        raise ValueError(f"{source} is already a structured checkpoint; use it as it is (Detector.from_checkpoint, "
                         "tools/eval.py --weights, tools/train_det.py --weights)")
    for wrapper in WRAPPER_KEYS:
        if isinstance(loaded.get(wrapper), Mapping):
            return loaded[wrapper]
    return loaded


def _maps(key: str, model_name: str) -> bool:
    try:
        convert_state_dict({key: Tensor()}, model_name)
    except KeyError:
        return False
    return True


def _load_converted(model: Module, converted: Mapping[str, Tensor], failure: str) -> None:
    """Load ``converted`` into ``model``, less the counters our frozen batch norms lack (``OPTIONAL_KEY_SUFFIXES``);
    ``ValueError`` starting with ``failure`` when it does not fit."""
    expected = model.state_dict()
    kept = {key: value for key, value in converted.items()
            if key in expected or not key.endswith(OPTIONAL_KEY_SUFFIXES)}
    problems = mismatches(expected, kept)
    if problems:
        raise ValueError(f"{failure} after conversion: " + "; ".join(problems))
    model.load_state_dict(kept)


def class_names_for(num_classes: int) -> list[str]:
    """COCO's names (torchvision's 90-class label space) when the count is COCO's, else numbered names."""
    if num_classes + 1 == len(_COCO_CATEGORIES):
        return list(_COCO_CATEGORIES)
    return numbered_class_names(num_classes)
