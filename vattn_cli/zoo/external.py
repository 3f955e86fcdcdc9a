"""Schemes from outside the package: import paths, the ``vattn.schemes`` entry points, ``VATTN_SCHEMES``.

Where user code may come from, and why each is allowed to run (see docs/adding-a-scheme.md):

* ``--scheme my_pkg.my_module:MyAttention``: the user typed the import path, so importing it is
  what they asked for. The scheme's name is that whole string: it is what a checkpoint
  stores, so the same string brings the class back later, and two users' ``MyAttention``
  never collide.
* The entry-point group ``vattn.schemes`` of installed distributions: installing a plugin is
  the user's choice, as with pytest plugins. The entry point's name is the scheme's name.
* ``VATTN_SCHEMES=a.b:C,d.e:F``: import paths named in the environment, for commands that take
  no ``--scheme`` (``eval --ckpt``) or for a whole shell session.

A *file* never chooses what gets imported: a checkpoint whose scheme is an import path that none
of the above named is refused (:func:`vattn_cli.zoo.registry.scheme_entry` with
``allow_import=False``). Whatever is imported must be a ``SchemeBlock`` subclass before it is
used; nothing found at an import path is ever called to find out what it is.

Discovery is lazy: nothing here runs until the registry is first asked for a scheme, and an
entry point's module is imported only when its scheme is used.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import warnings
from collections.abc import Callable, Container
from dataclasses import dataclass

from vattn_cli.errors import UsageError

ENTRY_POINT_GROUP = "vattn.schemes"
ENV_VAR = "VATTN_SCHEMES"

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_IMPORT_PATH = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")
# Entry-point names become scheme names on the command line: no list or path separators.
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Pending:
    """A scheme discovered but not imported yet."""

    name: str
    source: str  # "entry-point:<dist>" or "import:<path>"
    load: Callable[[], object]


_pending: dict[str, Pending] = {}
_scanned = False


def is_import_path(name: str) -> bool:
    """Whether ``name`` has the ``module.path:Attr`` form (anything else is a registry name)."""
    return bool(_IMPORT_PATH.match(name))


def import_object(path: str) -> object:
    """The object at ``module.path:Attr.Sub``, or a one-line usage error saying why not.

    Only imports and attribute look-ups happen here: the object is not called.
    """
    if not is_import_path(path):
        raise UsageError(f"invalid scheme import path {path!r}; expected module.path:ClassName")
    module_name, _, attrs = path.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UsageError(
            f"scheme {path!r}: cannot import module {module_name!r} ({exc}); is it on PYTHONPATH?"
        ) from None
    except Exception as exc:  # the user's module failed while importing
        raise UsageError(f"scheme {path!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    for attr in attrs.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise UsageError(f"scheme {path!r}: {module_name!r} has no attribute {attrs!r}") from None
    return obj


def _entry_point_loader(ep: importlib.metadata.EntryPoint, source: str) -> Callable[[], object]:
    def load() -> object:
        try:
            return ep.load()
        except Exception as exc:
            raise UsageError(
                f"scheme {ep.name!r} ({source}): loading {ep.value!r} failed: {type(exc).__name__}: {exc}"
            ) from None

    return load


def _scan_entry_points(registered: Container[str]) -> None:
    seen: set[tuple[str, str]] = set()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "unknown"
        source = f"entry-point:{dist}"
        if (ep.name, ep.value) in seen:  # the same distribution found twice on sys.path
            continue
        seen.add((ep.name, ep.value))
        if not _PLAIN_NAME.match(ep.name):
            warnings.warn(f"vattn: ignoring entry point {ep.name!r} of {dist}: not a valid scheme name", stacklevel=2)
        elif ep.name in registered or ep.name in _pending:
            warnings.warn(f"vattn: ignoring entry point {ep.name!r} of {dist}: that scheme name is taken", stacklevel=2)
        else:
            _pending[ep.name] = Pending(ep.name, source, _entry_point_loader(ep, source))


def _scan_environment(registered: Container[str]) -> None:
    for path in filter(None, (p.strip() for p in os.environ.get(ENV_VAR, "").split(","))):
        if path in registered or path in _pending:
            continue
        if not is_import_path(path):
            raise UsageError(f"invalid {ENV_VAR} entry {path!r}; expected module.path:ClassName[,...]")
        _pending[path] = Pending(path, f"import:{path}", lambda path=path: import_object(path))


def discover(registered: Container[str]) -> list[str]:
    """Names of the external schemes found and not imported yet (entry points scanned once)."""
    global _scanned
    if not _scanned:
        _scanned = True
        _scan_entry_points(registered)
    _scan_environment(registered)  # cheap, and the variable may change inside one process
    return [name for name in _pending if name not in registered]


def take(name: str) -> Pending | None:
    """The pending scheme ``name``, removed from the pending list (the registry now owns it)."""
    return _pending.pop(name, None)


def pending_source(name: str) -> str | None:
    """Where a discovered, not yet loaded scheme comes from (``None`` if it is not pending)."""
    return _pending[name].source if name in _pending else None


def put_back(pending: Pending) -> None:
    """Keep a scheme that failed to load listed, so the next use reports the same error."""
    _pending.setdefault(pending.name, pending)


def refresh() -> None:
    """Forget what was discovered so the next look-up scans again (after installing a plugin)."""
    global _scanned
    _scanned = False
    _pending.clear()
    importlib.invalidate_caches()
