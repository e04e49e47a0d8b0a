"""YAML recipes: load, override with ``--set a.b=value``, validate against builder signatures, dump.

A recipe is one YAML file per model/dataset (no inheritance: what you read is what runs). Its
sections that name a registered part hold that builder's keyword arguments::

    model:
      name: faster_rcnn_r18_fpn      # a name in MODELS (a Recipe: defaults for every part)
      num_classes: 5
      backbone:                      # a registered part: validated against BACKBONES' resnet18
        name: resnet18
        frozen_stages: 1
      rpn:                           # a settings part: validated against RPNSettings' fields
        nms_thresh: 0.6
    train:
      epochs: 12
      lr: 0.02

``load_config`` reads the file and applies overrides; a top-level section other than ``SECTIONS`` (``model``,
``data``, ``train``), in the file or a ``--set``, and a key given twice in one YAML mapping are errors naming
the file (and the ``--set``, or the line). ``validate_section`` checks every key of a
section against the registered builder's signature, so a misspelt key is an error that names the key,
the file and the valid keys instead of being silently ignored. Values are checked against the
parameter's annotation before anything is built (``float``, ``int | None``, ``Sequence[int]``, ``bool``,
``str``, ...; an int is accepted where a float is expected); a wrong-typed value is a ``ConfigError``
naming the file or the ``--set`` it came from, the key, the expected type and the value. Annotations
that are not plain data (modules, callables) or cannot be resolved are not checked. ``build_model``
needs nothing imported beforehand: the registries import the packages that register the built-in parts
on their first lookup (``structured.registry``), so ``import structured.config`` itself loads no model
code.

A model is built from parts, and its section holds one sub-section per part, each validated against that
part's own definition (errors name ``model.<part>.<key>``). A builder declares its parts in its signature:

- a parameter annotated ``Annotated[Mapping[str, Any], RegisteredPart(BACKBONES, ...)]`` takes a registered
  part's section, ``{name: resnet50, frozen_stages: 2, ...}``, validated against that builder (less the keys
  the model fills in itself, ``RegisteredPart.filled_by_model``);
- a parameter annotated with a frozen settings dataclass (``RPNSettings | Mapping[str, Any]``) takes a
  mapping of its fields, validated field by field (``settings_from`` makes the dataclass).

A ``Recipe`` is a registered model: a builder plus defaults for each part. The arguments a YAML recipe or
``--set`` gives are merged over those defaults one level deep: a part's mapping replaces only the keys it
names (``model: {rpn: {nms_thresh: 0.6}}`` keeps every other RPN default of the recipe); any other value —
a number, a list, ``null`` (``neck: null``: no neck) or a settings object — replaces the default whole.
Keys a recipe no longer takes (an old flat recipe's ``rpn_nms_thresh``) are an error that names where each
one goes now (``Recipe.moved_keys``).
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import difflib
import functools
import inspect
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from structured.io import write_text
from structured.registry import MODELS, Registry


class ConfigError(ValueError):
    """A recipe that cannot be used as written; the message names the file and the key."""


class _DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one YAML mapping (YAML would silently keep the last value)."""

    def __init__(self, key: Any, first_line: int, line: int) -> None:
        super().__init__(f"key {key!r} given twice")
        self.key, self.first_line, self.line = key, first_line, line


