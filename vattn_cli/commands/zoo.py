"""``vattn zoo``: list schemes, sizes and presets with their parameter counts."""

from __future__ import annotations

import typer

from vattn_cli.commands._options import int_list
from vattn_cli.errors import one_of
from vattn_cli.report.tables import emit
from vattn_cli.zoo.registry import SIZES, validate_setting


def zoo(
    size: str = typer.Option("base", help="Size at which to count parameters: tiny, small, base, large."),
    frames: int = typer.Option(8, help="Frames at which to count parameters and tokens."),
    img_size: int = typer.Option(224, "--img-size", help="Frame size in pixels (square)."),
    patch: int = typer.Option(16, help="Patch size in pixels."),
    csv: str = typer.Option(None, "--csv", help="Write the table as CSV to PATH, or '-' for stdout."),
    json_path: str = typer.Option(None, "--json", help="Write the table as JSON to PATH, or '-' for stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table; only the files asked for."),
) -> None:
    """List every scheme, size and preset, with parameters at the given setting.

    Example: vattn zoo --csv -
    """
    from vattn_cli.zoo.info import zoo_frame

    if size not in SIZES:
        raise one_of("--size", size, list(SIZES))
    int_list("--frames", str(frames))
    validate_setting("divided", size, frames, img_size, patch)
    frame = zoo_frame(size=size, frames=frames, img_size=img_size, patch=patch)
    emit(frame, csv=csv, json_path=json_path, quiet=quiet, title=f"vattn zoo ({size}, {frames}x{img_size}, patch {patch})",
         columns=["kind", "name", "scheme", "size", "frames", "img_size", "tokens", "params_m", "source", "description"])


def register(app: typer.Typer) -> None:
    app.command("zoo")(zoo)
