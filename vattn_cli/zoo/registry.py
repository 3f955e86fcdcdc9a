"""Registry of schemes, sizes and presets, and ``create_model``.

Modelled on timm's registry: a scheme registers itself with ``@register_scheme("name")``;
everything else (CLI, profile, ablate, train, the tests parametrised over the registry)
discovers it by name.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from typing import Any

from vattn_cli.errors import UsageError, one_of
from vattn_cli.zoo import external


@dataclass(frozen=True)
class ModelSize:
    """Width and depth of the backbone."""

    dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class Preset:
    """A named model: scheme, size and the clip it was trained on."""

    scheme: str
    size: str
    frames: int
    img_size: int
    patch: int = 16
    num_classes: int = 400
    description: str = ""


@dataclass
class SchemeEntry:
    name: str
    cls: type
    # "builtin"; "entry-point:<dist>", "import:<module:Class>" or "python:<module>" when external
    source: str = "builtin"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def external(self) -> bool:
        return self.source != "builtin"


SIZES: dict[str, ModelSize] = {
    # Small enough to train in minutes on 2 CPU cores at 4-8 frames of 64-96 pixels.
    "tiny": ModelSize(dim=128, depth=4, num_heads=4),
    "small": ModelSize(dim=384, depth=12, num_heads=6),  # ViT-S/16
    "base": ModelSize(dim=768, depth=12, num_heads=12),  # ViT-B/16, TimeSformer's backbone
    "large": ModelSize(dim=1024, depth=24, num_heads=16),  # ViT-L/16
}

PRESETS: dict[str, Preset] = {
    "timesformer": Preset("divided", "base", 8, 224, description="TimeSformer, 8x224"),
    "timesformer-hr": Preset("divided", "base", 16, 448, description="TimeSformer-HR, 16x448"),
    "timesformer-l": Preset("divided", "base", 96, 224, description="TimeSformer-L, 96x224"),
}

#: Defaults for a model named by scheme rather than preset.
DEFAULTS = {"size": "base", "frames": 8, "img_size": 224, "patch": 16, "num_classes": 400}

_SCHEMES: dict[str, SchemeEntry] = {}
_BUILTINS_LOADED = False


def register_scheme(name: str, *, source: str | None = None):
    """Class decorator: register a :class:`~vattn_cli.zoo.scheme.SchemeBlock` under ``name``.

    ``source`` defaults to ``builtin`` for classes inside vattn and ``python:<module>`` for a
    class registered from the user's own code.
    """

    def decorate(cls: type) -> type:
        from vattn_cli.zoo.scheme import SchemeBlock

        if not (isinstance(cls, type) and issubclass(cls, SchemeBlock)):
            raise TypeError(f"scheme {name!r}: {cls!r} is not a SchemeBlock subclass")
        if name in _SCHEMES and _SCHEMES[name].cls is not cls:
            raise ValueError(f"scheme {name!r} is already registered by {_SCHEMES[name].cls!r}")
        where = source or ("builtin" if cls.__module__.startswith("vattn_cli.") else f"python:{cls.__module__}")
        _SCHEMES[name] = SchemeEntry(name=name, cls=cls, source=where, options=scheme_options(cls))
        if "scheme_name" not in cls.__dict__:  # the first name stays (an import path may alias it)
            cls.scheme_name = name
        return cls

    return decorate


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        import vattn_cli.zoo.schemes  # noqa: F401  (registers the built-in schemes)


def list_schemes() -> list[str]:
    """Every scheme name: built-in first, then registered and discovered external ones.

    Entry points (group ``vattn.schemes``) and ``VATTN_SCHEMES`` are listed without importing
    them; :func:`scheme_entry` imports one when it is used.
    """
    _load_builtins()
    return list(_SCHEMES) + external.discover(_SCHEMES)


def _register_external(name: str, obj: object, source: str) -> SchemeEntry:
    from vattn_cli.zoo.conformance import interface_problems

    problems = interface_problems(obj)
    if problems:
        raise UsageError(f"scheme {name!r} ({source}) breaks the scheme interface: " + "; ".join(problems))
    register_scheme(name, source=source)(obj)
    return _SCHEMES[name]


def scheme_entry(name: str, *, allow_import: bool = True, label: str = "scheme") -> SchemeEntry:
    """The registry entry for ``name``; a usage error naming the accepted schemes otherwise.

    ``name`` may be an import path ``module.path:Class``; it is imported and registered under
    that string on first use, unless ``allow_import`` is false: code that got the name from a
    file (a checkpoint's config) passes false, so a file never makes vattn import a module.
    Entry points and ``VATTN_SCHEMES`` are the user's own choice and load either way.
    """
    _load_builtins()
    if name in _SCHEMES:
        return _SCHEMES[name]
    external.discover(_SCHEMES)
    pending = external.take(name)
    if pending is not None:
        try:
            return _register_external(name, pending.load(), pending.source)
        except UsageError:
            external.put_back(pending)
            raise
    if external.is_import_path(name):
        if not allow_import:
            raise UsageError(
                f"scheme {name!r} is an external scheme that is not loaded, and vattn never imports "
                f"code because a file names it; if you trust it, name it yourself: --scheme {name} "
                f"or {external.ENV_VAR}={name}"
            )
        return _register_external(name, external.import_object(name), f"import:{name}")
    raise one_of(label, name, list_schemes() + ["module.path:Class"])


def get_scheme(name: str, *, allow_import: bool = True) -> type:
    """The block class registered as ``name`` (see :func:`scheme_entry`)."""
    return scheme_entry(name, allow_import=allow_import).cls


def unregister_scheme(name: str) -> None:
    """Remove ``name`` from the registry (tests registering throw-away schemes)."""
    _SCHEMES.pop(name, None)


def refresh_external() -> None:
    """Scan entry points and ``VATTN_SCHEMES`` again on the next look-up (e.g. after a plugin install)."""
    external.refresh()


_BLOCK_ARGS = {"self", "dim", "num_heads", "mlp_ratio", "qkv_bias", "norm_eps", "drop", "attn_drop", "drop_path"}


def scheme_options(cls: type) -> dict[str, Any]:
    """A scheme's own keyword options and their defaults (beyond the standard block args)."""
    params = inspect.signature(cls.__init__).parameters
    return {
        k: (None if p.default is inspect.Parameter.empty else p.default)
        for k, p in params.items()
        if k not in _BLOCK_ARGS and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


def list_models() -> list[str]:
    """Every name ``--model`` accepts: sizes and presets."""
    return list(SIZES) + list(PRESETS)


def resolve_model(
    model: str | None = None,
    scheme: str | None = None,
    size: str | None = None,
    frames: int | None = None,
    img_size: int | None = None,
    patch: int | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Combine a preset or size name with explicit values into one setting.

    Explicit values win over the preset's; missing ones fall back to :data:`DEFAULTS`.
    """
    setting: dict[str, Any] = {"model": model}
    if model is not None and model in PRESETS:
        setting.update({k: v for k, v in asdict(PRESETS[model]).items() if k != "description"})
    elif model is not None and model in SIZES:
        setting["size"] = model
    elif model is not None:
        raise one_of("model", model, list_models())
    explicit = {"scheme": scheme, "size": size, "frames": frames, "img_size": img_size,
                "patch": patch, "num_classes": num_classes}
    setting.update({k: v for k, v in explicit.items() if v is not None})
    for key, value in DEFAULTS.items():
        setting.setdefault(key, value)
    if "scheme" not in setting:
        raise UsageError("no scheme given; pass --scheme (accepted: " + ", ".join(list_schemes()) + ")")
    if setting["model"] is None:
        setting["model"] = setting["size"]
    return setting


def validate_setting(scheme: str, size: str, frames: int, img_size: int, patch: int) -> None:
    """Raise a usage error naming the first bad value of a model setting."""
    scheme_entry(scheme)
    if size not in SIZES:
        raise one_of("size", size, list(SIZES))
    if frames < 1:
        raise UsageError(f"invalid frames {frames}; expected an integer >= 1")
    if patch < 1:
        raise UsageError(f"invalid patch {patch}; expected an integer >= 1")
    if img_size < patch or img_size % patch:
        raise UsageError(
            f"invalid image size {img_size} for patch {patch}; expected a positive multiple of {patch}"
        )


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
    ``none``), or pass the scheme's own options (see ``vattn zoo``).
    """
    from vattn_cli.zoo.backbone import VideoTransformerConfig

    if name in PRESETS:
        setting = resolve_model(name, None, size, frames, img_size, patch, num_classes)
    else:
        setting = resolve_model(None, name, size, frames, img_size, patch, num_classes)
    validate_setting(setting["scheme"], setting["size"], setting["frames"], setting["img_size"], setting["patch"])
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
    from vattn_cli.zoo.backbone import VideoTransformer

    entry = scheme_entry(config.scheme, allow_import=False)
    if not entry.external:
        return VideoTransformer(config)
    from vattn_cli.zoo.conformance import probe_first_forward

    try:
        model = VideoTransformer(config)
    except Exception as exc:
        raise UsageError(
            f"scheme {entry.name!r} ({entry.source}): building its block failed: {type(exc).__name__}: {exc}"
        ) from None
    probe_first_forward(entry, model)
    return model


def create_model_from_config(config: dict[str, Any]):
    """Rebuild a model from the ``config`` dict saved with it (``model.config``)."""
    from vattn_cli.zoo.backbone import VideoTransformerConfig

    fields = VideoTransformerConfig.__dataclass_fields__
    unknown = set(config) - set(fields)
    if unknown:
        raise UsageError(f"checkpoint config has unknown keys: {', '.join(sorted(unknown))}")
    scheme_entry(config["scheme"], allow_import=False)  # a file never triggers an import
    return build_model(VideoTransformerConfig(**config))


def token_count(scheme: str, frames: int, img_size: int, patch: int) -> int:
    """Tokens a clip becomes: ``frames * (img_size/patch)^2``, +1 where the scheme has a CLS token."""
    cls_mode = get_scheme(scheme).cls_token
    return frames * (img_size // patch) ** 2 + (0 if cls_mode == "none" else 1)


def resolve_scheme_names(items: list[str] | tuple[str, ...], label: str = "--scheme") -> list[str]:
    """Expand ``all`` and check every name: registered names, import paths and ``all``.

    Each name is resolved now (an import path is imported and checked), so a bad one fails with
    one line before any work starts. Order is kept and duplicates dropped.
    """
    names: list[str] = []
    for item in items:
        for name in list_schemes() if item == "all" else [item]:
            if name not in names:
                names.append(name)
    for name in names:
        scheme_entry(name, label=label)
    return names