class _RecipeLoader(yaml.SafeLoader):
    """Safe YAML loader that also reads ``1e-3`` as a float (YAML 1.1 needs ``1.0e-3``) and refuses a key
    given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """The mapping of ``node``; ``_DuplicateKeyError`` for a scalar key it holds twice (merge keys aside)."""
        first_lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            if key in first_lines:
                raise _DuplicateKeyError(key, first_lines[key], line)
            first_lines[key] = line
        return super().construct_mapping(node, deep)


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
        self.overrides: dict[str, str] = {}
        """The ``--set`` text (``a.b=value``) behind each overridden dotted key, for error messages."""

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

    def overrides_under(self, section: str) -> dict[str, str]:
        """The ``--set`` texts of the keys directly inside ``section``, by key (``{"lr": "train.lr=abc"}``)."""
        return overrides_under(self.overrides, section)

    def origin(self, dotted_key: str) -> str:
        """Where the value of ``dotted_key`` came from, for errors: the file, and the ``--set`` that overrode it."""
        return _origin(self.source, self.overrides, dotted_key)

    def to_yaml(self) -> str:
        """The resolved recipe as YAML text."""
        return yaml.safe_dump(self.data, sort_keys=False, default_flow_style=None)

    def dump(self, path: str | os.PathLike[str]) -> Path:
        """Write the resolved recipe atomically to ``path``."""
        return write_text(self.to_yaml(), path)

    def __repr__(self) -> str:
        return f"Config({self.source!r}, sections={list(self.data)})"


_MISSING = object()

SECTIONS = ("model", "data", "train")
"""The top-level sections of a recipe: the model, its data (``structured.data.recipes``) and its training
(``structured.engine.trainer.TrainConfig``)."""


def load_config(source: str | os.PathLike[str] | Mapping[str, Any], overrides: Iterable[str] = ()) -> Config:
    """Read a YAML recipe (or take a dict) and apply ``a.b=value`` overrides; a section or an override
    outside ``SECTIONS`` is a ``ConfigError``."""
    if isinstance(source, Mapping):
        config = Config(source)
    else:
        config = Config(_read_yaml(Path(source)), str(source))
    for section in config.data:
        check_section(section, config.source)
    for override in overrides:
        apply_override(config, override)
    return config


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(), Loader=_RecipeLoader)
    except _DuplicateKeyError as error:
        raise ConfigError(f"{path}, line {error.line}: key {error.key!r} is given a second time (first on line "
                          f"{error.first_line}) in the same mapping; keep one") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None
    return {} if data is None else data


def apply_override(config: Config, override: str) -> None:
    """Apply one ``a.b=value`` override; the value is typed (int, float, bool, null, list, string)."""
    key, separator, text = override.partition("=")
    if not separator or not key.strip():
        raise ConfigError(f"override {override!r} must look like section.key=value")
    key = key.strip()
    check_section(key.split(".")[0], f"{config.source} (--set {override})")
    value = parse_value(text.strip())
    current = config.get(key)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    config.set(key, value)
    config.overrides[key] = f"{key}={text.strip()}"


def check_section(name: Any, origin: str) -> None:
    """Raise ``ConfigError`` naming ``origin`` (the file, or the ``--set``) when ``name`` is not in ``SECTIONS``."""
    if name not in SECTIONS:
        raise ConfigError(f"{origin}: unknown section {name!r}; valid sections: {', '.join(SECTIONS)}."
                          + _unknown_key_hint(str(name), list(SECTIONS), set()))


def overrides_under(overrides: Mapping[str, str], section: str) -> dict[str, str]:
    """The entries of ``overrides`` (dotted key -> ``--set`` text) directly inside ``section``, by key."""
    prefix = f"{section}."
    return {key[len(prefix):]: text for key, text in overrides.items()
            if key.startswith(prefix) and "." not in key[len(prefix):]}


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


def validate_section(section: Mapping[str, Any], registry: Registry, where: str, source: str = "<dict>",
                     overrides: Mapping[str, str] | None = None, filled_by_model: Iterable[str] = ()) -> None:
    """Check a ``{name: ..., **kwargs}`` section against the registered builder's keyword arguments and types.

    ``where`` is the section's dotted key (``model``); ``overrides`` the recipe's ``--set`` texts by dotted
    key (``Config.overrides``), named in errors; ``filled_by_model`` the builder's arguments that the
    enclosing model passes itself (not accepted in the section). A ``Recipe`` is checked with its defaults
    merged in; its parts (see the module docstring) are checked the same way, each under its own dotted key.
    """
    if not isinstance(section, Mapping):
        raise ConfigError(f"{source}: {where!r} must be a mapping with a 'name', got {type(section).__name__}")
    if "name" not in section:
        raise ConfigError(
            f"{source}: {where!r} has no 'name'; expected one of the registered {registry.kind}s: "
            + ", ".join(registry.names())
        )
    overrides = overrides or {}
    if not isinstance(section["name"], str):
        origin = _origin(source, overrides_under(overrides, where), "name")
        raise ConfigError(f"{origin}: {where}.name must be a string naming a registered {registry.kind}, "
                          f"got {section['name']!r}")
    try:
        builder = registry.get(section["name"])
    except KeyError as error:
        raise ConfigError(f"{source}: {where}.name: {error}") from None
    arguments = {key: value for key, value in section.items() if key != "name"}
    label = f"{where} ({section['name']})"
    if isinstance(builder, Recipe):
        moved = builder.moved_keys_message(arguments)
        if moved:
            raise ConfigError(f"{source}: {label} {moved}")
        builder, arguments = builder.builder, builder.resolve(arguments)
    validate_keys(builder, arguments, label, source, overrides_under(overrides, where), filled_by_model)
    validate_parts(builder, arguments, where, source, overrides)


def validate_parts(builder: Callable[..., Any], arguments: Mapping[str, Any], where: str, source: str = "<dict>",
                   overrides: Mapping[str, str] | None = None) -> None:
    """Check each part mapping in ``arguments``: a registered part as a section, a settings part field by field."""
    overrides = overrides or {}
    registered, hints = registered_parts(builder), _parameter_hints(builder)
    for key, value in arguments.items():
        if not isinstance(value, Mapping):
            continue
        dotted = f"{where}.{key}"
        settings_class = settings_class_of(hints.get(key, Any))
        if key in registered:
            validate_section(value, registered[key].registry, dotted, source, overrides,
                             registered[key].filled_by_model)
        elif settings_class is not None:
            validate_keys(settings_class, value, dotted, source, overrides_under(overrides, dotted))


def validate_keys(
    builder: Callable[..., Any], arguments: Mapping[str, Any], where: str, source: str = "<dict>",
    overrides: Mapping[str, str] | None = None, filled_by_model: Iterable[str] = (),
) -> None:
    """Raise ``ConfigError`` for a key ``builder`` does not accept, a required key that is missing, or a
    value whose type does not fit the parameter's annotation (part mappings are checked by ``validate_parts``).

    ``overrides`` maps keys to the ``--set`` text they came from, named in the error beside the file.
    ``filled_by_model``: parameters the caller passes itself, neither accepted nor required here.
    """
    parameters = inspect.signature(builder).parameters
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return
    filled = set(filled_by_model)
    accepted = [
        name
        for name, parameter in parameters.items()
        if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and name not in filled
    ]
    for key in arguments:
        if key not in accepted:
            raise ConfigError(f"{_origin(source, overrides or {}, key)}: unknown key {key!r} in {where}; "
                              f"valid keys: {', '.join(accepted)}."
                              + _unknown_key_hint(key, accepted, filled))
    missing = [
        name
        for name in accepted
        if parameters[name].default is inspect.Parameter.empty and name not in arguments
    ]
    if missing:
        raise ConfigError(f"{source}: {where} is missing required key(s): {', '.join(missing)}")
    check_types(builder, arguments, where, source, overrides or {})


def _unknown_key_hint(key: str, accepted: list[str], filled: set[str]) -> str:
    if key in filled:
        return f" The model sets {key!r} itself."
    close = difflib.get_close_matches(key, accepted, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_types(builder: Callable[..., Any], arguments: Mapping[str, Any], where: str, source: str,
                overrides: Mapping[str, str]) -> None:
    """Raise ``ConfigError`` for the first value of ``arguments`` that does not fit ``builder``'s annotation."""
    hints = _parameter_hints(builder)
    for key, value in arguments.items():
        expected = hints.get(key, Any)
        if not value_fits(value, expected):
            raise ConfigError(f"{_origin(source, overrides, key)}: {key!r} in {where} must be {type_name(expected)}, "
                              f"got {value!r} ({type(value).__name__})")


