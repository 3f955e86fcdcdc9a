"""``vattn zoo``: list schemes, sizes and presets with their parameter counts; ``--check`` schemes."""

from __future__ import annotations

import typer

from vattn_cli.commands._options import int_list, scheme_list, split_list
from vattn_cli.commands._outputs import check_outputs
from vattn_cli.errors import RunError, UsageError, one_of
from vattn_cli.report.tables import emit
from vattn_cli.runtime import DEFAULT_DEVICE, DEFAULT_SEED, DEVICES, check_device_name
from vattn_cli.zoo.catalog import DEFAULTS, SIZES, validate_setting


def zoo(
    model: str = typer.Option(None, "--model", "--size", help=f"Size at which to count parameters: {', '.join(SIZES)} "
                              f"(default: {DEFAULTS['size']}). --size is an alias of --model."),
    frames: int = typer.Option(None, min=1, help=f"Frames at which to count parameters and tokens (default: {DEFAULTS['frames']}; "
                               "with --check, the conformance suite's)."),
    img_size: int = typer.Option(None, "--img-size", min=1, help="Frame size in pixels, square "
                                 f"(default: {DEFAULTS['img_size']}; with --check, the conformance suite's)."),
    patch: int = typer.Option(None, min=1, help=f"Patch size in pixels (default: {DEFAULTS['patch']})."),
    tubelet: int = typer.Option(None, "--tubelet", min=1, help="Frames per patch: a 3D (tubelet) patch embedding "
                                "when > 1, (frames / tubelet) x (size / patch)^2 tokens (default: 1)."),
    scheme: str = typer.Option(
        None, "--scheme", "--schemes",
        help="List only these schemes: names, import paths module.path:Class, or all. --schemes is an alias.",
    ),
    check: str = typer.Option(
        None, "--check", help="Run the conformance suite on these schemes (names, module.path:Class, or all); exit 1 if a check fails."
    ),
    show: str = typer.Option(
        None, "--show", help="Draw who attends to whom for these schemes (names, module.path:Class, or all), "
        "TimeSformer's figure: each attention step's keys per frame, then the whole block's reach measured from "
        "the code. Prints the counts; --out FILE.png|.svg draws the figure, --csv the counts per step and frame. "
        "Takes --frames, --img-size (or --size PIXELS), --patch, --tubelet.",
    ),
    query: str = typer.Option(None, "--query", help="With --show: the query patch t,h,w on the token grid "
                              "(default: the centre)."),
    out: str = typer.Option(None, "--out", help="With --show: write the figure to FILE.png, .svg or .pdf."),
    device: str = typer.Option(None, help=f"Device for --check: {', '.join(DEVICES)} (default: {DEFAULT_DEVICE})."),
    seed: int = typer.Option(None, help=f"Seed for --check's random inputs (default: {DEFAULT_SEED})."),
    csv: str = typer.Option(None, "--csv", help="Write the table as CSV to PATH, or '-' for stdout."),
    json_path: str = typer.Option(None, "--json", help="Write the table as JSON to PATH, or '-' for stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table; only the files asked for."),
) -> None:
    """List every scheme, size and preset, with parameters at the given setting.

    External schemes (import paths, the vattn.schemes entry points, VATTN_SCHEMES) are listed
    with where they came from in the source column.

    Example: vattn zoo --model tiny --csv -

    Example: PYTHONPATH=examples vattn zoo --check custom_scheme:TemporalShiftAttention
    """
    if show is not None:
        _show(show, model, frames, img_size, patch, tubelet, query, out, seed, csv, json_path, quiet)
        return
    if query is not None or out is not None:
        raise UsageError(f"{'--query' if query is not None else '--out'} applies to --show only")
    check_outputs(files={"--csv": csv, "--json": json_path})
    size = DEFAULTS["size"] if model is None else model
    if size not in SIZES:
        raise one_of("--model", size, list(SIZES))
    patch = DEFAULTS["patch"] if patch is None else patch
    if check is not None:
        if tubelet not in (None, 1):
            raise UsageError("--tubelet does not apply to --check (the conformance suite runs per-frame patches)")
        _check(check, frames, img_size, patch, device, seed, csv, json_path, quiet)
        return
    frames = DEFAULTS["frames"] if frames is None else frames
    img_size = DEFAULTS["img_size"] if img_size is None else img_size
    int_list("--frames", str(frames))
    validate_setting("divided", size, frames, img_size, patch, 1 if tubelet is None else tubelet)
    names = scheme_list("--scheme", scheme) if scheme is not None else None
    from vattn_cli.zoo.info import zoo_frame

    extra = {"tubelet": tubelet} if tubelet not in (None, 1) else {}
    frame = zoo_frame(size=size, frames=frames, img_size=img_size, patch=patch, schemes=names, **extra)
    shown = f", tubelet {tubelet}" if extra else ""
    emit(frame, csv=csv, json_path=json_path, quiet=quiet,
         title=f"vattn zoo ({size}, {frames}x{img_size}, patch {patch}{shown})",
         columns=["kind", "name", "scheme", "size", "frames", "img_size", *extra, "tokens", "params_m", "source",
                  "description"])


