"""Lazy package exports (PEP 562): ``from vattn_cli.engine import train`` without importing torch
until the name is used.

A package ``__init__`` that re-exports torch-heavy names would load torch for anything under it,
``vattn --help`` included. Instead it maps each public name to the module defining it, and
:func:`lazy_exports` gives it a module ``__getattr__`` that imports that module on first use.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Iterable, Mapping


class _ShadowingPackage(types.ModuleType):
    """A package whose exported function shares its name with a submodule (``engine.train``).

    Importing the submodule makes Python set the package attribute to the submodule; an eager
    ``__init__`` rebinds it to the function right after. Here the attribute is never set to the
    submodule, so ``from vattn_cli.engine import train`` is the function, as it always was.
    """

    _vattn_shadowed: frozenset[str] = frozenset()

    def __setattr__(self, name: str, value: object) -> None:
        if name in self._vattn_shadowed and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


def lazy_exports(
    package: str, exports: Mapping[str, str], shadowed: Iterable[str] = ()
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` exporting ``{name: defining module}``.

    ``shadowed``: exported names that are also submodule names; they stay the exported object.
    """
    module = sys.modules[package]
    shadowed = frozenset(shadowed)
    if shadowed:
        module.__class__ = _ShadowingPackage
        module._vattn_shadowed = shadowed

    def __getattr__(name: str) -> object:
        where = exports.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where), name)
        module.__dict__[name] = value  # cached: later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(module.__dict__) | set(exports))

    return __getattr__, __dir__
