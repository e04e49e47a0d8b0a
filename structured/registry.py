"""Name -> builder registries for backbones, necks and models.

A registry is a dict with a decorator. Builders register themselves where they are defined
(``@BACKBONES.register("resnet50")``), and each package's ``__init__`` imports its modules, so importing
the package registers all of its builders.

Which packages those are is written here, next to each registry (``defined_in``): the first lookup
(``get``, ``build``, ``names``, ``in``, ``len``) imports them with a plain ``importlib.import_module``.
So ``list_models()`` and ``build_model`` see every built-in backbone, neck and model whatever a user
imported first (``structured.config``, ``structured.registry`` or ``structured.backbones.resnet``),
and importing this module alone stays cheap. A failed lookup lists the registered names and the closest
match, so a typo in a config never surfaces as a bare ``KeyError``.

A registry may also resolve a whole namespace of names it does not list: ``register_prefix("timm:",
resolve)`` makes ``get("timm:xception41")`` return ``resolve("xception41")``, while ``names()`` keeps
listing the registered names only. A resolver raises ``UnknownNameError`` for a name it does not know and
``MissingExtraError`` when the optional package it needs is not installed.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

Builder = TypeVar("Builder", bound=Callable[..., Any])


class UnknownNameError(KeyError):
    """A name that is not registered; the message lists the registered names."""

    def __str__(self) -> str:
        return str(self.args[0])


class MissingExtraError(ModuleNotFoundError):
    """A name that needs an optional dependency (an extra of the package) which is not installed."""


class Registry:
    """A mapping from names to builders (classes or functions) of one kind of part.

    ``defined_in`` names the packages whose import registers the built-in builders of this kind; every
    lookup imports them first (a no-op once they are in ``sys.modules``).
    """

    def __init__(self, kind: str, defined_in: Sequence[str] = ()) -> None:
        self.kind = kind
        self.defined_in = tuple(defined_in)
        self._builders: dict[str, Callable[..., Any]] = {}
        self._prefixes: dict[str, tuple[Callable[[str], Callable[..., Any]], str]] = {}

    def _import_definitions(self) -> None:
        for package in self.defined_in:
            importlib.import_module(package)

    def register(self, name: str | None = None) -> Callable[[Builder], Builder]:
        """Decorator registering a builder under ``name`` (default: the builder's ``__name__``)."""

        def add(builder: Builder) -> Builder:
            key = name or builder.__name__
            if key in self._builders and self._builders[key] is not builder:
                raise ValueError(f"{self.kind} {key!r} is already registered by {self._builders[key]!r}")
            self._builders[key] = builder
            return builder

        return add

    def register_prefix(self, prefix: str, resolve: Callable[[str], Callable[..., Any]], described: str) -> None:
        """Resolve every name ``<prefix><rest>`` with ``resolve(rest)``, which returns the builder.

        ``described`` says what ``rest`` may be (``"a timm model name"``), for the unknown-name message.
        """
        if prefix in self._prefixes:
            raise ValueError(f"{self.kind} prefix {prefix!r} is already registered")
        self._prefixes[prefix] = (resolve, described)

    def get(self, name: str) -> Callable[..., Any]:
        """The builder registered under ``name``, or resolved by its prefix; an unknown name raises
        ``UnknownNameError``."""
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a string, got {type(name).__name__}: {name!r}")
        self._import_definitions()
        if name in self._builders:
            return self._builders[name]
        for prefix, (resolve, _) in self._prefixes.items():
            if name.startswith(prefix):
                return resolve(name[len(prefix) :])
        raise UnknownNameError(self._unknown_message(name))

    def build(self, name: str, **kwargs: Any) -> Any:
        """Call the builder registered under ``name`` with keyword arguments."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._import_definitions()
        return sorted(self._builders)

    def _unknown_message(self, name: str) -> str:
        known = ", ".join(self.names()) or "(none registered)"
        message = f"unknown {self.kind} {name!r}; registered {self.kind}s: {known}"
        message += "".join(f"; or {prefix}<{described}>" for prefix, (_, described) in self._prefixes.items())
        close = difflib.get_close_matches(name, self._builders, n=1)
        if close:
            message += f". Did you mean {close[0]!r}?"
        return message

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is registered (names under a prefix are resolved on ``get``, not listed)."""
        self._import_definitions()
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._import_definitions()
        return len(self._builders)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"


BACKBONES = Registry("backbone", defined_in=("structured.backbones",))
NECKS = Registry("neck", defined_in=("structured.backbones",))
MODELS = Registry("model", defined_in=("structured.detection", "structured.segmentation"))


def list_models() -> list[str]:
    """Names of every registered model."""
    return MODELS.names()
