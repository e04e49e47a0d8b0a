"""Files written so that a crash never leaves a broken one, and JSON read with errors that say where.

``load_torch_file`` reads checkpoints and state dicts safely (``weights_only=True``), naming the file
in its errors. ``atomic_output(path)`` yields a temporary path in the same folder; only when the block finishes is the
file flushed to disk and renamed over ``path`` (``os.replace`` is atomic on POSIX), so readers see the
old file or the new one, never half of one. Every writer in the package (checkpoints, configs, JSON,
pictures) goes through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Permissions of a file created the usual way; mkstemp's temporary files are private (0600) instead.
NEW_FILE_MODE = 0o666 & ~_process_umask()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is synced and replaces ``path``, else vanishes.

    The file that replaces ``path`` gets the permissions a plainly created file would have (``0666`` less
    the umask), not the private ``0600`` of the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(handle)
    try:
        yield Path(temp_name)
        with open(temp_name, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(temp_name, NEW_FILE_MODE)
        os.replace(temp_name, path)
    finally:
        Path(temp_name).unlink(missing_ok=True)


TORCH_LOAD_NOTES = ("Detected pickle protocol", ".*looks like a TorchScript archive")
"""Warnings ``torch.load`` gives on its way to refusing a file (a plain pickle, a TorchScript archive)."""


def load_torch_file(path: str | os.PathLike[str], what: str = "checkpoint") -> Any:
    """The object saved in a torch file, read safely (``weights_only=True``) onto the CPU.

    A missing file raises ``FileNotFoundError``; an empty, truncated or corrupt one, or one holding Python
    objects that ``weights_only`` loading refuses, raises ``ValueError``. Each is one sentence naming
    ``what`` and the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with warnings.catch_warnings():  # torch's notes on files it then refuses, said better by the error below
            for note in TORCH_LOAD_NOTES:
                warnings.filterwarnings("ignore", message=note, category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt, truncated or unsafe files
        exported = exported_format_of(path)
        if exported is not None:
            raise ValueError(f"{path} is an exported {exported} model, not a {what}; use the checkpoint that "
                             "training wrote (runs/NAME/best.pt or last.pt)") from None
        raise ValueError(f"cannot read {what} {path}: {_torch_load_failure(error)}") from None


def exported_format_of(path: str | os.PathLike[str]) -> str | None:
    """``"ONNX"`` or ``"TorchScript"`` when the file at ``path`` is an exported model of that format, else None.

    Told by content, whatever the suffix: an ONNX file is a protobuf ``ModelProto``, which starts with its first
    field, ``ir_version`` (byte ``0x08``; a torch.save file starts with ``PK`` or a pickle's ``0x80``); a
    TorchScript archive is a zip holding ``constants.pkl`` (a torch.save zip holds ``data.pkl`` and tensors).
    """
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, "rb") as file:
        if file.read(1) == b"\x08":
            return "ONNX"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist()):
                return "TorchScript"
    return None


def _torch_load_failure(error: Exception) -> str:
    """What went wrong in ``torch.load``, in one clause (torch's own messages run to several paragraphs)."""
    message = str(error)
    if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in message:
        refused = re.search(r"GLOBAL (\S+)", message)
        culprit = f" ({refused.group(1)})" if refused else ""
        return (f"it holds Python objects{culprit} that safe loading (weights_only=True) refuses; expected "
                "tensors and plain containers, e.g. a file written by torch.save(model.state_dict(), path)")
    first_sentence = message.split(". ")[0].strip() or type(error).__name__
    return f"it is empty, truncated or not written by torch.save ({first_sentence})"


def write_text(text: str, path: str | os.PathLike[str]) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def save_json(document: Any, path: str | os.PathLike[str], indent: int | None = None) -> Path:
    """Write ``document`` as JSON to ``path`` atomically."""
    return write_text(json.dumps(document, indent=indent), path)


def load_json(source: str | os.PathLike[str] | Mapping[str, Any] | Sequence[Any], what: str = "JSON") -> Any:
    """``source`` itself when it is already a document, else the JSON file at that path.

    A missing file or malformed JSON raises ``ValueError`` naming ``what``, the file, line and column.
    """
    if not isinstance(source, (str, os.PathLike)):
        return source
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"{what} file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{what} file {path}: malformed JSON at line {error.lineno} column {error.colno}: {error.msg}"
        ) from None


def json_float(value: float) -> float | None:
    """``value`` as a JSON-safe float: ``None`` for NaN."""
    return None if value != value else float(value)
