"""CLI command modules. Each exposes ``register(app)``; add it to ``COMMANDS`` to wire it in."""

from __future__ import annotations

from collections.abc import Callable

import typer

from vattn_cli.commands import ablate as _ablate
from vattn_cli.commands import compare as _compare
from vattn_cli.commands import data as _data
from vattn_cli.commands import eval as _eval
from vattn_cli.commands import profile as _profile
from vattn_cli.commands import train as _train
from vattn_cli.commands import zoo as _zoo

COMMANDS: list[Callable[[typer.Typer], None]] = [
    _zoo.register,
    _profile.register,
    _ablate.register,
    _train.register,
    _eval.register,
    _data.register,
    _compare.register,
]
