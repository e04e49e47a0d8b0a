"""YAML recipes: load, override with ``--set a.b=value``, validate against builder signatures, dump.

A recipe is one flat YAML file per model/dataset (no inheritance: what you read is what runs). Its
sections that name a registered part hold that builder's keyword arguments::

    model:
      name: faster_rcnn_r18_fpn      # a name in MODELS
      num_classes: 5
      backbone:                      # a nested part: validated against BACKBONES
        name: resnet18
        frozen_stages: 1
    train:
      epochs: 12
      lr: 0.02

``load_config`` reads the file and applies overrides; ``validate_section`` checks every key of a
section against the registered builder's signature, so a misspelt key is an error that names the key,
the file and the valid keys instead of being silently ignored. ``build_model`` needs nothing imported
beforehand: the registries import the packages that register the built-in parts on their first lookup
(``structured.registry``), so ``import structured.config`` itself loads no model code.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from structured.io import write_text
from structured.registry import BACKBONES, MODELS, NECKS, Registry

NESTED_PARTS: dict[str, Registry] = {"backbone": BACKBONES, "neck": NECKS}
"""Keys whose value, when a mapping with a ``name``, is itself a registered part to validate."""



class ConfigError(ValueError):
    """A recipe that cannot be used as written; the message names the file and the key."""


class _RecipeLoader(yaml.SafeLoader):
    """Safe YAML loader that also reads ``1e-3`` as a float (YAML 1.1 needs ``1.0e-3``)."""


_FLOAT_PATTERN = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)
_RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_PATTERN, list("-+0123456789."))


class Config:
    """A resolved recipe: nested plain dicts plus the file it came from (for error messages)."""

    def __init__(self, data: Mapping[str, Any], source: str = "<dict>") -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: a recipe must be a mapping of sections, got {type(data).__name__}")
        self.data: dict[str, Any] = copy.deepcopy(dict(data))
        self.source = source

    def __getitem__(self, key: str) -> Any:
        return self.get(key, _MISSING)

    def __contains__(self, key: str) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    def get(self, dotted_key: str, default: Any = None) -> Any:
        """The value at ``a.b.c``; ``default`` when absent (``KeyError`` naming the key if no default)."""
        node: Any = self.data
        for part in dotted_key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                if default is _MISSING:
                    raise KeyError(f"{self.source}: no key {dotted_key!r}")
                return default
            node = node[part]
        return node

    def set(self, dotted_key: str, value: Any) -> None:
        """Set ``a.b.c`` to ``value``, creating missing sections."""
        parts = dotted_key.split(".")
        if not all(parts):
            raise ConfigError(f"override key {dotted_key!r} has an empty part; expected a.b.c")
        node = self.data
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                prefix = ".".join(parts[: depth + 1])
                raise ConfigError(f"{self.source}: cannot set {dotted_key!r}: {prefix!r} is a value, not a section")
            node = child
        node[parts[-1]] = value

    def to_yaml(self) -> str:
        """The resolved recipe as YAML text."""
        return yaml.safe_dump(self.data, sort_keys=False, default_flow_style=None)

    def dump(self, path: str | os.PathLike[str]) -> Path:
        """Write the resolved recipe atomically to ``path``."""
        return write_text(self.to_yaml(), path)

    def __repr__(self) -> str:
        return f"Config({self.source!r}, sections={list(self.data)})"


_MISSING = object()


def load_config(source: str | os.PathLike[str] | Mapping[str, Any], overrides: Iterable[str] = ()) -> Config:
    """Read a YAML recipe (or take a dict) and apply ``a.b=value`` overrides."""
    if isinstance(source, Mapping):
        config = Config(source)
    else:
        config = Config(_read_yaml(Path(source)), str(source))
    for override in overrides:
        apply_override(config, override)
    return config


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(), Loader=_RecipeLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None
    return {} if data is None else data


def apply_override(config: Config, override: str) -> None:
    """Apply one ``a.b=value`` override; the value is typed (int, float, bool, null, list, string)."""
    key, separator, text = override.partition("=")
    if not separator or not key.strip():
        raise ConfigError(f"override {override!r} must look like section.key=value")
    key = key.strip()
    value = parse_value(text.strip())
    current = config.get(key)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    config.set(key, value)


def parse_value(text: str) -> Any:
    """Type a command-line value: ``3`` -> int, ``1e-3`` -> float, ``true`` -> bool, ``[1, 2]`` -> list."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none", "~"):
        return None
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [parse_value(item.strip()) for item in _split_list(inner)] if inner else []
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    for number_type in (int, float):
        try:
            return number_type(text)
        except ValueError:
            continue
    return text


def _split_list(text: str) -> list[str]:
    """Split on top-level commas, keeping nested brackets together."""
    items, depth, start = [], 0, 0
    for position, character in enumerate(text):
        depth += {"[": 1, "]": -1}.get(character, 0)
        if character == "," and depth == 0:
            items.append(text[start:position])
            start = position + 1
    items.append(text[start:])
    return items


def validate_section(section: Mapping[str, Any], registry: Registry, where: str, source: str = "<dict>") -> None:
    """Check a ``{name: ..., **kwargs}`` section against the registered builder's keyword arguments.

    Nested parts (``backbone``, ``neck``) given as mappings with a ``name`` are checked the same way.
    """
    if not isinstance(section, Mapping):
        raise ConfigError(f"{source}: {where!r} must be a mapping with a 'name', got {type(section).__name__}")
    if "name" not in section:
        raise ConfigError(
            f"{source}: {where!r} has no 'name'; expected one of the registered {registry.kind}s: "
            + ", ".join(registry.names())
        )
    try:
        builder = registry.get(section["name"])
    except KeyError as error:
        raise ConfigError(f"{source}: {where}.name: {error}") from None
    arguments = {key: value for key, value in section.items() if key != "name"}
    validate_keys(builder, arguments, f"{where} ({section['name']})", source)
    for key, value in arguments.items():
        if key in NESTED_PARTS and isinstance(value, Mapping) and "name" in value:
            validate_section(value, NESTED_PARTS[key], f"{where}.{key}", source)


def validate_keys(
    builder: Callable[..., Any], arguments: Mapping[str, Any], where: str, source: str = "<dict>"
) -> None:
    """Raise ``ConfigError`` for a key ``builder`` does not accept or a required key that is missing."""
    parameters = inspect.signature(builder).parameters
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return
    accepted = [
        name
        for name, parameter in parameters.items()
        if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    for key in arguments:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{source}: unknown key {key!r} in {where}; valid keys: {', '.join(accepted)}.{hint}"
            )
    missing = [
        name
        for name in accepted
        if parameters[name].default is inspect.Parameter.empty and name not in arguments
    ]
    if missing:
        raise ConfigError(f"{source}: {where} is missing required key(s): {', '.join(missing)}")


def build_from_section(section: Mapping[str, Any], registry: Registry, where: str, source: str = "<dict>") -> Any:
    """Validate a ``{name: ..., **kwargs}`` section and call its builder."""
    validate_section(section, registry, where, source)
    arguments = {key: copy.deepcopy(value) for key, value in section.items() if key != "name"}
    return registry.build(section["name"], **arguments)


def build_model(config: Config | Mapping[str, Any]) -> Any:
    """Build the model described by the ``model`` section of a recipe."""
    config = config if isinstance(config, Config) else Config(config)
    if "model" not in config.data:
        raise ConfigError(f"{config.source}: no 'model' section; expected model: {{name: ..., ...}}")
    return build_from_section(config.data["model"], MODELS, "model", config.source)
