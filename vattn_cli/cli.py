"""The ``vattn`` command line: a thin Typer shell over the library.

Each command module under ``vattn_cli.commands`` parses flags, calls one library function and
renders its answer. This file only assembles them and turns errors into exit codes:
0 success, 1 a failure while running, 2 bad usage or bad input (one line, no traceback unless
``--debug``).
"""

from __future__ import annotations

import functools
import shlex
import sys
from typing import Any

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
from vattn_cli.errors import Interrupted, VattnError, article

app = typer.Typer(
    name="vattn",
    # Plain help (click's formatter): it wraps long values instead of cutting them with "..." at 80 columns.
    rich_markup_mode=None,
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


def _speaking(callback: Any) -> Any:
    """``callback`` with Ctrl-C turned into :class:`Interrupted`, which typer lets through.

    typer turns ``KeyboardInterrupt`` into a silent exit 130 before :func:`main` can see it;
    a command that knows what it finished raises :class:`Interrupted` itself (see
    ``commands/_outputs.py``), and this catches the rest.
    """
    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except KeyboardInterrupt as exc:
            raise Interrupted() from exc

    return wrapper


def _wrap_commands(typer_app: typer.Typer) -> None:
    """Every command of ``typer_app`` and its sub-apps speaks on Ctrl-C, and all help is plain."""
    for info in typer_app.registered_commands:
        if info.callback is not None and not hasattr(info.callback, "__wrapped__"):
            info.callback = _speaking(info.callback)
    for group in typer_app.registered_groups:
        group.typer_instance.rich_markup_mode = None
        _wrap_commands(group.typer_instance)


_wrap_commands(app)


def _both(name: str) -> tuple[type[BaseException], ...]:
    return tuple({getattr(module, name) for module in _CLICK_MODULES if hasattr(module, name)})


_EXIT = _both("Exit") + (typer.Exit,)
_ABORT = _both("Abort") + (typer.Abort,)
_CLICK_ERROR = _both("ClickException")


def _fail(message: str, code: int) -> int:
    typer.echo(f"vattn: {message}" if code == 130 else f"vattn: error: {message}", err=True)
    return code


_KINDS = {int: "integer", float: "number"}


def _given_value(args: list[str], opts: list[str]) -> str | None:
    """The value the user typed for the option ``opts`` (the last one given), from the command line."""
    value = None
    for i, arg in enumerate(args):
        for opt in opts:
            if arg == opt and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith(opt + "="):
                value = arg[len(opt) + 1:]
    return value


def _bad_parameter(exc: Any, args: list[str]) -> str | None:
    """A typer range/type error as vattn's one line: the flag, the value typed, what is accepted."""
    param = getattr(exc, "param", None)
    opts = list(getattr(param, "opts", None) or [])
    if not opts or type(exc).__name__ != "BadParameter":
        return None
    flag = max(opts, key=len)
    value = _given_value(args, opts)
    descriptor = getattr(param, "type_descriptor", None)
    kind = _KINDS.get(getattr(descriptor, "annotation", None))
    if kind is None or value is None:
        return None
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if getattr(param, 'min_open', False) else '>='} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if getattr(param, 'max_open', False) else '<='} {high:g}")
    accepted = f"{article(kind)} {kind}" + (f" {' and '.join(bounds)}" if bounds else "")
    return f"invalid {flag} {value!r}; expected {accepted}"


def _no_such_command(exc: Any) -> str | None:
    """``No such command 'x'.`` with the commands that exist."""
    message = exc.format_message()
    ctx = getattr(exc, "ctx", None)
    if not message.startswith("No such command") or ctx is None or not hasattr(ctx.command, "list_commands"):
        return None
    name = message.split("'")[1] if message.count("'") >= 2 else message
    where = ctx.command_path if ctx.command_path != "vattn" else "vattn"
    return (f"unknown command {name!r} for {where}; accepted: {', '.join(ctx.command.list_commands(ctx))}")


def _click_message(exc: Any, args: list[str]) -> str:
    message = _bad_parameter(exc, args) or _no_such_command(exc)
    return message or " ".join(exc.format_message().split())


def _interrupted(exc: Interrupted, args: list[str]) -> str:
    """The Ctrl-C line: what was finished and, where the command can continue, the command that does."""
    text = "interrupted"
    if exc.finished:
        text += f"; {exc.finished}"
    if exc.resume_flag:
        again = args if exc.resume_flag in args else [*args, exc.resume_flag]
        text += f"; continue with: vattn {shlex.join(again)}"
    elif not exc.finished:
        text += "; nothing was written (results are written when the command finishes)"
    return text


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and exit with the contract's exit codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:  # accepted anywhere on the line, not only before the command
        args = [a for a in args if a != "--debug"]
    try:
        code = app(args=args, prog_name="vattn", standalone_mode=False)
        if code == 130:  # typer's silent answer to a Ctrl-C outside every command body (parsing,
            # loading the command: commands raise Interrupted instead), so nothing has run yet
            code = _fail("interrupted while starting; nothing was written", 130)
    except _EXIT as exc:
        code = exc.exit_code
    except _ABORT:
        code = _fail("aborted", 130)
    except _CLICK_ERROR as exc:  # bad flags, bad values: exit 2, one line
        if type(exc).__name__ == "NoArgsIsHelpError":  # `vattn`, `vattn ablate` alone: the help, as before
            typer.echo(exc.format_message())
            sys.exit(2)
        if debug:
            raise
        message = _click_message(exc, args)
        code = _fail(message, 2) if message else 2  # no_args_is_help printed help already
    except VattnError as exc:
        if debug:
            raise
        code = _fail(str(exc), exc.exit_code)
    except Interrupted as exc:
        if debug:
            import traceback

            traceback.print_exception(exc)
        code = _fail(_interrupted(exc, args), 130)
    except KeyboardInterrupt:  # outside a command (while parsing)
        code = _fail("interrupted", 130)
    except Exception as exc:  # a bug: keep it short unless asked
        if debug:
            raise
        code = _fail(f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1)
    sys.exit(code if isinstance(code, int) else 0)