def _check(text: str, frames: int | None, img_size: int | None, patch: int, device: str | None, seed: int | None,
           csv: str | None, json_path: str | None, quiet: bool) -> None:
    from vattn_cli.zoo.catalog import list_schemes

    names = [n for item in split_list("--check", text) for n in (list_schemes() if item == "all" else [item])]
    names = list(dict.fromkeys(names))
    check_device_name(DEFAULT_DEVICE if device is None else device)
    if frames is not None:
        int_list("--frames", str(frames))
    # The suite and its defaults need torch; everything above failed fast without it.
    from vattn_cli.measure.conformance import CHECK_FRAMES, CHECK_IMG_SIZE, checks_frame, failures, run_checks
    from vattn_cli.runtime import resolve_device, seed_everything

    frames = CHECK_FRAMES if frames is None else frames
    img_size = CHECK_IMG_SIZE if img_size is None else img_size
    validate_setting("divided", "tiny", frames, img_size, patch)
    seed = DEFAULT_SEED if seed is None else seed
    dev = str(resolve_device(DEFAULT_DEVICE if device is None else device))
    seed_everything(seed)
    results = [r for name in names for r in run_checks(name, frames=frames, img_size=img_size, patch=patch, device=dev, seed=seed)]
    emit(checks_frame(results), csv=csv, json_path=json_path, quiet=quiet,
         title=f"vattn zoo --check ({frames}x{img_size}, patch {patch}, {dev})")
    failed = failures(results)
    if failed:
        schemes = sorted({r.scheme for r in failed})
        raise RunError(f"{len(failed)} conformance check(s) failed: "
                       + "; ".join(f"{s}: {', '.join(r.check for r in failed if r.scheme == s)}" for s in schemes))


def _show(text: str, model: str | None, frames: int | None, img_size: int | None, patch: int, tubelet: int | None,
          query: str | None, out: str | None, seed: int | None, csv: str | None, json_path: str | None,
          quiet: bool) -> None:
    """``--show``: who attends to whom, measured on one narrow block of each scheme at the full grid."""
    from vattn_cli.report.attention_map import FORMATS

    if model is not None:  # --size is --model's alias here; with --show a number is the frame size, as in train
        if not model.isdigit() or (img_size is not None and img_size != int(model)):
            raise UsageError(f"invalid --model/--size {model!r} with --show: who attends to whom does not depend on "
                             "the model size (it is measured on a narrow block); give the frame size in pixels "
                             "(--size 224 or --img-size 224)")
        img_size = int(model)
    names = scheme_list("--show", text)
    if out is not None and out.rsplit(".", 1)[-1].lower() not in FORMATS:
        raise UsageError(f"invalid --out {out!r}; expected a file ending in " + ", ".join(f".{f}" for f in FORMATS))
    check_outputs(files={"--csv": csv, "--json": json_path, "--out": out})
    frames = DEFAULTS["frames"] if frames is None else frames
    img_size = DEFAULTS["img_size"] if img_size is None else img_size
    patch = DEFAULTS["patch"] if patch is None else patch
    tubelet = 1 if tubelet is None else tubelet
    for name in names:
        validate_setting(name, "tiny", frames, img_size, patch, tubelet)
    from vattn_cli.measure.reach import attention_maps
    from vattn_cli.report.attention_map import counts_frame, draw, summary_frame
    from vattn_cli.report.tables import rich_table, stderr_console, stdout_console, write_frame

    rows = attention_maps(names, frames, img_size, patch, tubelet, query=query, seed=DEFAULT_SEED if seed is None else seed)
    if out is not None:
        draw(rows, out)
    if not quiet:
        side = img_size // patch
        console = stderr_console if "-" in (csv, json_path) else stdout_console
        console.print(rich_table(summary_frame(rows), title=(
            f"vattn zoo --show ({frames}x{img_size}, patch {patch}, token grid {frames // tubelet}x{side}x{side}, "
            f"query {rows[0].query})" + (f" -> {out}" if out else " (--out FILE.png draws it)"))))
    write_frame(counts_frame(rows), csv=csv, json_path=json_path)
    mismatched = [f"{r.scheme}: {p.name}" for r in rows for p in r.steps if not p.matches]
    if mismatched:
        raise RunError("declared steps differ from what the code reads (drawn as measured): " + "; ".join(mismatched))


def register(app: typer.Typer) -> None:
    app.command("zoo")(zoo)
