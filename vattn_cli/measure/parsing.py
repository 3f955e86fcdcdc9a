"""Parsers of the measurement flags' values (``--repeats``, ``--max-memory``), without torch.

They live apart from :mod:`~vattn_cli.measure.timing` and :mod:`~vattn_cli.measure.memory` (which
need torch, and re-export them) so that a bad value fails with one line before torch is loaded.
"""

from __future__ import annotations

import re

from vattn_cli.errors import UsageError

MiB = 2**20
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str | int | None) -> int | None:
    """``2GB``, ``500MB``, ``1.5G``, ``800MiB`` -> bytes (units are powers of 1024)."""
    if text is None or text == "":
        return None
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", str(text).upper())
    if not match:
        raise UsageError(f"invalid --max-memory {text!r}; expected a size like 500MB, 2GB, 1.5G")
    value = float(match.group(1)) * _UNITS[match.group(2)]
    if value < 1 * MiB:
        raise UsageError(f"invalid --max-memory {text!r}; expected at least 1MB")
    return int(value)


def parse_repeats(value: str | int) -> int | str:
    """``--repeats``: a positive integer or ``auto``."""
    if isinstance(value, int) or str(value).strip().lower() != "auto":
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise UsageError(f"invalid --repeats {value!r}; expected a positive integer or 'auto'") from None
        if n < 1:
            raise UsageError(f"invalid --repeats {n}; expected a positive integer or 'auto'")
        return n
    return "auto"
