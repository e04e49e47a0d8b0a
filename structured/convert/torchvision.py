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

A key outside this mapping is an error naming it. ``convert_checkpoint_file`` converts a checkpoint file
and checks it by loading it into the built recipe (``tools/convert_torchvision.py`` is its CLI).
``num_classes_of`` reads the class count (without background) from the predictor. Batch-norm ``eps`` is
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
from torchvision.models._meta import _COCO_CATEGORIES

from structured.backbones.torchvision_keys import torchvision_backbone_key
from structured.config import model_task
from structured.data.base import numbered_class_names
from structured.detection.faster_rcnn import RECIPES as FASTER_RCNN_RECIPES
from structured.detection.mask_rcnn import RECIPES as MASK_RCNN_RECIPES
from structured.engine.checkpoint import save_checkpoint
from structured.io import load_torch_file
from structured.registry import MODELS

TORCHVISION_MODELS = {
    "fasterrcnn_resnet50_fpn": "faster_rcnn_r50_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn": "faster_rcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn": "faster_rcnn_mobilenet_v3_large_320_fpn",
    "fasterrcnn_resnet50_fpn_v2": "faster_rcnn_r50_fpn_v2",
    "maskrcnn_resnet50_fpn": "mask_rcnn_r50_fpn",
    "maskrcnn_resnet50_fpn_v2": "mask_rcnn_r50_fpn_v2",
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
"""The recipes a torchvision checkpoint can be converted onto (those with an FPN)."""


def _recipe(model_name: str) -> dict:
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


def num_classes_of(state_dict: Mapping[str, Tensor]) -> int:
    """Object classes (without background) of a torchvision Faster R-CNN state dict's box predictor."""
    key = "roi_heads.box_predictor.cls_score.weight"
    if key not in state_dict:
        raise KeyError(f"not a torchvision Faster R-CNN state dict: no {key!r}")
    return int(state_dict[key].shape[0]) - 1


def recipe_name(name: str) -> str:
    """Our recipe name for ``name``, which may be ours or torchvision's (``fasterrcnn_resnet50_fpn``)."""
    name = TORCHVISION_MODELS.get(name, name)
    _recipe(name)
    return name


def convert_checkpoint_file(
    source: str | Path, destination: str | Path, model_name: str, norm_eps: float | None = None
) -> dict:
    """Convert a torchvision Faster R-CNN checkpoint file into ours, checked by loading it into the model.

    Writes a checkpoint in the training format, ``{"model": state_dict, "config": {"model": {"name": ...,
    "num_classes": ...}}, "class_names": [...], "task": ...}``, atomically to ``destination``, so that
    ``Detector.from_checkpoint``, ``tools/eval.py --weights`` and ``tools/train_det.py --weights`` take
    it as it is. ``norm_eps`` overrides the recipe's batch-norm eps (0.0 for torchvision's COCO
    ``fasterrcnn_resnet50_fpn`` weights), written as the recipe's ``backbone: {norm_eps: ...}`` (merged
    over the registered recipe's backbone). Returns the written dict.
    """
    name = recipe_name(model_name)
    state_dict = load_torch_file(source, "torchvision checkpoint")
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"{source}: expected a state dict (mapping of tensors), got {type(state_dict).__name__}"
        )
    model_section: dict = {"name": name, "num_classes": num_classes_of(state_dict)}
    if norm_eps is not None:
        model_section["backbone"] = {"norm_eps": float(norm_eps)}
    converted = convert_faster_rcnn(state_dict, name)
    model = MODELS.build(name, **{key: value for key, value in model_section.items() if key != "name"})
    try:
        model.load_state_dict(converted)
    except RuntimeError as error:
        raise ValueError(f"{source}: does not fit {name} after conversion: {error}") from error
    checkpoint = {"model": model.state_dict(), "config": {"model": model_section},
                  "class_names": class_names_for(model_section["num_classes"]),
                  "task": model_task({"model": model_section})}
    save_checkpoint(checkpoint, destination)
    return checkpoint


def class_names_for(num_classes: int) -> list[str]:
    """COCO's names (torchvision's 90-class label space) when the count is COCO's, else numbered names."""
    if num_classes + 1 == len(_COCO_CATEGORIES):
        return list(_COCO_CATEGORIES)
    return numbered_class_names(num_classes)
