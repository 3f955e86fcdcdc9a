"""The ``vattn`` command line: a thin Typer shell over the library.

Each command module under ``vattn_cli.commands`` parses flags, calls one library function and
renders its answer. This file only assembles them and turns errors into exit codes:
0 success, 1 a failure while running, 2 bad usage or bad input (one line, no traceback unless
``--debug``).
"""

from __future__ import annotations

import sys

import typer

# Newer typer vendors its own copy of click (and does not install click); older typer uses click
# itself. Catch the exception classes of whichever copies are present.
_CLICK_MODULES = []
try:
    from typer._click import exceptions as _typer_click

    _CLICK_MODULES.append(_typer_click)
except ImportError:  # pragma: no cover - older typer
    pass
try:
    from click import exceptions as _click

    _CLICK_MODULES.append(_click)
except ImportError:  # pragma: no cover - click is not installed with newer typer
    pass

from vattn_cli import __version__
from vattn_cli.commands import COMMANDS
from vattn_cli.errors import VattnError

app = typer.Typer(
    name="vattn",
    help="Benchmark and ablate attention schemes for video transformers.\n\n"
    "Example: vattn profile --scheme divided --frames 96",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vattn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    """Benchmark and ablate attention schemes for video transformers."""


for _register in COMMANDS:
    _register(app)


def _both(name: str) -> tuple[type[BaseException], ...]:
    return tuple({getattr(module, name) for module in _CLICK_MODULES if hasattr(module, name)})


_EXIT = _both("Exit") + (typer.Exit,)
_ABORT = _both("Abort") + (typer.Abort,)
_CLICK_ERROR = _both("ClickException")


def _fail(message: str, code: int) -> int:
    typer.echo(f"vattn: error: {message}", err=True)
    return code


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and exit with the contract's exit codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:  # accepted anywhere on the line, not only before the command
        args = [a for a in args if a != "--debug"]
    try:
        code = app(args=args, prog_name="vattn", standalone_mode=False)
    except _EXIT as exc:
        code = exc.exit_code
    except _ABORT:
        code = _fail("aborted", 130)
    except _CLICK_ERROR as exc:  # bad flags, bad values: exit 2, one line
        if debug:
            raise
        message = " ".join(exc.format_message().split())
        code = _fail(message, 2) if message else 2  # no_args_is_help printed help already
    except VattnError as exc:
        if debug:
            raise
        code = _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        code = _fail("interrupted", 130)
    except Exception as exc:  # a bug: keep it short unless asked
        if debug:
            raise
        code = _fail(f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1)
    sys.exit(code if isinstance(code, int) else 0)
