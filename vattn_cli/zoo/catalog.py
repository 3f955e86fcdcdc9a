"""What the zoo holds, by name: schemes, sizes, presets, and checks of a model setting.

Torch-free on purpose: ``vattn --help`` and every usage error that can be found before a model
is built (a misspelt scheme, a bad frame count) come from here without importing torch, so they
answer at once. The factory that builds models is :mod:`vattn_cli.zoo.registry`.

Modelled on timm's registry: a scheme registers itself with ``@register_scheme("name")``;
everything else discovers it by name. Built-in schemes are one file each under
``vattn_cli/zoo/schemes/``, named as the scheme they register: they are listed from the file
names and imported only when one is used, so a new built-in scheme is that file and nothing
else (a test checks that every file registers its own name).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
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

#: Listing order of the built-in schemes: TimeSformer's five in the paper's order, RSA and StructSA,
#: then Video Swin, MViTv2, Motionformer, X-ViT and ViViT's (models 2 and 4, in the paper's order). A
#: scheme file not named here is listed after them, alphabetically.
BUILTIN_ORDER = ("space", "joint", "divided", "local_global", "axial", "rsa", "structsa", "window", "pooled", "trajectory", "xvit",
                 "factorised_encoder", "factorised_dot")
BUILTIN_PACKAGE = "vattn_cli.zoo.schemes"
_BUILTIN_DIR = Path(__file__).with_name("schemes")

_SCHEMES: dict[str, SchemeEntry] = {}


def builtin_schemes() -> list[str]:
    """Names of the built-in schemes, from the files under ``zoo/schemes/`` (nothing imported)."""
    return list(_scheme_files(_BUILTIN_DIR))


@functools.lru_cache(maxsize=4)
def _scheme_files(folder: Path) -> tuple[str, ...]:
    """The folder is read once per process: every scheme look-up and setting check asks."""
    found = {p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")}
    return tuple([n for n in BUILTIN_ORDER if n in found] + sorted(found - set(BUILTIN_ORDER)))


def register_scheme(name: str, *, source: str | None = None):
    """Class decorator: register a :class:`~vattn_cli.zoo.scheme.SchemeBlock` under ``name``.

    ``source`` defaults to ``builtin`` for classes inside vattn and ``python:<module>`` for a
    class registered from the user's own code.
    """

    def decorate(cls: type) -> type:
        # Imported here, not at the top: this module answers name queries without torch, and
        # a class being registered has imported the scheme module (and torch) already.
        from vattn_cli.zoo.scheme import SchemeBlock, own_options

        if not (isinstance(cls, type) and issubclass(cls, SchemeBlock)):
            raise TypeError(f"scheme {name!r}: {cls!r} is not a SchemeBlock subclass")
        if name in _SCHEMES and _SCHEMES[name].cls is not cls:
            raise ValueError(f"scheme {name!r} is already registered by {_SCHEMES[name].cls!r}")
        where = source or ("builtin" if cls.__module__.startswith("vattn_cli.") else f"python:{cls.__module__}")
        _SCHEMES[name] = SchemeEntry(name=name, cls=cls, source=where, options=own_options(cls))
        if "scheme_name" not in cls.__dict__:  # the first name stays (an import path may alias it)
            cls.scheme_name = name
        return cls

    return decorate


def _taken() -> set[str]:
    """Names an external scheme may not take: built-in files (loaded or not) and registered ones."""
    return set(builtin_schemes()) | set(_SCHEMES)


def list_schemes() -> list[str]:
    """Every scheme name: built-in first, then registered and discovered external ones.

    Nothing is imported: built-ins are listed from their files, entry points and
    ``VATTN_SCHEMES`` from their declarations; :func:`scheme_entry` imports one when it is used.
    """
    builtins = builtin_schemes()
    registered = [n for n in _SCHEMES if n not in builtins]
    return builtins + registered + external.discover(_taken())


def _load_builtin(name: str) -> SchemeEntry:
    importlib.import_module(f"{BUILTIN_PACKAGE}.{name}")
    if name not in _SCHEMES:
        raise RuntimeError(f"built-in scheme file schemes/{name}.py registers no scheme named {name!r}")
    return _SCHEMES[name]


def _register_external(name: str, obj: object, source: str) -> SchemeEntry:
    from vattn_cli.zoo.conformance import interface_problems  # reads the class; needs torch

    problems = interface_problems(obj)
    if problems:
        raise UsageError(f"scheme {name!r} ({source}) breaks the scheme interface: " + "; ".join(problems))
    register_scheme(name, source=source)(obj)
    return _SCHEMES[name]


def scheme_entry(name: str, *, allow_import: bool = True, label: str = "scheme") -> SchemeEntry:
    """The registry entry for ``name``; a usage error naming the accepted schemes otherwise.

    A built-in scheme's file is imported on first use. ``name`` may be an import path
    ``module.path:Class``; it is imported and registered under that string on first use, unless
    ``allow_import`` is false: code that got the name from a file (a checkpoint's config) passes
    false, so a file never makes vattn import a module. Entry points and ``VATTN_SCHEMES`` are
    the user's own choice and load either way.
    """
    if name in _SCHEMES:
        return _SCHEMES[name]
    if name in builtin_schemes():
        return _load_builtin(name)
    external.discover(_taken())
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
                f"code because a file names it; if you trust it, name it yourself: {external.ENV_VAR}={name} "
                "before the command (or --scheme with it, on a command that has --scheme)"
            )
        try:
            return _register_external(name, external.import_object(name), f"import:{name}")
        except UsageError as exc:
            if not label.startswith("--"):
                raise
            raise UsageError(f"invalid {label} {name!r}: {exc}") from None  # say which flag named it
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


def check_scheme(name: str, label: str = "scheme") -> None:
    """A usage error unless ``name`` can be a scheme; a known name is not imported to say so.

    An import path or a discovered plugin is loaded (and its class checked) now, so a bad one
    fails before any work starts: that imports the user's module, as they asked.
    """
    if name not in _taken():
        scheme_entry(name, label=label)


def resolve_scheme_names(items: list[str] | tuple[str, ...], label: str = "--scheme") -> list[str]:
    """Expand ``all`` and check every name: registered names, import paths and ``all``.

    Order is kept and duplicates dropped; see :func:`check_scheme` for what is imported.
    """
    names: list[str] = []
    for item in items:
        for name in list_schemes() if item == "all" else [item]:
            if name not in names:
                names.append(name)
    for name in names:
        check_scheme(name, label=label)
    return names


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


def validate_setting(scheme: str, size: str, frames: int, img_size: int, patch: int, tubelet: int = 1) -> None:
    """Raise a usage error naming the first bad value of a model setting (``tubelet``: frames per
    patch; the frame count must be a multiple of it)."""
    check_scheme(scheme)
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
    check_tubelet(frames, tubelet)


def check_tubelet(frames: int, tubelet: int) -> None:
    """A usage error unless ``tubelet`` >= 1 divides ``frames`` (one token per tubelet of frames)."""
    if not isinstance(tubelet, int) or isinstance(tubelet, bool) or tubelet < 1:
        raise UsageError(f"invalid --tubelet {tubelet!r}; expected an integer >= 1")
    if frames % tubelet:
        raise UsageError(f"invalid --frames {frames} for --tubelet {tubelet}; expected a multiple of {tubelet}")
