"""Backbones from timm: ``timm:<model name>`` for any timm model that offers feature maps.

Contract: ``BACKBONES.get("timm:xception41")`` resolves any name of ``timm.list_models()`` (the registry's
``timm:`` prefix; the names are not listed by ``BACKBONES.names()``) to ``build_timm_backbone`` over that
model, a ``Backbone`` with the options every family has (``out_levels``, ``frozen_stages``, ``norm_layer``,
``norm_eps``, ``pretrained``, ``classifier``, ``num_classes``). timm is imported only when such a name is
looked up; without it the lookup is a ``MissingExtraError`` that says how to install the ``timm`` extra.

The trunk is timm's untrained classification model itself (timm's module names, so a timm state dict
maps by the prefix ``trunk.``): its ``forward_intermediates`` gives the maps of its ``feature_info``, the
taps of ``timm.create_model(name, features_only=True)``. Each tap is named ``c<k>`` by its reduction
``2**k``; when several taps share a reduction the last one is the level. Without ``classifier`` the model
is built without its head and pruned after its last tap (``prune_intermediate_layers``); with it the
whole model stays and ``classify`` is its own forward.

``frozen_stages=k`` freezes the modules that finish computing before the tap of stride ``2**k``, found
from the model's top-level modules in order (descending into ``nn.Sequential``s that hold taps): a module
that is itself a tap belongs to its level; one that holds a tap deeper inside (Xception's taps are the
activation that starts the next block) belongs to the next level, and the tap's own module to the tap's.
``pretrained`` is a local file holding a timm classification state dict (timm's key names; or, as for every
family, a backbone's state dict or one of our checkpoints with this backbone), checked key by key by
``weights.py``; timm's hub downloads are not used.
"""

from __future__ import annotations

import difflib
import functools
import importlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from torch import Tensor, nn

from structured.backbones.base import (
    MAX_LEVEL,
    Backbone,
    Step,
    check_backbone_input,
    convert_trunk_norm_layers,
    finish_backbone,
    level_name,
)
from structured.backbones.weights import load_pretrained
from structured.registry import BACKBONES, MissingExtraError, UnknownNameError

PREFIX = "timm:"
INSTALL_HINT = "pip install 'structured[timm]' (or pip install -e '.[timm]' in a checkout)"
MAX_CLOSE_MATCHES = 5


@dataclass(frozen=True)
class Tap:
    """One feature map of a timm model: its module (timm's dotted name), index in ``feature_info``, stride,
    channels and the level it is."""

    module: str
    index: int
    stride: int
    channels: int
    level: str


class TimmBackbone(Backbone):
    """A ``Backbone`` over a timm model's ``forward_intermediates``; see the module docstring.

    ``taps``: the model's feature maps that are levels, in increasing stride order.
    """

    def __init__(self, trunk: nn.Module, steps: Sequence[Step], taps: Sequence[Tap],
                 out_levels: Sequence[str]) -> None:
        super().__init__(trunk, steps, {tap.level: tap.channels for tap in taps}, out_levels)
        self.tap_levels = [tap.level for tap in taps]
        self.tap_indices = [tap.index for tap in taps]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """Features of ``x`` [B,3,H,W]: the requested levels in increasing stride order."""
        check_backbone_input(x)
        maps = self.trunk.forward_intermediates(x, indices=self.tap_indices, intermediates_only=True)
        return OrderedDict((level, feature) for level, feature in zip(self.tap_levels, maps, strict=True)
                           if level in self.out_channels)


def import_timm() -> ModuleType:
    """The ``timm`` package; ``MissingExtraError`` with the install command when it is not installed."""
    try:
        return importlib.import_module("timm")
    except ModuleNotFoundError as error:
        if error.name != "timm":
            raise
        raise MissingExtraError(
            f"{PREFIX}<model> backbones need the timm package, which is not installed: {INSTALL_HINT}"
        ) from None


def resolve_timm_name(model_name: str) -> Callable[..., TimmBackbone]:
    """The builder of backbone ``timm:<model_name>``; an unknown name lists timm's closest names."""
    timm = import_timm()
    if not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=MAX_CLOSE_MATCHES)
        hint = f"closest: {', '.join(close)}" if close else "timm.list_models() lists them"
        raise UnknownNameError(f"unknown timm model {model_name!r} in backbone {PREFIX}{model_name}; {hint}")
    return functools.partial(build_timm_backbone, model_name)


