"""The CLI starts at once: help, version and usage errors import no torch, pandas or matplotlib.

This test process has torch loaded (conftest), so the cases run in fresh interpreters: each
case is ``vattn ARGS`` run in-process there, reporting its exit code, output and which heavy
modules were loaded. To stay fast, one interpreter runs all the cases of a group in turn; a case
that loads torch makes the later ones fail too, and the first failure is the culprit.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "pandas", "matplotlib")

_RUN = """
import contextlib, io, json, sys
from vattn_cli.cli import main
results = []
for args in json.loads(sys.argv[1]):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code
    results.append({"code": code, "err": err.getvalue(), "out": out.getvalue(),
                    "heavy": [m for m in %r if m in sys.modules]})
print(json.dumps(results))
""" % (HEAVY,)


def run_cases(cases: list[list[str]], cwd) -> dict[tuple[str, ...], dict]:
    """``{args: result}`` of running every ``vattn args`` in turn in one fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", _RUN, json.dumps(cases)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return {tuple(args): result for args, result in zip(cases, json.loads(done.stdout.splitlines()[-1]))}


def imports_after(code: str) -> list[str]:
    """Heavy modules (and the CLI package) loaded by running ``code`` in a fresh interpreter."""
    names = HEAVY + ("vattn_cli.commands",)
    probe = code + f"\nimport sys; print(','.join(m for m in {names!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [m for m in done.stdout.strip().split(",") if m]


HELP = [
    ["--help"], ["-h"], ["zoo", "--help"], ["profile", "--help"], ["ablate", "--help"], ["ablate", "tokens", "--help"],
    ["ablate", "schemes", "--help"], ["ablate", "pos-embed", "--help"], ["train", "--help"], ["eval", "--help"],
    ["data", "--help"], ["data", "synth", "--help"], ["data", "check", "--help"],
]


@pytest.fixture(scope="module")
def help_results(tmp_path_factory) -> dict:
    return run_cases(HELP + [["--version"]], tmp_path_factory.mktemp("help"))


@pytest.mark.parametrize("args", HELP, ids=" ".join)
def test_help_imports_nothing_heavy(args: list[str], help_results) -> None:
    result = help_results[tuple(args)]
    assert result["code"] == 0, result
    assert "Usage" in result["out"]
    assert result["heavy"] == []


def test_version_imports_nothing_heavy(help_results) -> None:
    from vattn_cli import __version__

    result = help_results[("--version",)]
    assert result["code"] == 0 and result["out"].strip() == f"vattn {__version__}"
    assert result["heavy"] == []


USAGE_ERRORS = [
    (["profile", "--frames", "0"], "--scheme"),
    (["profile", "--scheme", "divided", "--frames", "0"], "--frames"),
    (["profile", "--scheme", "divided", "--frames", "x"], "--frames"),
    (["profile", "--scheme", "divided", "--measure", "speed"], "--measure"),
    (["profile", "--scheme", "divided", "--mode", "eval"], "--mode"),
    (["profile", "--scheme", "divided", "--dtype", "fp64"], "--dtype"),
    (["profile", "--scheme", "nope"], "--scheme"),
    (["profile", "--schemes", "nope"], "--scheme"),
    (["profile", "--scheme", "divided", "--model", "huge"], "--model"),
    (["profile", "--scheme", "divided", "--size", "100"], "100"),
    (["profile", "--scheme", "divided", "--repeats", "0"], "--repeats"),
    (["profile", "--scheme", "divided", "--max-memory", "lots"], "--max-memory"),
    (["profile", "--scheme", "divided", "--device", "gpu"], "--device"),
    (["profile", "--scheme", "divided", "--peak-tflops", "x"], "--peak-tflops"),
    (["profile", "--no-such-flag"], "--no-such-flag"),
    (["zoo", "--model", "huge"], "--model"),
    (["zoo", "--size", "huge"], "--model"),
    (["zoo", "--img-size", "100"], "100"),
    (["zoo", "--scheme", "nope"], "--scheme"),
    (["ablate", "tokens", "--out", "never", "--frames", "0"], "--frames"),
    (["ablate", "tokens", "--out", "never", "--schemes", "nope"], "--schemes"),
    (["ablate", "tokens", "--out", "never", "--scheme", "nope"], "--schemes"),
    (["ablate", "tokens", "--out", "never", "--model", "huge"], "--model"),
    (["ablate", "tokens", "--out", "never", "--dtype", "fp64"], "--dtype"),
    (["ablate", "tokens", "--out", "never", "--sizes", "100"], "100"),
    (["ablate", "schemes", "--out", "never", "--schemes", "nope"], "--schemes"),
    (["ablate", "schemes", "--out", "never", "--model", "huge"], "--model"),
    (["ablate", "schemes", "--out", "never", "--clips", "384"], "--clips"),
    (["ablate", "schemes", "--out", "never", "--views", "2"], "--views"),
    (["ablate", "pos-embed", "--out", "never", "--scheme", "nope"], "--scheme"),
    (["ablate", "pos-embed", "--out", "never", "--pos-embeds", "sine"], "--pos-embeds"),
    (["train", "--out", "never"], "--data"),
    (["train", "--out", "never", "--data", "builtin:motion", "--scheme", "nope"], "--scheme"),
    (["train", "--out", "never", "--data", "builtin:motion", "--model", "huge"], "--model"),
    (["train", "--out", "never", "--data", "builtin:motion", "--dtype", "fp64"], "--dtype"),
    (["train", "--out", "never", "--data", "builtin:motion", "--optimizer", "adam"], "--optimizer"),
    (["eval", "--ckpt", "never.pt", "--data", "builtin:motion", "--views", "2"], "--views"),
    (["eval", "--ckpt", "never.pt", "--data", "builtin:motion", "--dtype", "fp64"], "--dtype"),
]


@pytest.fixture(scope="module")
def error_results(tmp_path_factory) -> dict:
    return run_cases([args for args, _ in USAGE_ERRORS], tmp_path_factory.mktemp("errors"))


@pytest.mark.parametrize("args,names", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_errors_are_one_line_and_import_nothing_heavy(args: list[str], names: str, error_results) -> None:
    result = error_results[tuple(args)]
    assert result["code"] == 2, result
    lines = [line for line in result["err"].splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vattn: error: "), result["err"]
    assert names in lines[0]
    assert result["heavy"] == []


def test_config_objects_and_catalog_import_without_torch() -> None:
    heavy = imports_after(
        "from vattn_cli.engine import TrainConfig\n"
        "from vattn_cli.ablate.config import StudyConfig\n"
        "from vattn_cli.measure.setting import RunOptions, expand\n"
        "from vattn_cli.zoo.catalog import list_schemes\n"
        "import vattn_cli.commands._options, vattn_cli.runtime, vattn_cli.data, vattn_cli.measure\n"
        "expand(schemes=list_schemes(), models=['tiny'], frames=[2], sizes=[32])\n"
        "TrainConfig(out_dir='x').validate()\n"
    )
    assert [m for m in heavy if m in HEAVY] == []


def test_the_engine_never_imports_the_cli() -> None:
    loaded = imports_after("import vattn_cli.engine.train, vattn_cli.engine.evaluate, vattn_cli.ablate.schemes, "
                           "vattn_cli.ablate.tokens")
    assert "vattn_cli.commands" not in loaded