def _origin(source: str, overrides: Mapping[str, str], key: str) -> str:
    """Where the value of ``key`` came from: the file, and the ``--set`` when it was overridden."""
    return f"{source} (--set {overrides[key]})" if key in overrides else source


def _parameter_hints(builder: Callable[..., Any], include_extras: bool = False) -> dict[str, Any]:
    """The resolved annotations of ``builder``'s parameters; ``{}`` when they cannot be resolved."""
    while isinstance(builder, functools.partial):
        builder = builder.func
    annotated = builder if dataclasses.is_dataclass(builder) or not inspect.isclass(builder) else builder.__init__
    try:
        return typing.get_type_hints(annotated, include_extras=include_extras)
    except (NameError, TypeError):
        return {}


@dataclass(frozen=True)
class RegisteredPart:
    """Marks a builder parameter as a registered part's section:
    ``backbone: Annotated[Mapping[str, Any], RegisteredPart(BACKBONES, filled_by_model=("classifier",))]``.

    ``filled_by_model``: the part builder's arguments that the model passes itself (the backbone's
    ``classifier``, the neck's ``in_channels``); a section that sets one is an error.
    """

    registry: Registry
    filled_by_model: tuple[str, ...] = ()


def registered_parts(builder: Callable[..., Any]) -> dict[str, RegisteredPart]:
    """``builder``'s parameters annotated with a ``RegisteredPart``, by name."""
    parts = {}
    for name, hint in _parameter_hints(builder, include_extras=True).items():
        markers = [item for item in getattr(hint, "__metadata__", ()) if isinstance(item, RegisteredPart)]
        if markers:
            parts[name] = markers[0]
    return parts


