"""The model factory: ``create_model`` and friends build a backbone with a registered scheme.

Names (schemes, sizes, presets) and setting checks live in the torch-free
:mod:`vattn_cli.zoo.catalog`; this module adds what needs the classes themselves. The catalog's
names are re-exported here, so ``from vattn_cli.zoo.registry import SIZES`` keeps working.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from vattn_cli.errors import UsageError
from vattn_cli.zoo.backbone import VideoTransformer, VideoTransformerConfig
from vattn_cli.zoo.catalog import (  # noqa: F401  (re-exported)
    _SCHEMES,
    DEFAULTS,
    PRESETS,
    SIZES,
    ModelSize,
    Preset,
    SchemeEntry,
    get_scheme,
    list_models,
    list_schemes,
    refresh_external,
    register_scheme,
    resolve_model,
    resolve_scheme_names,
    scheme_entry,
    unregister_scheme,
    validate_setting,
)
from vattn_cli.zoo.conformance import probe_first_forward
from vattn_cli.zoo.scheme import own_options as scheme_options


def create_model(
    name: str,
    size: str | None = None,
    frames: int | None = None,
    img_size: int | None = None,
    patch: int | None = None,
    num_classes: int | None = None,
    **kwargs: Any,
):
    """Build a video transformer from a scheme or preset name.

    ``name`` is a scheme (``divided``) or a preset (``timesformer``). ``kwargs`` may override
    the size's architecture (``dim``, ``depth``, ``num_heads``, ``mlp_ratio``, ``qkv_bias``,
    ``norm_eps``), set training options (``drop_rate``, ``attn_drop_rate``,
    ``drop_path_rate``), the position embeddings (``pos_embed``: ``space-time``, ``space``,
    ``none``, ``joint``, ``sincos``), the tubelet embedding (``tubelet``: frames per patch, a 3D
    convolution when > 1; ``tubelet_init``: ``central`` or ``repeat``, how 2D patch weights loaded
    into it are inflated), or pass the scheme's own options (see ``vattn zoo``).
    """
    if name in PRESETS:
        setting = resolve_model(name, None, size, frames, img_size, patch, num_classes)
    else:
        setting = resolve_model(None, name, size, frames, img_size, patch, num_classes)
    validate_setting(setting["scheme"], setting["size"], setting["frames"], setting["img_size"], setting["patch"],
                     kwargs.get("tubelet", 1))
    arch = asdict(SIZES[setting["size"]])
    fields = set(VideoTransformerConfig.__dataclass_fields__)
    options = dict(kwargs.pop("scheme_options", None) or {})
    for key in list(kwargs):
        if key in fields:
            arch[key] = kwargs.pop(key)
    known = scheme_options(get_scheme(setting["scheme"]))
    for key, value in kwargs.items():
        if key not in known:
            raise UsageError(
                f"unknown option {key!r} for scheme {setting['scheme']!r}; accepted: "
                + ", ".join(sorted(known) + sorted(fields - {"scheme", "scheme_options"}))
            )
        options[key] = value
    arch.update(
        scheme=setting["scheme"], size=setting["size"], model=setting["model"],
        frames=setting["frames"], img_size=setting["img_size"], patch=setting["patch"],
        num_classes=setting["num_classes"], scheme_options=options,
    )
    return build_model(VideoTransformerConfig(**arch))


def build_model(config):
    """Build the model a ``VideoTransformerConfig`` describes; an external scheme that breaks
    the interface gets one clear error.

    The first-forward probe runs once here, for external schemes only: the forward pass itself
    stays unwrapped, so normal runs pay nothing.
    """
    entry = scheme_entry(config.scheme, allow_import=False)  # a config never imports code
    if not entry.external:
        return VideoTransformer(config, entry.cls)
    try:
        model = VideoTransformer(config, entry.cls)
    except Exception as exc:
        raise UsageError(
            f"scheme {entry.name!r} ({entry.source}): building its block failed: {type(exc).__name__}: {exc}"
        ) from None
    probe_first_forward(entry, model)
    return model


def create_model_from_config(config: dict[str, Any]):
    """Rebuild a model from the ``config`` dict saved with it (``model.config``)."""
    fields = VideoTransformerConfig.__dataclass_fields__
    unknown = set(config) - set(fields)
    if unknown:
        raise UsageError(f"checkpoint config has unknown keys: {', '.join(sorted(unknown))}")
    scheme_entry(config["scheme"], allow_import=False)  # a file never triggers an import
    return build_model(VideoTransformerConfig(**config))


def token_count(scheme: str, frames: int, img_size: int, patch: int, tubelet: int = 1, pool: str = "auto") -> int:
    """Tokens a clip becomes: ``(frames/tubelet) * (img_size/patch)^2``, +1 where the scheme has a CLS token
    (none with ``pool="mean"``, VideoMAE's pooling, which drops it)."""
    cls_mode = "none" if pool == "mean" else get_scheme(scheme).cls_token
    return (frames // tubelet) * (img_size // patch) ** 2 + (0 if cls_mode == "none" else 1)
