"""Lazy package attributes (PEP 562): a package's public names are imported on first access.

A package ``__init__`` that re-exports names from its modules would import all of them, and everything
they import, as soon as any one module of the package is imported. Instead it lists where each public
name lives and installs the two module hooks this module builds::

    __all__ = ["Trainer", "load_checkpoint"]
    __getattr__, __dir__ = lazy_attributes(__name__, {
        "Trainer": "structured.engine.trainer",
        "load_checkpoint": "structured.engine.checkpoint",
    })

``package.Trainer`` and ``from package import Trainer`` then import ``structured.engine.trainer`` on
first use and cache the value in the package's namespace. Nothing is registered as a side effect here:
registries find their builders themselves (``structured.registry``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_attributes(
    package: str, exports: Mapping[str, str], subpackages: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a public name to its defining module.

    ``subpackages`` are names of sub-packages reachable as attributes (``package.name``) before anyone
    imported them.
    """
    exports = dict(exports)
    subpackages = frozenset(subpackages)

    def __getattr__(name: str) -> Any:
        """Import the module that defines ``name`` (or the sub-package ``name``) and cache the value."""
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
        elif name in subpackages:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        """The package's loaded attributes together with the names it can still import."""
        return sorted({*vars(sys.modules[package]), *exports, *subpackages})

    return __getattr__, __dir__
