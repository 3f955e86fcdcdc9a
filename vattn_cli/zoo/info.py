"""Facts about the zoo for ``vattn zoo``: schemes, sizes and presets with parameter counts.

Models are built on the ``meta`` device, so counting a 100M-parameter model allocates nothing
and takes milliseconds.
"""

from __future__ import annotations

import pandas as pd
import torch

from vattn_cli.zoo.registry import DEFAULTS, PRESETS, SIZES, create_model, list_schemes, scheme_entry, token_count


def count_params(name: str, **kwargs) -> int:
    """Parameters of ``create_model(name, **kwargs)``, counted without allocating them."""
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    return sum(p.numel() for p in model.parameters())


def zoo_frame(size: str = "base", frames: int = 8, img_size: int = 224, patch: int = 16) -> pd.DataFrame:
    """One row per scheme, size and preset, with parameters at the given setting."""
    rows = []
    for name in list_schemes():
        entry = scheme_entry(name)
        rows.append({
            "kind": "scheme", "name": name, "scheme": name, "size": size, "frames": frames,
            "img_size": img_size, "patch": patch,
            "tokens": token_count(name, frames, img_size, patch),
            "params_m": count_params(name, size=size, frames=frames, img_size=img_size, patch=patch) / 1e6,
            "source": entry.source,
            "options": ", ".join(f"{k}={v}" for k, v in entry.options.items()),
            "description": entry.cls.description,
        })
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
