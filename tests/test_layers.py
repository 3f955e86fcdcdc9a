"""The layers import one way: CLI, studies, engine, measure, zoo/data, report, base.

Read from the source (every ``import``, at module level or inside a function), so a lazy import
that climbs a layer is caught as surely as a top-level one. A new top-level module or package
must be placed in :data:`RANKS` first: the test fails on one it does not know.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vattn_cli"

#: Higher imports lower, never the reverse. Packages of one rank do not import each other,
#: except the base modules (rank 0), which are leaves of a few lines each.
RANKS: dict[str, int] = {
    "vattn_cli": 0, "errors": 0, "atomic": 0, "runtime": 0, "_lazy": 0,
    "report": 1,
    "zoo": 2, "data": 2,
    "measure": 3,
    "engine": 4,
    "ablate": 5, "testing": 5,
    "commands": 6,
    "cli": 7,
    "__main__": 8,
}


def unit(module: str) -> str:
    """The layer unit of a dotted module name: its first part below ``vattn_cli``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(dotted: str) -> bool:
    base = PACKAGE.parent.joinpath(*dotted.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """``(line, module)`` for every vattn_cli module ``path`` imports, anywhere in the file."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.append((node.lineno, sub if is_module(sub) else source))
    return [(line, name) for line, name in found if name == "vattn_cli" or name.startswith("vattn_cli.")]


FILES = sorted(PACKAGE.rglob("*.py"))


def test_every_unit_has_a_rank() -> None:
    units = {unit(module_name(p)) for p in FILES}
    assert units - set(RANKS) == set(), "place these in RANKS (tests/test_layers.py)"


def violations(path: Path, source: str | None = None) -> list[str]:
    here = unit(module_name(path))
    wrong = []
    for line, target in imports(path, source):
        there = unit(target)
        if there != here and target != "vattn_cli" and RANKS[there] >= RANKS[here] and RANKS[here] > 0:
            wrong.append(f"line {line}: {target} ({there}, rank {RANKS[there]} >= {here}'s {RANKS[here]})")
    return wrong


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_only(path: Path) -> None:
    wrong = violations(path)
    assert not wrong, f"{module_name(path)} imports up or sideways: " + "; ".join(wrong)


def test_the_check_catches_upward_and_sideways_imports() -> None:
    """The test above can fail: lazy imports of a higher layer and of a sibling are reported."""
    probe = PACKAGE / "zoo" / "_probe.py"
    source = ("from vattn_cli.errors import UsageError\nfrom . import scheme\n"
              "def f():\n    from vattn_cli.engine import train\n    from vattn_cli import measure\n"
              "    import vattn_cli.data.lists\n")
    assert [name for _, name in imports(probe, source)] == [
        "vattn_cli.errors", "vattn_cli.zoo.scheme", "vattn_cli.engine.train", "vattn_cli.measure", "vattn_cli.data.lists"]
    assert [v.split(" (")[0] for v in violations(probe, source)] == [
        "line 4: vattn_cli.engine.train", "line 5: vattn_cli.measure", "line 6: vattn_cli.data.lists"]
