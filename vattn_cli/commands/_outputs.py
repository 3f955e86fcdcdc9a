"""Output paths, checked before any work, and one writer per output folder.

:func:`check_outputs` looks at every output flag of a command (``--out`` folders, ``--csv``/
``--json``/``--markdown`` files) before anything is measured or trained, so a results file that
cannot be written fails in the first second with one line, not after an hour of work: a path
that exists as the wrong kind, a folder that cannot be written, two outputs on stdout.

:func:`output_lock` holds ``OUT/.lock`` with ``fcntl.flock`` for the life of a command that
writes into ``OUT``. The kernel drops the lock when the process ends, however it ends, so a
killed run never blocks its own ``--resume``; a second writer gets one line naming the holder's
PID. On a clean exit the lock file is removed again, and a folder the command created and left
empty goes too (a run that failed at once leaves nothing that looks like a started run).
"""

from __future__ import annotations

import errno
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vattn_cli.errors import Interrupted, UsageError

LOCK_NAME = ".lock"
STDOUT = "-"


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (where a new file or folder would be made)."""
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _writable(folder: Path) -> str | None:
    """Why nothing can be created in ``folder`` (None if it can): a real probe, so it is right as root too."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".vattn-probe-", dir=folder)
    except OSError as exc:
        return os.strerror(exc.errno) if exc.errno else str(exc)
    os.close(fd)
    os.unlink(tmp)
    return None


def _check_target(flag: str, value: str, kind: str) -> None:
    path = Path(value)
    if path.exists():
        if kind == "folder" and not path.is_dir():
            raise UsageError(f"invalid {flag} {value}: it is a file, not a folder; give a folder path")
        if kind == "file" and path.is_dir():
            raise UsageError(f"invalid {flag} {value}: it is a folder; give a file path (or '-' for stdout)")
    where = path if kind == "folder" and path.is_dir() else _nearest_existing(path.parent if kind == "file" else path)
    if not where.is_dir():
        raise UsageError(f"invalid {flag} {value}: {where} is a file, so nothing can be created under it")
    reason = _writable(where)
    if reason is not None:
        raise UsageError(f"invalid {flag} {value}: cannot write in {where} ({reason})")


def check_outputs(*, folders: dict[str, object] | None = None, files: dict[str, object] | None = None) -> None:
    """Refuse unusable output paths now: ``{flag: value}`` of the folder and file outputs given.

    A file value ``-`` means stdout; at most one output may go there (stdout carries that data
    alone). Values that are None (flag not given) are skipped. Nothing is created.
    """
    files = {flag: value for flag, value in (files or {}).items() if value is not None}
    to_stdout = [flag for flag, value in files.items() if str(value) == STDOUT]
    if len(to_stdout) > 1:
        raise UsageError(f"invalid {' and '.join(to_stdout)} '-': only one output can go to stdout; "
                         "give the others a PATH")
    for flag, value in (folders or {}).items():
        if value is not None:
            _check_target(flag, str(value), "folder")
    for flag, value in files.items():
        if str(value) != STDOUT:
            _check_target(flag, str(value), "file")


def _holder_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _holder(path: Path) -> str:
    pid = _holder_pid(path)
    return f"another vattn (pid {pid})" if pid is not None else "another process"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: How long a lock whose writer has died may stay held by the processes it forked (DataLoader workers
#: inherit the lock's file and notice their parent's death within about 5 s).
ORPHAN_WAIT_S = 30.0


def count_rows(path: str | os.PathLike) -> int:
    """Complete data lines of a CSV with a header (0 if it is missing): what a study has finished."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return 0
    return max(data.count(b"\n") - 1, 0)


@contextmanager
def interrupt_says(finished: Callable[[], str] | None, resume_flag: str | None = "--resume") -> Iterator[None]:
    """Turn Ctrl-C inside the block into :class:`Interrupted` saying ``finished()`` and how to continue."""
    try:
        yield
    except KeyboardInterrupt as exc:
        raise Interrupted(finished() if finished else None, resume_flag) from exc


@contextmanager
def output_lock(out: str | os.PathLike, flag: str = "--out", *, finished: Callable[[], str] | None = None,
                resume_flag: str | None = "--resume") -> Iterator[Path]:
    """Hold ``out/.lock`` exclusively while the ``with`` block runs; exit 2 if another process holds it.

    ``out`` is created if missing. Under torchrun only rank 0 writes, so only rank 0 locks.
    Ctrl-C inside the block becomes :class:`Interrupted` with ``finished()`` (what is on disk)
    and ``resume_flag``, the flag that continues the work (None where nothing can continue).
    """
    with _locked(out, flag) as folder, interrupt_says(finished, resume_flag):
        yield folder


@contextmanager
def _locked(out: str | os.PathLike, flag: str) -> Iterator[Path]:
    import fcntl

    folder = Path(out)
    if int(os.environ.get("RANK", "0") or 0) != 0:
        yield folder
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    deadline = None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            pid = _holder_pid(path)
            # a killed writer's forked children (data loader workers) still hold the file for a
            # moment after it died: wait for them rather than refuse the run's own --resume
            if pid is not None and not _alive(pid):
                deadline = deadline or time.monotonic() + ORPHAN_WAIT_S
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
            raise UsageError(f"{folder} is in use by {_holder(path)}; wait for it to finish, "
                             f"or choose another {flag}") from None
        try:  # the holder before us may have removed the file we opened: lock the one on disk
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield folder
    finally:
        try:
            path.unlink()  # while still locked: a waiting process then sees another inode and retries
        except OSError:
            pass
        os.close(fd)
        if created:
            try:
                folder.rmdir()  # only if empty: a run that failed before writing anything leaves no folder
            except OSError:
                pass
