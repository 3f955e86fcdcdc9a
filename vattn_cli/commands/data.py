"""``vattn data synth`` and ``vattn data check``: the built-in benchmark and list checks."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import typer

from vattn_cli.commands._outputs import check_outputs
from vattn_cli.report.tables import emit, stderr_console

data_app = typer.Typer(
    name="data",
    help="Video data: write the built-in benchmark, check a video list.\n\n"
    "Example: vattn data synth --task both --out data/builtin && vattn data check data/builtin/motion",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

CSV_HELP = "Write the table as CSV to PATH, or '-' for stdout."
JSON_HELP = "Write the table as JSON to PATH, or '-' for stdout."


@contextlib.contextmanager
def _progress(label: str, quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A rich bar on stderr fed by ``(done, total)``; none off a terminal or with ``--quiet``."""
    if quiet or not stderr_console.is_terminal:
        yield None
        return
    from rich.progress import Progress

    with Progress(console=stderr_console, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@data_app.command("synth")
def synth(
    out: str = typer.Option(..., "--out", help="Folder to write (with --task both: OUT/motion, OUT/appearance)."),
    task: str = typer.Option("both", help="motion, appearance or both."),
    train: int = typer.Option(288, help="Training videos per task (classes are balanced)."),
    val: int = typer.Option(96, help="Validation videos per task."),
    frames: int = typer.Option(9, help="Frames per video (odd keeps test-time sampling reversal-symmetric)."),
    size: int = typer.Option(64, help="Frame size in pixels (square, even, >= 32)."),
    glyphs: str = typer.Option("shapes", help="Objects: shapes, or digits (scikit-learn's handwritten digits)."),
    seed: int = typer.Option(0, help="Seed; the same seed writes the same bytes."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it holds an earlier synth output."),
    csv: str = typer.Option(None, "--csv", help=CSV_HELP),
    json_path: str = typer.Option(None, "--json", help=JSON_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table or progress; only the files asked for."),
) -> None:
    """Write the built-in video benchmark: mp4 videos, train.csv, val.csv, classes.json.

    motion: the label is the direction of motion; classes come in exact time-reversal pairs, so models that cannot relate frames sit at chance within each pair. appearance: the label is what the object is; space-only attention is enough. Prints the class balance.

    Example: vattn data synth --task both --out data/builtin --train 288 --val 96
    """
    from vattn_cli.data.synth import SynthConfig, synthesize

    check_outputs(folders={"--out": out}, files={"--csv": csv, "--json": json_path})
    config = SynthConfig(train=train, val=val, frames=frames, size=size, seed=seed, glyphs=glyphs)
    start = time.perf_counter()
    with _progress("writing videos", quiet) as progress:
        balance = synthesize(task, out, config, force=force, progress=progress)
    videos = int(balance["videos"].sum())
    emit(balance, csv=csv, json_path=json_path, quiet=quiet,
         title=f"class balance of {out} ({videos} videos, {frames}x{size}, seed {seed})")
    if not quiet:
        stderr_console.print(f"wrote {videos} videos to {out} in {time.perf_counter() - start:.1f} s")


@data_app.command("check")
def check(
    data: str = typer.Argument(..., metavar="LIST", help="A video list, a folder of lists, or builtin:<task>."),
    root: str = typer.Option(None, "--root", help="Folder that relative video paths start from (default: the list's)."),
    label_file: str = typer.Option(None, "--label-file", help="Class names to ids: labels.json, a JSON list, or one name a line."),
    split: str = typer.Option(None, help="train, val or test (default: the list given, or every split of a folder)."),
    full: bool = typer.Option(False, "--full", help="Decode every frame, not only the first, middle and last."),
    threads: int = typer.Option(1, help="decord decoding threads per video (0: decord decides)."),
    show_all: bool = typer.Option(False, "--all", help="List every video, not only the unreadable ones."),
    csv: str = typer.Option(None, "--csv", help=CSV_HELP),
    json_path: str = typer.Option(None, "--json", help=JSON_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table or progress; only the files asked for."),
) -> None:
    """Open every video of a list and report the unreadable ones (exit 1 if any).

    Example: vattn data check data/k400/val.csv --root /data/k400/videos
    """
    from vattn_cli.data.check import check_data

    check_outputs(files={"--csv": csv, "--json": json_path})
    with _progress("checking videos", quiet) as progress:
        frame = check_data(data, split=split, root=root, label_file=label_file, full=full,
                           threads=threads, progress=progress)
    bad = frame[frame["status"] != "ok"]
    shown = frame if show_all else bad.reset_index(drop=True)
    columns = None if show_all else ["list", "line", "path", "label", "reason"]
    emit(shown, csv=csv, json_path=json_path, quiet=quiet or shown.empty,
         title=f"unreadable videos of {data}" if not show_all else f"videos of {data}", columns=columns)
    if not quiet:
        stderr_console.print(f"{len(frame)} videos checked: {len(frame) - len(bad)} readable, {len(bad)} unreadable")
    if len(bad):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
