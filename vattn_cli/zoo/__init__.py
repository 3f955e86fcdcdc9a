"""The model zoo: one backbone, pluggable attention schemes, presets, checkpoint import.

The names below load on first use (PEP 562), so ``import vattn_cli.zoo.catalog`` (names of
schemes, sizes and presets) stays free of torch and the CLI starts at once.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it
_EXPORTS = {
    "PRESETS": "catalog", "SIZES": "catalog", "get_scheme": "catalog", "list_models": "catalog",
    "list_schemes": "catalog", "register_scheme": "catalog",
    "create_model": "registry", "create_model_from_config": "registry", "token_count": "registry",
    "load_checkpoint": "checkpoints", "read_checkpoint": "checkpoints", "save_checkpoint": "checkpoints",
    "BlockArgs": "scheme", "Grid": "scheme", "PreNormBlock": "scheme", "SchemeBlock": "scheme",
    "SideBranch": "scheme", "SoftmaxBlock": "scheme",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
