"""Flag parsing shared by the commands: comma lists, devices, seeds.

Every parser raises :class:`~vattn_cli.errors.UsageError` naming the flag, the bad value and
what is accepted, so the CLI can print one line and exit 2.
"""

from __future__ import annotations

import random

import numpy as np
import torch

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


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a usage error."""
    if name not in ("auto", "cpu", "cuda"):
        raise one_of("--device", name, ["auto", "cpu", "cuda"])
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("invalid --device 'cuda': no CUDA device is available; use cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a run repeats."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def scheme_list(flag: str, text: str) -> list[str]:
    """Parse a scheme list: registered names, import paths ``module.path:Class``, and ``all``.

    ``all`` (every registered and discovered scheme) may sit beside import paths
    (``all,my_mod:MyAttention``). Each is resolved now (an import path is imported and checked), so a bad one fails with one
    line before any work starts; ``all`` is every registered and discovered scheme.
    """
    from vattn_cli.zoo.registry import resolve_scheme_names

    return resolve_scheme_names(split_list(flag, text), label=flag)
