"""What identifies a built detector, for checking that a recipe still builds the same model.

``fingerprint(model)`` holds the state dict's layout (keys, shapes, dtypes: a hash), the sum of the absolute
values of every floating state entry (the initial weights under a fixed seed), the batch-norm eps values in
use, and the plain settings (thresholds, top-n, sizes, features) of the
detector's own parts: the model, its transform, backbone and neck objects, RPN, anchor generator, RoI heads
and pooler, with the matchers, samplers and box coders they hold.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import torch
from torch import nn

SETTINGS_MODULES = ("", "transform", "backbone", "neck", "rpn", "rpn.anchor_generator", "roi_heads",
                    "roi_heads.pooler")
SMALL_TENSOR = 16
"""Tensors up to this size (normalisation mean and std) count as settings."""
PLAIN_TYPES = (int, float, str, bool, type(None), tuple, list)


def _plain(value: Any) -> Any:
    """``repr`` of a plain value, dataclass or small tensor, a dict of a plain object's attributes, else ``None``."""
    if isinstance(value, torch.Tensor):
        return repr(value.flatten().tolist()) if value.numel() <= SMALL_TENSOR else None
    if isinstance(value, nn.Module):
        return None
    if dataclasses.is_dataclass(value) or isinstance(value, PLAIN_TYPES):
        return repr(value)
    if hasattr(value, "__dict__"):
        inner = {key: _plain(item) for key, item in sorted(vars(value).items()) if not key.startswith("_")}
        return {key: item for key, item in inner.items() if item is not None}
    return None


def settings(model: nn.Module) -> dict[str, Any]:
    """Plain attributes and small buffers of the detector's own parts, by dotted name."""
    modules = dict(model.named_modules())
    found = {}
    for name in SETTINGS_MODULES:
        if name not in modules:
            continue
        attributes = {**vars(modules[name]), **dict(modules[name].named_buffers(recurse=False))}
        for key, value in sorted(attributes.items()):
            plain = None if key.startswith("_") or key == "training" else _plain(value)
            if plain is not None:
                found[f"{name}.{key}" if name else key] = plain
    return found


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """The model's layout and initial-weight fingerprint and its settings (see the module docstring)."""
    state = model.state_dict()
    layout = "\n".join(f"{key} {tuple(value.shape)} {value.dtype}" for key, value in state.items())
    return {
        "tensors": len(state),
        "layout_sha256": hashlib.sha256(layout.encode()).hexdigest(),
        "weight_abs_sum": float(sum(value.double().abs().sum() for value in state.values()
                                    if value.is_floating_point())),
        "norm_eps": sorted({float(module.eps) for module in model.modules() if hasattr(module, "eps")}),
        "settings": settings(model),
    }
