"""Checked loading of classification checkpoints into backbone trunks.

Contract: ``load_pretrained(trunk, pretrained, ...)`` fills ``trunk`` (a torchvision-style classification
model, possibly without its head) from
- a path to a state dict saved with ``torch.save`` (torchvision's key names, or our backbone's keys with
  their ``trunk.`` prefix; a dict holding it under ``"state_dict"`` or ``"model"`` is unwrapped; the
  state dict of one of our models with a ``backbone`` part, such as a detector's training checkpoint,
  gives its ``backbone.trunk.`` keys), or
- ``"imagenet"`` / ``"imagenet:<TAG>"``: torchvision's named weights (``DEFAULT`` or e.g. ``IMAGENET1K_V1``),
  read from the torch hub cache (``<torch.hub.get_dir()>/checkpoints/<file>``), downloaded there (and
  checked against the SHA-256 prefix in the file name) when the network allows; otherwise the error names the exact path where the file should be put.
Files are read with ``torch.load(weights_only=True)``. Every trunk key must be present with the same
shape, and every checkpoint key must be used, except the classifier head's keys when the trunk has no
head and auxiliary-classifier keys; anything else is an error naming the key — never a partial load.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from structured.io import load_torch_file

OPTIONAL_KEY_SUFFIXES = ("num_batches_tracked",)
WRAPPER_KEYS = ("state_dict", "model")
OUR_PREFIX = "trunk."
OUR_MODEL_PREFIX = "backbone." + OUR_PREFIX
MAX_KEYS_SHOWN = 8
# torchvision's weight files are named <model>-<first hex digits of their SHA-256>.pth
HASH_IN_FILENAME = re.compile(r"-([a-f0-9]+)\.")


def load_pretrained(
    trunk: nn.Module,
    pretrained: str | os.PathLike[str],
    *,
    arch: str,
    ignored_prefixes: Sequence[str],
    fresh_prefixes: Sequence[str] = (),
) -> None:
    """Load ``pretrained`` (a path or ``"imagenet[:TAG]"``) into ``trunk``, checking every key.

    ``ignored_prefixes``: checkpoint key prefixes that may be present but are not loaded (a removed
    classifier head, auxiliary classifiers). ``fresh_prefixes``: the trunk's own key prefixes that a
    classification checkpoint lacks (layers a detection form adds, such as SSD's fc6/fc7); they keep
    their initialisation.
    """
    path = resolve_checkpoint_path(pretrained, arch)
    state_dict = read_state_dict(path)
    checked = check_state_dict(
        trunk.state_dict(), state_dict, ignored_prefixes=ignored_prefixes, source=str(path),
        fresh_prefixes=fresh_prefixes,
    )
    trunk.load_state_dict(checked, strict=not fresh_prefixes)


def resolve_checkpoint_path(pretrained: str | os.PathLike[str], arch: str) -> Path:
    """The checkpoint file for ``pretrained``: the path itself, or the hub-cache file of ImageNet weights."""
    text = os.fspath(pretrained)
    if text == "imagenet" or text.startswith("imagenet:"):
        tag = text.partition(":")[2] or "DEFAULT"
        return imagenet_checkpoint(arch, tag)
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint for {arch} not found: {path}")
    return path


def imagenet_checkpoint(arch: str, tag: str = "DEFAULT") -> Path:
    """Path of torchvision's ``tag`` ImageNet weights for ``arch`` in the hub cache, downloading if needed."""
    url = imagenet_weights_url(arch, tag)
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    hash_prefix = HASH_IN_FILENAME.search(path.name)
    try:
        torch.hub.download_url_to_file(
            url, os.fspath(path), hash_prefix=hash_prefix.group(1) if hash_prefix else None, progress=False
        )
    except OSError as error:
        raise FileNotFoundError(
            f"torchvision ImageNet weights {tag} for {arch} are not in the torch hub cache and could not be "
            f"downloaded ({error}). Download {url} on a machine with network access and put the file at "
            f"{path}"
        ) from None
    return path


def imagenet_weights_url(arch: str, tag: str) -> str:
    """The download URL of torchvision's weights ``tag`` for model ``arch``."""
    try:
        weights_enum = torchvision.models.get_model_weights(arch)
    except ValueError:
        raise ValueError(
            f"torchvision has no ImageNet weights for {arch!r}; pass a checkpoint path as pretrained"
        ) from None
    known = sorted(weights_enum.__members__)
    if tag not in known:
        raise ValueError(f"unknown torchvision weights {tag!r} for {arch}; known: {', '.join(known)}")
    return weights_enum[tag].url


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The trunk state dict stored in ``path`` (``weights_only=True``), unwrapped from ``state_dict``/``model``,
    the ``backbone.trunk.`` part of a model's state dict, without our ``trunk.`` prefix."""
    loaded = load_torch_file(path, "pretrained checkpoint")
    for key in WRAPPER_KEYS:
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    state_dict = dict(loaded)
    if any(key.startswith(OUR_MODEL_PREFIX) for key in state_dict):
        return {key[len(OUR_MODEL_PREFIX) :]: value for key, value in state_dict.items()
                if key.startswith(OUR_MODEL_PREFIX)}
    if state_dict and all(key.startswith(OUR_PREFIX) for key in state_dict):
        state_dict = {key[len(OUR_PREFIX) :]: value for key, value in state_dict.items()}
    return state_dict


def check_state_dict(
    expected: Mapping[str, Tensor],
    given: Mapping[str, Tensor],
    *,
    ignored_prefixes: Sequence[str] = (),
    source: str = "checkpoint",
    fresh_prefixes: Sequence[str] = (),
) -> dict[str, Tensor]:
    """``given`` restricted to the keys of ``expected``, after checking that keys and shapes agree.

    Raises ``KeyError`` naming missing or unexpected keys and ``ValueError`` naming a key whose shape
    differs. Keys ending in ``num_batches_tracked`` may be missing, and so may keys under
    ``fresh_prefixes``; keys under ``ignored_prefixes`` may be extra.
    """
    ignored, fresh = tuple(ignored_prefixes), tuple(fresh_prefixes)
    used = {key: value for key, value in given.items() if not (ignored and key.startswith(ignored))}
    missing = [key for key in expected if key not in used and not key.endswith(OPTIONAL_KEY_SUFFIXES)
               and not (fresh and key.startswith(fresh))]
    unexpected = [key for key in used if key not in expected]
    if missing:
        raise KeyError(f"{source}: missing keys {_shown(missing)}")
    if unexpected:
        raise KeyError(f"{source}: unexpected keys {_shown(unexpected)}")
    for key, value in used.items():
        if value.shape != expected[key].shape:
            raise ValueError(
                f"{source}: key {key!r} has shape {tuple(value.shape)}, the model expects {tuple(expected[key].shape)}"
            )
    return used


def _shown(keys: list[str]) -> str:
    more = f" and {len(keys) - MAX_KEYS_SHOWN} more" if len(keys) > MAX_KEYS_SHOWN else ""
    return ", ".join(repr(key) for key in keys[:MAX_KEYS_SHOWN]) + more