def settings_class_of(annotation: Any) -> type | None:
    """The settings dataclass an annotation names (itself, or an arm of a union), else ``None``."""
    arms = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    for candidate in (annotation, *arms):
        if inspect.isclass(candidate) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


Settings = TypeVar("Settings")


def settings_from(settings_class: type[Settings], value: Settings | Mapping[str, Any], where: str) -> Settings:
    """``value`` as a ``settings_class`` instance: itself, or built from a mapping of its fields (checked by
    ``validate_keys``; an unknown key or a wrong type is a ``ConfigError`` naming ``where`` and the key). A
    ``ValueError`` of the class's own checks (``__post_init__``, its message starting with the field's name)
    becomes a ``ConfigError`` under ``where``: ``roi_heads.score_thresh must be in [0, 1], got 2``."""
    if isinstance(value, settings_class):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping of {settings_class.__name__} fields, got {value!r}")
    validate_keys(settings_class, value, where)
    try:
        return settings_class(**value)
    except ValueError as error:
        raise ConfigError(f"{where}.{error}") from None


_SEQUENCE_ORIGINS = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence)


def value_fits(value: Any, expected: Any) -> bool:
    """Whether a YAML / ``--set`` value fits the annotation ``expected``; annotations other than plain data
    (``bool``, ``int``, ``float``, ``str``, ``None``, unions, sequences, mappings, literals) accept anything.
    A settings dataclass accepts an instance or a mapping (whose fields ``validate_parts`` checks)."""
    origin, arguments = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(value_fits(value, arm) for arm in arguments)
    if expected is type(None):
        return value is None
    if expected in (bool, int, float, str):
        return _scalar_fits(value, expected)
    if origin is typing.Literal:
        return value in arguments
    if origin in _SEQUENCE_ORIGINS:
        return _sequence_fits(value, origin, arguments)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, Mapping) and all(value_fits(item, arguments[-1] if arguments else Any)
                                                  for item in value.values())
    if inspect.isclass(expected) and dataclasses.is_dataclass(expected):
        return isinstance(value, (expected, Mapping))
    return True


def _scalar_fits(value: Any, expected: type) -> bool:
    if isinstance(value, bool):
        return expected is bool
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


def _sequence_fits(value: Any, origin: Any, arguments: tuple) -> bool:
    if not isinstance(value, (list, tuple)):
        return False
    if origin is tuple and arguments and arguments[-1] is not Ellipsis:
        return len(value) == len(arguments) and all(map(value_fits, value, arguments))
    item_type = arguments[0] if arguments else Any
    return all(value_fits(item, item_type) for item in value)


def type_name(expected: Any) -> str:
    """A short readable form of an annotation: ``float``, ``int | None``, ``Sequence[int]``."""
    origin, arguments = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arm) for arm in arguments)
    if expected is type(None):
        return "None"
    if expected is Ellipsis:
        return "..."
    if origin is typing.Literal:
        return " or ".join(repr(choice) for choice in arguments)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in arguments)}]"
    return getattr(expected, "__name__", str(expected))


