"""Facts about the zoo for ``vattn zoo``: schemes, sizes and presets with parameter counts.

Models are built on the ``meta`` device, so counting a 100M-parameter model allocates nothing
and takes milliseconds.
"""

from __future__ import annotations

import pandas as pd
import torch

from vattn_cli.errors import UsageError
from vattn_cli.zoo import external
from vattn_cli.zoo.registry import DEFAULTS, PRESETS, SIZES, create_model, list_schemes, scheme_entry, token_count


def count_params(name: str, **kwargs) -> int:
    """Parameters of ``create_model(name, **kwargs)``, counted without allocating them."""
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    return sum(p.numel() for p in model.parameters())


def _scheme_row(name: str, size: str, frames: int, img_size: int, patch: int, tubelet: int = 1) -> dict:
    entry = scheme_entry(name)
    extra = {"tubelet": tubelet} if tubelet != 1 else {}
    return {
        "kind": "scheme", "name": name, "scheme": name, "size": size, "frames": frames,
        "img_size": img_size, "patch": patch, **extra,
        "tokens": token_count(name, frames, img_size, patch, tubelet),
        "params_m": count_params(name, size=size, frames=frames, img_size=img_size, patch=patch, **extra) / 1e6,
        "source": entry.source,
        "options": ", ".join(f"{k}={v}" for k, v in entry.options.items()),
        "description": entry.cls.description,
    }


def zoo_frame(
    size: str = "base", frames: int = 8, img_size: int = 224, patch: int = 16, schemes: list[str] | None = None,
    tubelet: int = 1,
) -> pd.DataFrame:
    """One row per scheme, size and preset, with parameters at the given setting.

    ``tubelet`` > 1 counts the schemes with a tubelet (3D) patch embedding and adds a
    ``tubelet`` column to their rows (sizes and presets stay per-frame).

    With ``schemes`` (names or import paths), only those schemes, and any of them that cannot
    be loaded is a usage error. Without, every scheme is listed, sizes and presets too, and an
    external scheme that fails to load (a broken plugin) shows its error in its row instead of
    hiding the rest of the zoo.
    """
    rows = []
    for name in schemes or list_schemes():
        try:
            rows.append(_scheme_row(name, size, frames, img_size, patch, tubelet))
        except UsageError as exc:
            if schemes:
                raise
            rows.append({"kind": "scheme", "name": name, "scheme": name, "size": size, "frames": frames,
                         "img_size": img_size, "patch": patch, "source": external.pending_source(name) or "external",
                         "description": f"error: {exc}"})
    if schemes:
        return pd.DataFrame(rows)
    for name, spec in SIZES.items():
        rows.append({
            "kind": "size", "name": name, "scheme": "divided", "size": name,
            "frames": DEFAULTS["frames"], "img_size": DEFAULTS["img_size"], "patch": DEFAULTS["patch"],
            "tokens": token_count("divided", DEFAULTS["frames"], DEFAULTS["img_size"], DEFAULTS["patch"]),
            "params_m": count_params("divided", size=name) / 1e6, "source": "builtin", "options": "",
            "description": f"dim {spec.dim}, depth {spec.depth}, {spec.num_heads} heads, MLP {int(spec.dim * spec.mlp_ratio)}",
        })
    for name, preset in PRESETS.items():
        rows.append({
            "kind": "preset", "name": name, "scheme": preset.scheme, "size": preset.size,
            "frames": preset.frames, "img_size": preset.img_size, "patch": preset.patch,
            "tokens": token_count(preset.scheme, preset.frames, preset.img_size, preset.patch),
            "params_m": count_params(name) / 1e6, "source": "builtin", "options": "",
            "description": preset.description,
        })
    return pd.DataFrame(rows)
