"""Weights of a checkpoint with other classes: load what fits, start the class-specific layers afresh.

The model contract (docs/architecture.md, "Checkpoints"): a model declares its class-specific tensors in
the class attribute ``CLASS_SPECIFIC_TENSORS: dict[str, int]``, a state-dict key prefix -> rows per
class. The first dimension of a tensor under such a prefix is laid out ``[groups, num_classes + 1,
rows_per_class]`` with index 0 the background (``groups``: for example one per anchor of an SSD head; 1 for
a plain predictor), every other dimension independent of the classes. Faster R-CNN declares
``{"roi_heads.predictor.cls_score.": 1, "roi_heads.predictor.bbox_pred.": 4}``.

``transfer_weights(model, state, source, model_classes, checkpoint_classes)``:

- a key in one state dict and not the other, or a tensor outside the class-specific prefixes whose shape
  differs, is a different architecture: ``CheckpointError`` naming the first such keys;
- when the class names agree (or the checkpoint names none and every shape fits), every tensor is copied;
- otherwise every other tensor is copied and each class-specific tensor keeps the model's fresh
  initialisation except the rows of the classes named in both lists (the background too), copied from the
  checkpoint's rows of the same name.

The returned ``TransferReport`` says what was loaded, what was re-initialised and which classes kept rows.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from structured.engine.checkpoint import CheckpointError, load_checkpoint, mismatches, model_state_from


@dataclass(frozen=True)
class TransferReport:
    """What ``transfer_weights`` did: tensors copied whole, class-specific tensors re-initialised, kept classes."""

    source: str
    loaded: tuple[str, ...]
    reinitialised: tuple[str, ...]
    kept_classes: tuple[str, ...]
    checkpoint_classes: tuple[str, ...] | None
    model_classes: tuple[str, ...]

    def summary(self) -> str:
        """One line for the console and the run log."""
        text = f"weights {self.source}: loaded {len(self.loaded)} tensors"
        if not self.reinitialised:
            return text
        if self.checkpoint_classes is None:
            why = "the checkpoint names no classes and its class count differs"
        else:
            why = (f"the classes differ (checkpoint {len(self.checkpoint_classes) - 1}, "
                   f"model {len(self.model_classes) - 1})")
        kept = (f"kept the rows of classes {list(self.kept_classes)}" if self.kept_classes
                else "kept no class rows")
        return (f"{text}; re-initialised {len(self.reinitialised)} class-specific tensors "
                f"({', '.join(self.reinitialised)}) because {why}; {kept}")


def class_specific_prefixes(model: nn.Module) -> dict[str, int]:
    """The model's declared class-specific key prefixes and their rows per class (none when it declares none)."""
    return dict(getattr(model, "CLASS_SPECIFIC_TENSORS", {}))


def load_transferred_weights(model: nn.Module, path: str | os.PathLike[str],
                             model_classes: Sequence[str]) -> TransferReport:
    """``transfer_weights`` from checkpoint file ``path`` (its ``class_names`` when it has them)."""
    checkpoint = load_checkpoint(path)
    names = checkpoint.get("class_names") if "model" in checkpoint else None
    return transfer_weights(model, model_state_from(checkpoint), str(path), model_classes, names)


def transfer_weights(model: nn.Module, state: Mapping[str, Tensor], source: str, model_classes: Sequence[str],
                     checkpoint_classes: Sequence[str] | None) -> TransferReport:
    """Copy ``state`` into ``model``, class-specific tensors row by row by class name (module docstring)."""
    expected = model.state_dict()
    declared = class_specific_prefixes(model)
    _check_architecture(expected, state, declared, source)
    specific = [key for key in expected if _rows_per_class(key, declared) is not None]
    shapes_fit = all(expected[key].shape == state[key].shape for key in specific)
    if shapes_fit and (checkpoint_classes is None or list(checkpoint_classes) == list(model_classes)):
        model.load_state_dict(dict(state))
        return TransferReport(source, tuple(expected), (), (), _tuple(checkpoint_classes), tuple(model_classes))
    pairs = _shared_class_rows(model_classes, checkpoint_classes)
    merged = {key: value for key, value in state.items() if key not in specific}
    for key in specific:
        merged[key] = _with_kept_rows(expected[key], state[key], pairs, _rows_per_class(key, declared),
                                      len(model_classes), len(checkpoint_classes or ()), f"{source}: {key}")
    model.load_state_dict(merged)
    kept = tuple(model_classes[new] for new, _ in pairs)
    loaded = tuple(key for key in expected if key not in specific)
    return TransferReport(source, loaded, tuple(specific), kept, _tuple(checkpoint_classes), tuple(model_classes))


def _tuple(names: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if names is None else tuple(names)


def _rows_per_class(key: str, declared: Mapping[str, int]) -> int | None:
    for prefix, rows in declared.items():
        if key.startswith(prefix):
            return rows
    return None


def _check_architecture(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], declared: Mapping[str, int],
                        source: str) -> None:
    """Refuse a state dict of another architecture: other keys, or other shapes outside the class-specific tensors."""
    problems = mismatches(expected, state, any_shape=lambda key: _rows_per_class(key, declared) is not None)
    if problems:
        raise CheckpointError(f"weights {source} are of another architecture than the model: " + "; ".join(problems))


def _shared_class_rows(model_classes: Sequence[str],
                       checkpoint_classes: Sequence[str] | None) -> list[tuple[int, int]]:
    """``(model index, checkpoint index)`` of every class named once in each list, in the model's order."""
    if checkpoint_classes is None:
        return []
    counts = Counter(checkpoint_classes)
    model_counts = Counter(model_classes)
    where = {name: index for index, name in enumerate(checkpoint_classes) if counts[name] == 1}
    return [(index, where[name]) for index, name in enumerate(model_classes)
            if name in where and model_counts[name] == 1]


def _class_view(tensor: Tensor, num_entries: int, rows: int, what: str) -> Tensor:
    """``tensor`` seen as ``[groups, num_entries, rows, ...]`` (its first dimension split by class)."""
    per_group = num_entries * rows
    if tensor.dim() == 0 or tensor.shape[0] % per_group:
        raise CheckpointError(f"{what} has shape {tuple(tensor.shape)}, whose first dimension is not a multiple of "
                              f"{num_entries} classes x {rows} rows")
    return tensor.reshape(tensor.shape[0] // per_group, num_entries, rows, *tensor.shape[1:])


def _with_kept_rows(fresh: Tensor, trained: Tensor, pairs: list[tuple[int, int]], rows: int, model_entries: int,
                    checkpoint_entries: int, what: str) -> Tensor:
    """``fresh`` (the model's initialisation) with the rows of ``pairs`` copied from ``trained``."""
    result = fresh.detach().clone()
    if not pairs:
        return result
    new_view = _class_view(result, model_entries, rows, f"{what} (model)")
    old_view = _class_view(trained, checkpoint_entries, rows, f"{what} (checkpoint)")
    if new_view.shape[0] != old_view.shape[0] or new_view.shape[2:] != old_view.shape[2:]:
        raise CheckpointError(f"{what}: checkpoint shape {tuple(trained.shape)} does not fit model shape "
                              f"{tuple(fresh.shape)} for {checkpoint_entries} vs {model_entries} classes")
    new_rows = torch.tensor([new for new, _ in pairs])
    old_rows = torch.tensor([old for _, old in pairs])
    new_view[:, new_rows] = old_view[:, old_rows].to(result.dtype)
    return result
