"""CLI manners: help, CSV on stdout alone, one-line errors with exit 2."""

from __future__ import annotations

import io
import subprocess
import sys

import pandas as pd


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vattn_cli", *args], capture_output=True, text=True)


def test_help_lists_commands() -> None:
    out = run("--help")
    assert out.returncode == 0 and "zoo" in out.stdout


def test_zoo_csv_stdout_is_csv_alone() -> None:
    out = run("zoo", "--size", "tiny", "--csv", "-")
    assert out.returncode == 0, out.stderr
    frame = pd.read_csv(io.StringIO(out.stdout))
    assert {"divided", "space", "joint"} <= set(frame["name"])
    assert {"params_m", "tokens"} <= set(frame.columns)


def test_bad_values_give_one_line_and_exit_2() -> None:
    for args in (["zoo", "--size", "huge"], ["zoo", "--model", "huge"], ["zoo", "--frames", "x"],
                 ["zoo", "--img-size", "100"]):
        out = run(*args)
        assert out.returncode == 2, (args, out)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("vattn: error:"), out.stderr
        assert "Traceback" not in out.stderr


def test_cli_works_without_click_installed() -> None:
    # Newer typer vendors click and does not install it: a plain `pip install vattn` has no click.
    code = (
        "import sys; sys.modules['click'] = None\n"
        "from vattn_cli.cli import main\n"
        "main(['zoo', '--frames', 'x'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().startswith("vattn: error:") and "--frames" in out.stderr