def merge_parts(defaults: Mapping[str, Any], arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``arguments`` over ``defaults``, one level deep: a mapping over a mapping replaces only the keys it
    names; any other value (a number, a list, ``None``, a settings object) replaces the default whole."""
    merged = copy.deepcopy(dict(defaults))
    for key, value in arguments.items():
        default = merged.get(key)
        both_mappings = isinstance(default, Mapping) and isinstance(value, Mapping)
        merged[key] = copy.deepcopy({**default, **value} if both_mappings else value)
    return merged


TASKS = ("detection", "instance", "semantic")
"""What a model does: boxes (detection), boxes and instance masks (instance), a class per pixel (semantic)."""


def model_task(config: Config | Mapping[str, Any]) -> str:
    """The task of the recipe's registered model (``Recipe.task``; ``"detection"`` for a plain builder)."""
    data = config.data if isinstance(config, Config) else config
    model = data.get("model")
    if not isinstance(model, Mapping) or not isinstance(model.get("name"), str):
        raise ConfigError(f"{getattr(config, 'source', '<dict>')}: no 'model' section with a 'name'")
    return getattr(MODELS.get(model["name"]), "task", "detection")


def a_task_model(task: str) -> str:
    """``"a detection model"``, ``"an instance model"``: a model of ``task`` in a sentence."""
    return f"{'an' if task[:1].lower() in 'aeiou' else 'a'} {task} model"


class Recipe:
    """A registered model: ``builder`` with ``defaults`` per part, merged under the arguments given.

    The merge rule is ``merge_parts``'s: a mapping over a mapping default replaces only the keys it names,
    any other value replaces the default whole. ``moved_keys`` maps keys the builder no longer takes
    to their new dotted place (``rpn_nms_thresh`` -> ``rpn.nms_thresh``); giving one is a ``ConfigError``
    that lists where each goes. The recipe's signature is the builder's with the recipe's defaults.
    ``task`` is what the model does (one of ``TASKS``): it decides, before anything is built, what the
    data must load (instance masks) and what a checkpoint says it holds.
    """

    def __init__(self, builder: Callable[..., Any], defaults: Mapping[str, Any],
                 moved_keys: Mapping[str, str] | None = None, task: str = "detection") -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.task = task
        self.builder = builder
        self.defaults = copy.deepcopy(dict(defaults))
        self.moved_keys = dict(moved_keys or {})
        parameters = inspect.signature(builder).parameters.values()
        self.__signature__ = inspect.Signature(
            [parameter.replace(default=self.defaults.get(parameter.name, parameter.default))
             for parameter in parameters])

    def resolve(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The builder's arguments: ``arguments`` merged over the defaults (``merge_parts``)."""
        return merge_parts(self.defaults, arguments)

    def moved_keys_message(self, arguments: Mapping[str, Any]) -> str | None:
        """Where each moved key of ``arguments`` goes now (and a part given as a bare name), or ``None``."""
        moves = [f"{key} -> {self.moved_keys[key]}" for key in arguments if key in self.moved_keys]
        if not moves:
            return None
        moves += [f"{key}: {value} -> {key}.name" for key, value in arguments.items()
                  if key in registered_parts(self.builder) and isinstance(value, str)]
        parts = ", ".join(self.part_names())
        return (f"uses keys of the old flat recipe format; each part ({parts}) now has its own sub-section. "
                "Regroup them: " + ", ".join(moves))

    def part_names(self) -> list[str]:
        """The builder's parameters that are parts: registered parts and settings dataclasses."""
        hints = _parameter_hints(self.builder)
        registered = registered_parts(self.builder)
        return [name for name in inspect.signature(self.builder).parameters
                if name in registered or settings_class_of(hints.get(name, Any)) is not None]

    def __call__(self, **arguments: Any) -> Any:
        """Build the model from ``arguments`` merged over the recipe's defaults."""
        moved = self.moved_keys_message(arguments)
        if moved:
            raise ConfigError(f"model {moved}")
        return self.builder(**self.resolve(arguments))

    def __repr__(self) -> str:
        return f"Recipe({getattr(self.builder, '__name__', self.builder)!r}, {self.defaults!r})"


def build_from_section(section: Mapping[str, Any], registry: Registry, where: str, source: str = "<dict>",
                       overrides: Mapping[str, str] | None = None) -> Any:
    """Validate a ``{name: ..., **kwargs}`` section (see ``validate_section``) and call its builder; a
    ``ValueError`` of the builder (values that do not fit together) becomes a ``ConfigError`` naming ``source``."""
    validate_section(section, registry, where, source, overrides)
    arguments = {key: copy.deepcopy(value) for key, value in section.items() if key != "name"}
    try:
        return registry.build(section["name"], **arguments)
    except ValueError as error:
        raise ConfigError(f"{source}: {where} ({section['name']}): {error}") from error


def build_model(config: Config | Mapping[str, Any]) -> Any:
    """Build the model described by the ``model`` section of a recipe."""
    config = config if isinstance(config, Config) else Config(config)
    if "model" not in config.data:
        raise ConfigError(f"{config.source}: no 'model' section; expected model: {{name: ..., ...}}")
    return build_from_section(config.data["model"], MODELS, "model", config.source, config.overrides)