def build_timm_backbone(
    model_name: str,
    *,
    out_levels: Sequence[str] | None = None,
    frozen_stages: int = 0,
    norm_layer: str = "bn",
    norm_eps: float | None = None,
    pretrained: str | None = None,
    classifier: bool = False,
    num_classes: int = 1000,
) -> TimmBackbone:
    """Backbone ``timm:<model_name>`` with the options of ``base.build_backbone`` (same meanings).

    ``pretrained``: a path to a timm classification state dict of ``model_name`` (checked key by key; its
    classifier is ignored unless ``classifier``). ``classifier``: keep the classification head with
    ``num_classes`` outputs for ``classify``.
    """
    arch = PREFIX + model_name
    model = import_timm().create_model(model_name, pretrained=False, num_classes=num_classes if classifier else 0)
    if pretrained is not None:
        load_timm_checkpoint(model, arch, pretrained, classifier)
    taps = level_taps(arch, model.feature_info)
    if not classifier:
        model.prune_intermediate_layers([tap.index for tap in taps], prune_norm=True)
    convert_trunk_norm_layers(model, arch, norm_layer, norm_eps)
    backbone = TimmBackbone(model, trunk_steps(arch, model, taps), taps, out_levels or [tap.level for tap in taps])
    return finish_backbone(backbone, classifier, frozen_stages)


def load_timm_checkpoint(model: nn.Module, arch: str, pretrained: str, classifier: bool) -> None:
    """Load the timm classification state dict in file ``pretrained`` into ``model``, checked key by key."""
    if pretrained == "imagenet" or pretrained.startswith("imagenet:"):
        raise ValueError(
            f"{arch}: pretrained={pretrained!r} would download timm's weights, which structured does not do; "
            "save a timm model's state dict on a machine with network access (torch.save(timm.create_model("
            "name, pretrained=True).state_dict(), path)) and pass that path as pretrained"
        )
    head = model.pretrained_cfg.get("classifier") or ()
    head_prefixes = () if classifier else tuple(f"{name}." for name in ([head] if isinstance(head, str) else head))
    load_pretrained(model, pretrained, arch=arch, ignored_prefixes=head_prefixes)


def level_taps(arch: str, feature_info: Sequence[Mapping[str, Any]]) -> list[Tap]:
    """The taps of ``feature_info`` that are levels: the last one at each stride, in increasing stride order."""
    by_level: dict[str, Tap] = {}
    for index, info in enumerate(feature_info):
        stride = int(info["reduction"])
        if stride not in {2**k for k in range(1, MAX_LEVEL + 1)}:
            raise ValueError(f"{arch}: feature {info['module']!r} has stride {stride}; a backbone's levels c1..c5 "
                             f"have strides 2..{2**MAX_LEVEL}")
        level = level_name(stride)
        by_level[level] = Tap(str(info["module"]), index, stride, int(info["num_chs"]), level)
    return sorted(by_level.values(), key=lambda tap: tap.stride)


def trunk_steps(arch: str, model: nn.Module, taps: Sequence[Tap]) -> list[Step]:
    """The trunk's steps: each of ``model``'s units in order with the stride it finishes before, and the taps.

    A unit is a top-level module, or a child of an ``nn.Sequential`` that holds a tap (see the module
    docstring). Units after the last tap are no step: they are never frozen.
    """
    pending = list(taps)
    steps = []
    for unit in model_units(model, "", [tap.module for tap in taps]):
        inside = [tap for tap in pending if tap.module.startswith(unit + ".")]
        steps += [Step(tap.module, tap.stride, tap.level) for tap in inside]
        pending = [tap for tap in pending if tap not in inside]
        if not pending:
            break
        is_tap = pending[0].module == unit
        steps.append(Step(unit, pending[0].stride, pending[0].level if is_tap else None))
        pending = pending[1:] if is_tap else pending
    if pending:
        raise ValueError(f"{arch}: feature maps {[tap.module for tap in pending]} are not modules of the model "
                         "in its top-level order; this timm model cannot be used as a backbone")
    return steps


def model_units(module: nn.Module, prefix: str, tap_modules: Sequence[str]) -> Iterator[str]:
    """Dotted names of ``module``'s children in order, descending into ``nn.Sequential``s that hold a tap."""
    for name, child in module.named_children():
        path = prefix + name
        holds_tap = any(tap.startswith(path + ".") for tap in tap_modules)
        if holds_tap and isinstance(child, nn.Sequential):
            yield from model_units(child, path + ".", tap_modules)
        else:
            yield path


BACKBONES.register_prefix(PREFIX, resolve_timm_name, described="a timm model name (timm.list_models())")
