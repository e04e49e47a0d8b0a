"""The Backbone contract and the generic trunk runner every family builds on.

Contract (docs/architecture.md): ``forward(x: Tensor[B,3,H,W]) -> OrderedDict[str, Tensor]`` of the
requested levels, named ``c1..c5`` after their stride (``c<k>`` has stride ``2**k``), in increasing stride
order; attributes ``out_channels: dict[str, int]`` and ``strides: dict[str, int]`` describe exactly those
levels. A level is the last feature map the network computes at that stride. A family may offer extra
named taps (e.g. ``c5_entry`` for MobileNetV3, see ``mobilenet.py``); they are requested by name like levels.

``Backbone`` holds a torchvision-style classification model as ``trunk`` (torchvision's own module names,
so a torchvision state dict maps by the prefix ``trunk.``) and a list of ``Step``s: the trunk's
sub-modules in forward order, each with its output stride and the level it emits. Building options shared
by all families — levels, frozen stages, norm layer, pretrained weights, classifier — are applied here
by ``build_backbone``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torchvision
from torch import Tensor, nn

from structured.backbones.transfer import convert_norm_layers, freeze, has_batch_norm, unfreeze
from structured.backbones.weights import load_pretrained
from structured.registry import BACKBONES

MAX_LEVEL = 5


@dataclass(frozen=True)
class Step:
    """One trunk sub-module (dotted path) in forward order, its output stride and the level it emits."""

    module: str
    stride: int
    level: str | None = None


@dataclass(frozen=True)
class TrunkSpec:
    """What a family tells ``build_backbone`` about one built trunk.

    ``channels``: channels of every level and tap the trunk offers. ``head``: names of the trunk's
    classifier-head attributes (removed when no classifier is wanted). ``ignored_checkpoint_prefixes``:
    checkpoint keys that may be present but are never loaded (auxiliary classifiers).
    ``added_modules``: trunk attributes the family adds to torchvision's classifier (SSD's fc6/fc7), which a
    classification checkpoint does not hold; they keep their initialisation when one is loaded.
    """

    steps: tuple[Step, ...]
    channels: dict[str, int]
    head: tuple[str, ...]
    ignored_checkpoint_prefixes: tuple[str, ...] = ()
    added_modules: tuple[str, ...] = ()

    @property
    def default_levels(self) -> tuple[str, ...]:
        """The stride levels ``c1..c5`` the trunk emits (taps excluded)."""
        return tuple(step.level for step in self.steps if step.level and is_stride_level(step.level))


def is_stride_level(name: str) -> bool:
    """Whether ``name`` is a plain stride level ``c1``..``c5``."""
    return name in {f"c{k}" for k in range(1, MAX_LEVEL + 1)}


class Backbone(nn.Module):
    """A trunk returning named multi-scale features (see the module docstring for the contract)."""

    out_channels: dict[str, int]
    strides: dict[str, int]

    def __init__(
        self, trunk: nn.Module, steps: Sequence[Step], channels: dict[str, int], out_levels: Sequence[str]
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.steps = tuple(steps)
        emitted = {step.level: step for step in self.steps if step.level}
        unknown = [level for level in out_levels if level not in emitted]
        if isinstance(out_levels, str) or not out_levels or unknown:
            raise ValueError(
                f"out_levels must be a non-empty list of levels of {type(trunk).__name__}: "
                f"{', '.join(emitted)}; got {out_levels!r}"
            )
        ordered = [step.level for step in self.steps if step.level in out_levels]
        self.out_channels = {level: channels[level] for level in ordered}
        self.strides = {level: emitted[level].stride for level in ordered}
        self.frozen_modules: tuple[str, ...] = ()
        self.has_classifier = False
        last = max(i for i, step in enumerate(self.steps) if step.level in out_levels)
        self._run_steps = self.steps[: last + 1]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """Features of ``x`` [B,3,H,W]: the requested levels in increasing stride order."""
        check_backbone_input(x)
        features: OrderedDict[str, Tensor] = OrderedDict()
        for step in self._run_steps:
            x = self.trunk.get_submodule(step.module)(x)
            if step.level in self.out_channels:
                features[step.level] = x
        return features

    def drop_unused_weights(self) -> None:
        """Replace the trunk modules after the deepest requested level that hold weights by ``nn.Identity``.

        They never run (``forward`` stops at that level), so their parameters would only take memory and
        checkpoint space, and leave DistributedDataParallel parameters without gradients (ResNet-18 up to
        ``c4`` keeps 2.8M of its 11.2M). Modules without weights (a last pooling) stay, so the trunk's layout
        is unchanged where nothing is dropped. Not for a backbone that classifies (it runs the whole trunk).
        """
        for step in self.steps[len(self._run_steps):]:
            module = self.trunk.get_submodule(step.module)
            if list(module.parameters()) or list(module.buffers()):
                self.trunk.set_submodule(step.module, nn.Identity())

    def classify(self, x: Tensor) -> Tensor:
        """Class logits [B, num_classes] of ``x`` (only for a backbone built with ``classifier=True``)."""
        if not self.has_classifier:
            raise RuntimeError(f"{type(self.trunk).__name__} backbone was built without classifier=True")
        return self.trunk(x)

    def freeze_stages(self, frozen_stages: int) -> None:
        """Freeze every trunk module whose output stride is at most ``2**frozen_stages``.

        Frozen modules get no gradient and stay in eval mode (their batch-norm statistics do not move)
        even when the backbone is put in train mode. ``frozen_stages=0`` unfreezes everything.
        """
        if not 0 <= frozen_stages <= MAX_LEVEL:
            raise ValueError(f"frozen_stages must be in 0..{MAX_LEVEL}, got {frozen_stages}")
        for step in self.steps:
            unfreeze(self.trunk.get_submodule(step.module))
        limit = 2**frozen_stages if frozen_stages else 0
        self.frozen_modules = tuple(step.module for step in self.steps if step.stride <= limit)
        for path in self.frozen_modules:
            freeze(self.trunk.get_submodule(path))
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        """Set train/eval mode; frozen modules always stay in eval mode."""
        super().train(mode)
        for path in self.frozen_modules:
            self.trunk.get_submodule(path).eval()
        return self


def build_backbone(
    arch: str,
    make_trunk: Callable[..., tuple[nn.Module, TrunkSpec]],
    *,
    out_levels: Sequence[str] | None = None,
    frozen_stages: int = 0,
    norm_layer: str = "bn",
    norm_eps: float | None = None,
    pretrained: str | None = None,
    classifier: bool = False,
    num_classes: int = 1000,
) -> Backbone:
    """Build backbone ``arch`` from ``make_trunk(num_classes=..., pretrained=...)`` and apply the options.

    ``out_levels``: levels to return (default: all ``c1..c5`` the net has). ``frozen_stages=k``: freeze
    the modules up to stride ``2**k`` (see ``Backbone.freeze_stages``). ``norm_layer``: ``"bn"`` (the
    net's own batch norm), ``"frozen_bn"`` or ``"gn"``; ``norm_eps`` overrides batch-norm eps.
    ``pretrained``: ``None``, a checkpoint path or ``"imagenet[:TAG]"`` (see ``weights.py``).
    ``classifier``: keep the classification head (``num_classes`` outputs) for ``Backbone.classify``.

    Order: build the trunk, drop its head unless ``classifier``, load ``pretrained`` (checked), convert
    the norm layers (``"bn"``/``"frozen_bn"``/``"gn"``, optional ``norm_eps``), drop the weights of the
    stages after the deepest of ``out_levels`` unless ``classifier`` (``Backbone.drop_unused_weights``), freeze
    stages.
    """
    trunk, spec = make_trunk(num_classes=num_classes, pretrained=pretrained)
    if not classifier:
        for name in spec.head:
            setattr(trunk, name, nn.Identity())
    if pretrained is not None:
        ignored = spec.ignored_checkpoint_prefixes + (() if classifier else tuple(f"{h}." for h in spec.head))
        load_pretrained(trunk, pretrained, arch=arch, ignored_prefixes=ignored,
                        fresh_prefixes=tuple(f"{module}." for module in spec.added_modules))
    convert_trunk_norm_layers(trunk, arch, norm_layer, norm_eps)
    backbone = Backbone(trunk, spec.steps, spec.channels, out_levels or spec.default_levels)
    if not classifier:
        backbone.drop_unused_weights()
    return finish_backbone(backbone, classifier, frozen_stages)


def check_backbone_input(x: Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` is an image batch ``[B, 3, H, W]``."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"backbone input must be [B,3,H,W], got shape {tuple(x.shape)}")


def convert_trunk_norm_layers(trunk: nn.Module, arch: str, norm_layer: str, norm_eps: float | None) -> None:
    """The ``norm_layer`` / ``norm_eps`` options on ``trunk`` of backbone ``arch`` (see ``build_backbone``)."""
    if norm_layer != "bn" and not has_batch_norm(trunk):
        raise ValueError(f"{arch} has no batch norm layers to turn into {norm_layer!r}; use norm_layer='bn'")
    convert_norm_layers(trunk, norm_layer, eps=norm_eps)


def finish_backbone(backbone: Backbone, classifier: bool, frozen_stages: int) -> Backbone:
    """The ``classifier`` and ``frozen_stages`` options on a built ``backbone`` (see ``build_backbone``)."""
    backbone.has_classifier = classifier
    backbone.freeze_stages(frozen_stages)
    return backbone


def register_backbones(names: Sequence[str], make_trunk: Callable[..., tuple[nn.Module, TrunkSpec]]) -> None:
    """Register, under each of ``names``, ``build_backbone`` over ``make_trunk(name, ...)``.

    The registered builder takes ``build_backbone``'s keyword options only.
    """
    for name in names:
        BACKBONES.register(name)(partial(build_backbone, name, partial(make_trunk, name)))


def level_name(stride: int) -> str:
    """``c<k>`` for stride ``2**k``."""
    return f"c{round(math.log2(stride))}"


def downsampling_factor(module: nn.Module) -> int:
    """The largest stride of any convolution or pooling inside ``module`` (1 when none)."""
    factor = 1
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            stride = m.stride if isinstance(m.stride, int) else max(m.stride)
            factor = max(factor, stride)
    return factor


def sequential_steps(path: str, sequence: nn.Sequential, start_stride: int = 1) -> list[Step]:
    """Steps over the children of ``sequence`` (at ``path``), each level emitted by its stride's last child."""
    strides = []
    stride = start_stride
    for child in sequence:
        stride *= downsampling_factor(child)
        strides.append(stride)
    steps = []
    for index, stride in enumerate(strides):
        is_last_at_stride = index + 1 == len(strides) or strides[index + 1] != stride
        level = level_name(stride) if stride >= 2 and is_last_at_stride else None
        steps.append(Step(f"{path}.{index}", stride, level))
    return steps


def sequential_channels(
    sequence: nn.Sequential, steps: Sequence[Step], in_channels: int = 3
) -> dict[str, int]:
    """Output channels of each level of ``steps`` over ``sequence``: the last convolution seen so far."""
    channels: dict[str, int] = {}
    current = in_channels
    for child, step in zip(sequence, steps, strict=True):
        convs = [m for m in child.modules() if isinstance(m, nn.Conv2d)]
        if convs:
            current = convs[-1].out_channels
        if step.level:
            channels[step.level] = current
    return channels


def make_features_trunk(
    arch: str,
    *,
    num_classes: int,
    pretrained: str | None,
    head: tuple[str, ...] = ("avgpool", "classifier"),
) -> tuple[nn.Module, TrunkSpec]:
    """torchvision's untrained ``arch`` whose trunk is one ``features`` Sequential, and its levels."""
    trunk = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    return trunk, features_trunk_spec(trunk, head)


def features_trunk_spec(trunk: nn.Module, head: tuple[str, ...]) -> TrunkSpec:
    """The levels of a trunk whose feature extractor is the Sequential ``trunk.features``."""
    steps = sequential_steps("features", trunk.features)
    channels = sequential_channels(trunk.features, steps)
    return TrunkSpec(steps=tuple(steps), channels=channels, head=head)
