"""Transfer-learning helpers: frozen batch norm, norm-layer conversion, freezing, parameter groups.

Contract:
- ``FrozenBatchNorm2d`` is batch norm with fixed statistics and affine parameters, stored as buffers
  under BatchNorm2d's names (``weight``, ``bias``, ``running_mean``, ``running_var``), so a BatchNorm2d
  or torchvision ``FrozenBatchNorm2d`` state dict loads into it unchanged.
- ``convert_norm_layers(module, kind, eps)`` swaps every ``nn.BatchNorm2d`` for a frozen copy or a
  ``GroupNorm`` (keeping the affine parameters) and optionally sets ``eps`` on every batch norm. A batch
  norm that applies its own activation (timm's ``BatchNormAct2d``: ``drop`` and ``act`` modules after the
  norm) becomes ``FrozenBatchNormAct2d`` / ``GroupNormAct``, which keep them.
- ``group_norm(C)`` is the one GroupNorm layout of the package (gcd(32, C) groups).
- ``freeze`` / ``unfreeze`` switch ``requires_grad`` of a module's parameters.
- ``parameter_groups`` splits a model's trainable parameters into a backbone group and a heads group,
  each with its own learning rate, ready for ``torch.optim``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

NORM_LAYERS = ("bn", "frozen_bn", "gn")
GROUP_NORM_MAX_GROUPS = 32


class FrozenBatchNorm2d(nn.Module):
    """Batch norm whose statistics and affine parameters are constants (buffers, no gradient)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @classmethod
    def from_batch_norm(cls, bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        """A frozen copy of ``bn`` (same statistics, affine parameters and eps)."""
        if not (bn.affine and bn.track_running_stats):
            raise ValueError(f"only affine batch norm with running statistics can be frozen, got {bn!r}")
        frozen = cls(bn.num_features, eps=bn.eps).to(bn.weight.device)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, name).copy_(getattr(bn, name))
        return frozen

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` [B,C,H,W] with the stored statistics."""
        scale = self.weight.reshape(1, -1, 1, 1) * (self.running_var.reshape(1, -1, 1, 1) + self.eps).rsqrt()
        shift = self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale
        return x * scale + shift

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class FrozenBatchNormAct2d(FrozenBatchNorm2d):
    """A frozen batch norm followed by the ``drop`` and ``act`` modules of the norm it replaces."""

    def __init__(self, num_features: int, eps: float, drop: nn.Module, act: nn.Module) -> None:
        super().__init__(num_features, eps=eps)
        self.drop = drop
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` [B,C,H,W] with the stored statistics, then dropout and activation."""
        return self.act(self.drop(super().forward(x)))


class GroupNormAct(nn.GroupNorm):
    """The package's group norm followed by the ``drop`` and ``act`` modules of the norm it replaces."""

    def __init__(self, num_groups: int, num_channels: int, eps: float, drop: nn.Module, act: nn.Module) -> None:
        super().__init__(num_groups, num_channels, eps=eps, affine=True)
        self.drop = drop
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        """Group-normalise ``x`` [B,C,H,W], then dropout and activation."""
        return self.act(self.drop(super().forward(x)))


def applies_activation(norm: nn.Module) -> bool:
    """Whether ``norm`` applies its own dropout and activation after normalising (timm's ``BatchNormAct2d``)."""
    return isinstance(getattr(norm, "act", None), nn.Module) and isinstance(getattr(norm, "drop", None), nn.Module)


def frozen_batch_norm(bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    """A frozen copy of ``bn``; one that applies an activation keeps it (``FrozenBatchNormAct2d``)."""
    frozen = FrozenBatchNorm2d.from_batch_norm(bn)
    if not applies_activation(bn):
        return frozen
    with_activation = FrozenBatchNormAct2d(bn.num_features, bn.eps, bn.drop, bn.act)
    with_activation.load_state_dict(frozen.state_dict(), strict=False)
    return with_activation.to(bn.weight.device)


def group_norm(channels: int, eps: float = 1e-5) -> nn.GroupNorm:
    """The package's GroupNorm over ``channels``: gcd(32, C) groups, so any channel count divides evenly."""
    return nn.GroupNorm(math.gcd(GROUP_NORM_MAX_GROUPS, channels), channels, eps=eps, affine=True)


def group_norm_from_batch_norm(bn: nn.BatchNorm2d) -> nn.GroupNorm:
    """A ``group_norm`` over the same channels that keeps ``bn``'s eps and affine parameters (and its
    activation, ``GroupNormAct``, when it applies one)."""
    gn = group_norm(bn.num_features, eps=bn.eps)
    if applies_activation(bn):
        gn = GroupNormAct(gn.num_groups, gn.num_channels, gn.eps, bn.drop, bn.act)
    if bn.affine:
        gn = gn.to(bn.weight.device)
        with torch.no_grad():
            gn.weight.copy_(bn.weight)
            gn.bias.copy_(bn.bias)
    return gn


def has_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` holds any BatchNorm2d or FrozenBatchNorm2d."""
    return any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in module.modules())


def convert_norm_layers(module: nn.Module, kind: str, eps: float | None = None) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` (in place) according to ``kind``.

    ``kind``: ``"bn"`` keeps batch norm, ``"frozen_bn"`` freezes it, ``"gn"`` swaps it for GroupNorm.
    ``eps``, when given, is set on every (frozen) batch norm afterwards. Returns ``module``.
    """
    if kind not in NORM_LAYERS:
        raise ValueError(f"norm_layer must be one of {NORM_LAYERS}, got {kind!r}")
    if kind != "bn":
        _replace_batch_norms(module, kind)
    if eps is not None:
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                m.eps = eps
    return module


def _replace_batch_norms(module: nn.Module, kind: str) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            new = frozen_batch_norm(child) if kind == "frozen_bn" else group_norm_from_batch_norm(child)
            setattr(module, name, new)
        else:
            _replace_batch_norms(child, kind)


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradients to every parameter of ``module``; returns it."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def unfreeze(module: nn.Module) -> nn.Module:
    """Let gradients flow to every parameter of ``module`` again; returns it."""
    for parameter in module.parameters():
        parameter.requires_grad_(True)
    return module


def parameter_groups(
    model: nn.Module,
    lr: float,
    backbone_lr: float | None = None,
    backbone_prefix: str = "backbone.",
    weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: parameters under ``backbone_prefix`` at ``backbone_lr``, the rest at ``lr``.

    Only trainable parameters (``requires_grad``) are included; empty groups are left out. ``backbone_lr``
    defaults to ``lr``. Each group is a dict with ``params``, ``lr``, ``weight_decay`` and ``name``.
    """
    backbone, heads = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (backbone if name.startswith(backbone_prefix) else heads).append(parameter)
    if not backbone and not heads:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    groups = [
        {"name": "backbone", "params": backbone, "lr": lr if backbone_lr is None else backbone_lr},
        {"name": "heads", "params": heads, "lr": lr},
    ]
    return [dict(group, weight_decay=weight_decay) for group in groups if group["params"]]
