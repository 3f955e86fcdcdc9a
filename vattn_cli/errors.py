"""Error types that the CLI turns into exit codes.

Library code raises these instead of printing or exiting, so it stays reusable from Python;
``vattn_cli.cli`` catches them and prints one line (exit 2 for :class:`UsageError`, exit 1 for
:class:`RunError`). Anything else is a bug and keeps its traceback under ``--debug``.
"""

from __future__ import annotations


class VattnError(Exception):
    """Base class for errors that carry a message meant for the user."""

    exit_code = 1


class UsageError(VattnError, ValueError):
    """Bad usage or bad input: a flag value, a file that is not what it should be (exit 2)."""

    exit_code = 2


class RunError(VattnError, RuntimeError):
    """A failure while running that is not the user's input (exit 1)."""

    exit_code = 1


def one_of(name: str, value: object, accepted: list[str] | tuple[str, ...]) -> UsageError:
    """Build the standard 'bad value, here is what is accepted' error."""
    return UsageError(f"invalid {name} {value!r}; accepted: {', '.join(map(str, accepted))}")


class Interrupted(BaseException):
    """Ctrl-C, with what was finished: the CLI prints one line from it and exits 130.

    A ``BaseException`` like the ``KeyboardInterrupt`` it replaces (no ``except Exception``
    swallows it), but not a ``KeyboardInterrupt``, which typer would turn into a silent exit.
    ``finished`` says what is safely on disk; ``resume_flag`` (``--resume``) is set where the
    same command with that flag continues the work.
    """

    exit_code = 130

    def __init__(self, finished: str | None = None, resume_flag: str | None = None) -> None:
        super().__init__(finished or "interrupted")
        self.finished = finished
        self.resume_flag = resume_flag


def article(word: str) -> str:
    """``a`` or ``an`` before ``word`` (``an int``, ``a dict``, ``an integer``)."""
    return "an" if word[:1].lower() in "aeio" else "a"
