"""``vattn compare``: the CI gate. Match two result files, apply per-metric rules, exit 1 on a regression.

Also ``--history``: each metric per setting across a series of runs, the gate's failures marked.
Every flag is checked before a file is read (and before pandas loads); torch never loads here.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from vattn_cli.errors import RunError, UsageError
from vattn_cli.report.compare import (
    CLOCKS,
    DEFAULT_ALPHA,
    DEFAULT_CLOCK,
    DEFAULT_FAIL_ON,
    METRICS,
    check_alpha,
    check_clock,
    check_paths,
    parse_rules,
)

HISTORY_STEM = "compare_history"


def _outputs(csv: str | None, json_path: str | None, markdown: str | None) -> None:
    from vattn_cli.commands._outputs import check_outputs  # one stdout output; paths writable, not folders

    check_outputs(files={"--csv": csv, "--json": json_path, "--markdown": markdown})


def _history_stem(out: str | None) -> Path:
    """``--out``: a folder (``compare_history.png|svg`` in it) or a path (its suffix is dropped)."""
    if out is None:
        return Path(HISTORY_STEM)
    path = Path(out)
    if path.suffix.lower() in (".png", ".svg"):
        return path.with_suffix("")
    return path / HISTORY_STEM


def compare_command(
    files: list[str] = typer.Argument(None, metavar="BASELINE CURRENT",
                                      help="Two result files (CSV/JSON from profile, ablate tokens, ablate schemes, "
                                           "eval) or folders of them; with --history, any number in time order."),
    fail_on: str = typer.Option(None, "--fail-on",
                                help="Rules METRIC:LIMIT, comma-separated, each overriding the default for its "
                                     "metric: +N% relative, +N absolute (top1:-1 = one point), METRIC:off. "
                                     f"Metrics: {', '.join(METRICS)} (default: {DEFAULT_FAIL_ON.replace(',', ', ')})."),
    alpha: float = typer.Option(None, "--alpha",
                                help="Significance level of the one-sided Mann-Whitney U test that a timing "
                                     f"change needs beside its rule (default: {DEFAULT_ALPHA:g})."),
    clock: str = typer.Option(None, "--clock",
                              help="What timing (latency_ms, throughput) is judged on: ref (the step's CPU time "
                                   "in units of the reference workload timed beside it, which cancels a machine "
                                   "that got slower between the runs), cpu (CPU time), wall (wall clock), or "
                                   f"auto (ref where both rows have it, else wall). Accepted: {', '.join(CLOCKS)} "
                                   f"(default: {DEFAULT_CLOCK})."),
    strict: bool = typer.Option(False, "--strict",
                                help="A machine or software difference between the files (machine, device_name, "
                                     "torch_version, vattn_version, threads) is an error (exit 2), not a warning."),
    history: bool = typer.Option(False, "--history",
                                 help="Plot each metric per setting across FILE... (time order); mark the points "
                                      "the gate fails against the run before."),
    out: str = typer.Option(None, "--out",
                            help=f"--history figure: a folder (writes {HISTORY_STEM}.png and .svg there) or a "
                                 f"path ending .png/.svg (default: ./{HISTORY_STEM})."),
    markdown: str = typer.Option(None, "--markdown",
                                 help="Write a markdown report (pull-request comment, $GITHUB_STEP_SUMMARY) to "
                                      "PATH, or '-' for stdout."),
    csv: str = typer.Option(None, "--csv", help="Write the comparison (one row per setting and metric) as CSV "
                                                "to PATH, or '-' for stdout."),
    json_path: str = typer.Option(None, "--json", help="Write the comparison as JSON to PATH, or '-' for stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table on stderr; only the files asked for."),
) -> None:
    """Compare two result files: exit 0 if no rule fails, 1 on a regression, 2 on bad input.

    Rows are matched on their setting (scheme, model, frames, size, patch, batch, mode, dtype,
    device, and tubelet, dataset, seed, pos_embed, views where present). Per metric a rule; a
    timing change (latency_ms, throughput) counts only with statistical evidence too (U test on
    latency_samples_ms, or non-overlapping IQR bands without samples; with several runs a side,
    every current run past every baseline run), on the clock --clock says:
    by default the step's CPU time in units of the reference workload profile times beside it, so
    a runner that got slower between the two runs does not fail the gate. ok -> oom/error is
    always a regression. The table goes to stderr.

    Example: vattn compare main.csv pr.csv --markdown "$GITHUB_STEP_SUMMARY"

    Example: vattn compare main.json pr.json --fail-on latency_ms:+5%,top1:-0.5 --csv -

    Example: vattn compare --history runs/*/profile.csv --out runs/history
    """
    files = list(files or [])
    fail_on_text = fail_on
    parse_rules(fail_on_text)  # bad rules fail before a file is read
    level = check_alpha(alpha) if alpha is not None else DEFAULT_ALPHA
    clock = check_clock(clock) if clock is not None else DEFAULT_CLOCK
    _outputs(csv, json_path, markdown)
    if history:
        if markdown is not None:
            raise UsageError("invalid --markdown with --history; the history writes a figure (--out) and "
                             "optionally --csv/--json")
        if not files:
            raise UsageError("no files given; --history takes result files in time order: "
                             "vattn compare --history A.csv B.csv C.csv")
        check_paths(files)
        _history(files, fail_on_text, level, out, csv, json_path, quiet, clock)
        return
    if out is not None:
        raise UsageError("invalid --out without --history; compare writes --csv, --json or --markdown")
    if len(files) != 2:
        raise UsageError(f"expected BASELINE and CURRENT, got {len(files)} file{'s' if len(files) != 1 else ''}; "
                         "pass --history to plot a series of runs")
    check_paths(files)

    from vattn_cli.report.compare import (
        compare_paths,
        comparison_markdown,
        counts_text,
        display_frame,
    )
    from vattn_cli.report.tables import (
        atomic_write_text,
        rich_table,
        stderr_console,
        write_frame,
    )

    result = compare_paths(files[0], files[1], fail_on=fail_on_text, alpha=level, strict=strict, clock=clock)
    if not quiet:
        shown = display_frame(result)
        title = f"vattn compare {files[0]} {files[1]}: " + (
            f"{len(result.regressions)} regressions" if result.failed else "no regression")
        if len(shown):
            stderr_console.print(rich_table(shown, title=title))
        else:
            stderr_console.print(title)
        stderr_console.print(counts_text(result))
        for warning in result.mismatches + result.warnings:
            stderr_console.print(f"warning: {warning}", style="yellow", markup=False, highlight=False)
        for note in result.notes:
            stderr_console.print(f"note: {note}", markup=False, highlight=False)
    write_frame(result.frame, csv=csv, json_path=json_path)
    if markdown is not None:
        text = comparison_markdown(result)
        if markdown == "-":
            typer.echo(text, nl=False)
        else:
            atomic_write_text(markdown, text)
    if result.failed:
        raise RunError(result.summary())


def _history(files: list[str], fail_on: str | None, alpha: float, out: str | None, csv: str | None,
             json_path: str | None, quiet: bool, clock: str = DEFAULT_CLOCK) -> None:
    from vattn_cli.report.compare import history, history_frame
    from vattn_cli.report.tables import write_frame

    stem = _history_stem(out)
    hist = history(files, fail_on=fail_on, alpha=alpha, clock=clock)

    from vattn_cli.report.compare_plots import history_figure, history_summary

    paths = history_figure(hist, stem)
    write_frame(history_frame(hist), csv=csv, json_path=json_path)
    if not quiet:
        from vattn_cli.report.tables import rich_table, stderr_console

        stderr_console.print(rich_table(history_summary(hist), title=f"vattn compare --history ({len(files)} runs)"))
        stderr_console.print("wrote " + ", ".join(os.fspath(p) for p in paths), markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_command)
