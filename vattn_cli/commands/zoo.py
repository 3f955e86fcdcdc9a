"""``vattn zoo``: list schemes, sizes and presets with their parameter counts; ``--check`` schemes."""

from __future__ import annotations

import typer

from vattn_cli.commands._options import int_list, resolve_device, scheme_list, seed_everything, split_list
from vattn_cli.errors import RunError, one_of
from vattn_cli.report.tables import emit
from vattn_cli.zoo.registry import SIZES, validate_setting


def zoo(
    size: str = typer.Option("base", help="Size at which to count parameters: tiny, small, base, large."),
    frames: int = typer.Option(None, help="Frames at which to count parameters and tokens (default 8; 4 with --check)."),
    img_size: int = typer.Option(None, "--img-size", help="Frame size in pixels, square (default 224; 112 with --check)."),
    patch: int = typer.Option(16, help="Patch size in pixels."),
    scheme: str = typer.Option(
        None, "--scheme", help="List only these schemes: names, import paths module.path:Class, or all."
    ),
    check: str = typer.Option(
        None, "--check", help="Run the conformance suite on these schemes (names, module.path:Class, or all); exit 1 if a check fails."
    ),
    device: str = typer.Option("auto", help="Device for --check: auto, cpu or cuda."),
    seed: int = typer.Option(0, help="Seed for --check's random inputs."),
    csv: str = typer.Option(None, "--csv", help="Write the table as CSV to PATH, or '-' for stdout."),
    json_path: str = typer.Option(None, "--json", help="Write the table as JSON to PATH, or '-' for stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table; only the files asked for."),
) -> None:
    """List every scheme, size and preset, with parameters at the given setting.

    External schemes (import paths, the vattn.schemes entry points, VATTN_SCHEMES) are listed
    with where they came from in the source column.

    Example: vattn zoo --csv -

    Example: PYTHONPATH=examples vattn zoo --check custom_scheme:TemporalShiftAttention
    """
    if size not in SIZES:
        raise one_of("--size", size, list(SIZES))
    if check is not None:
        _check(check, frames, img_size, patch, device, seed, csv, json_path, quiet)
        return
    from vattn_cli.zoo.info import zoo_frame

    frames = 8 if frames is None else frames
    img_size = 224 if img_size is None else img_size
    int_list("--frames", str(frames))
    validate_setting("divided", size, frames, img_size, patch)
    names = scheme_list("--scheme", scheme) if scheme is not None else None
    frame = zoo_frame(size=size, frames=frames, img_size=img_size, patch=patch, schemes=names)
    emit(frame, csv=csv, json_path=json_path, quiet=quiet, title=f"vattn zoo ({size}, {frames}x{img_size}, patch {patch})",
         columns=["kind", "name", "scheme", "size", "frames", "img_size", "tokens", "params_m", "source", "description"])


def _check(text: str, frames: int | None, img_size: int | None, patch: int, device: str, seed: int,
           csv: str | None, json_path: str | None, quiet: bool) -> None:
    from vattn_cli.measure.conformance import CHECK_FRAMES, CHECK_IMG_SIZE, checks_frame, failures, run_checks
    from vattn_cli.zoo.registry import list_schemes

    frames = CHECK_FRAMES if frames is None else frames
    img_size = CHECK_IMG_SIZE if img_size is None else img_size
    int_list("--frames", str(frames))
    validate_setting("divided", "tiny", frames, img_size, patch)
    names = [n for item in split_list("--check", text) for n in (list_schemes() if item == "all" else [item])]
    names = list(dict.fromkeys(names))
    dev = str(resolve_device(device))
    seed_everything(seed)
    results = [r for name in names for r in run_checks(name, frames=frames, img_size=img_size, patch=patch, device=dev, seed=seed)]
    emit(checks_frame(results), csv=csv, json_path=json_path, quiet=quiet,
         title=f"vattn zoo --check ({frames}x{img_size}, patch {patch}, {dev})")
    failed = failures(results)
    if failed:
        schemes = sorted({r.scheme for r in failed})
        raise RunError(f"{len(failed)} conformance check(s) failed: "
                       + "; ".join(f"{s}: {', '.join(r.check for r in failed if r.scheme == s)}" for s in schemes))


def register(app: typer.Typer) -> None:
    app.command("zoo")(zoo)
