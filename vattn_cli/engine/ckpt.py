"""Where the engine gets checkpoint I/O from: ``vattn_cli.zoo.checkpoints``.

Until that module is merged, an interim copy with the same signatures stands in.
"""

from __future__ import annotations

from types import ModuleType


def checkpoints() -> ModuleType:
    try:
        from vattn_cli.zoo import checkpoints as module
    except ImportError:
        from vattn_cli.engine import _interim_checkpoints as module
    return module
