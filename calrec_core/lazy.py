"""Packages whose names load on first use (PEP 562), so importing a package costs nothing
until one of its names is used: the CLI and the pipeline client start without JAX or Beam."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable, list[str]]:
    """(``__getattr__``, ``__all__``) of ``package``, whose ``exports`` map each public name
    to the module that defines it."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return __getattr__, sorted(exports)
