"""Flag parsing shared by the commands: comma lists, choices, schemes, and "given" values.

Every parser raises :class:`~vattn_cli.errors.UsageError` naming the flag, the bad value and
what is accepted, so the CLI can print one line and exit 2. Nothing here imports torch, numpy or
pandas: usage errors and ``--help`` answer at once. Device and seeds are in
:mod:`vattn_cli.runtime` (the engine needs them too, and must not import the CLI).
"""

from __future__ import annotations

from typing import Any

from vattn_cli.errors import UsageError, one_of


def split_list(flag: str, text: str) -> list[str]:
    """Split a comma-separated flag value, refusing empty items."""
    items = [item.strip() for item in str(text).split(",")]
    if not items or any(not item for item in items):
        raise UsageError(f"invalid {flag} {text!r}; expected a comma-separated list")
    return items


def int_list(flag: str, text: str, minimum: int = 1) -> list[int]:
    """Parse ``8,32,96`` into ints, each at least ``minimum``."""
    values = []
    for item in split_list(flag, text):
        try:
            value = int(item)
        except ValueError:
            raise UsageError(f"invalid {flag} {item!r}; expected integers >= {minimum}") from None
        if value < minimum:
            raise UsageError(f"invalid {flag} {value}; expected integers >= {minimum}")
        values.append(value)
    return values


def choice_list(flag: str, text: str, accepted: list[str]) -> list[str]:
    """Parse a list of names from ``accepted``; ``all`` expands to every accepted name."""
    items = split_list(flag, text)
    if items == ["all"]:
        return list(accepted)
    for item in items:
        if item not in accepted:
            raise one_of(flag, item, accepted + ["all"])
    return items


def one_choice(flag: str, text: str, accepted: list[str]) -> str:
    """A single name from ``accepted`` (where a command takes one value, not a list)."""
    items = split_list(flag, text)
    if len(items) != 1:
        raise UsageError(f"invalid {flag} {text!r}; expected one value (accepted: {', '.join(accepted)})")
    if items[0] not in accepted:
        raise one_of(flag, items[0], accepted)
    return items[0]


def scheme_list(flag: str, text: str) -> list[str]:
    """Parse a scheme list: registered names, import paths ``module.path:Class``, and ``all``.

    ``all`` (every registered and discovered scheme) may sit beside import paths
    (``all,my_mod:MyAttention``). Each is checked now, so a bad one fails with one line before any
    work starts; a known name is checked without importing torch, an import path is imported.
    """
    from vattn_cli.zoo.catalog import resolve_scheme_names

    return resolve_scheme_names(split_list(flag, text), label=flag)


def given(**values: Any) -> dict[str, Any]:
    """The flags the user gave (not None): passed on, so the library's defaults fill the rest.

    Each default has one home, the library's config object or function; the CLI never retypes it.
    """
    return {name: value for name, value in values.items() if value is not None}


def default_text(value: Any) -> str:
    """A library default as help text shows it: ``8,32`` for a tuple, ``none`` for None."""
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)
