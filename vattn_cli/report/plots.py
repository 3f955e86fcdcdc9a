"""Plots of measurements: one line per group (scheme) on log-log axes, out-of-memory marked.

Built on :class:`matplotlib.figure.Figure` directly, never ``pyplot``: no global state and no
display backend, so plotting works the same on a headless CI machine, in a worker, or beside
a user's own notebook figures. Files are written atomically (rendered in memory, then
temporary file, fsync, rename), PNG for reading and SVG for papers.

The studies (``ablate tokens``, ``ablate schemes``) compose these helpers; they know nothing
about tokens or accuracy, only columns of a frame.
"""

from __future__ import annotations

import io
import math
import os
import textwrap
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from vattn_cli.atomic import atomic_open

_MARKERS = "osD^v<>ph*P"
#: How an out-of-memory point is drawn, in the colour of its group.
OOM_STYLE = dict(marker="x", markersize=10, markeredgewidth=2.4, linestyle="none")
OOM_LABEL = "out of memory"


def group_styles(names: Sequence[str]) -> dict[str, dict]:
    """A colour and a marker per group, fixed by its position in ``names``.

    Pass the same ordered list to every figure of a study so a scheme keeps its colour.
    """
    colors = colormaps["tab10"].colors
    return {name: {"color": colors[i % len(colors)], "marker": _MARKERS[i % len(_MARKERS)]}
            for i, name in enumerate(names)}


def panels(count: int, suptitle: str | None = None, width: float = 5.0, height: float = 4.3) -> tuple[Figure, list[Axes]]:
    """A figure with ``count`` panels side by side (constrained layout: labels never overlap).

    The title is wrapped to the figure's width: constrained layout makes room for it in height
    only, so a long one would run off both sides of a single panel.
    """
    size = (max(width * count, 6.5), height)
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(1, count, squeeze=False)[0]
    if suptitle:
        chars = int(size[0] * 8.5)  # about what fits at 12 pt
        fig.suptitle("\n".join(textwrap.fill(line, chars) for line in suptitle.splitlines()), fontsize=12)
    return fig, list(axes)


def _finite(values: Iterable) -> np.ndarray:
    return np.array([v if v is not None else np.nan for v in values], dtype=float)


def plot_groups(
    ax: Axes,
    frame: pd.DataFrame,
    x: str,
    y: str,
    styles: dict[str, dict],
    *,
    group: str = "scheme",
    status: str = "status",
    connect: bool = True,
) -> bool:
    """Draw ``y`` against ``x``: one line per group over its ``ok`` rows (sorted by ``x``).

    Rows whose status is ``oom`` are drawn as an ``x`` in the group's colour: at their value
    where it was measured anyway (a FLOP count needs no run), joined to the line by a dotted
    segment; at the top edge of the panel where it was not, so the reader sees where a group
    stops fitting. Other failed rows are left out. Returns whether anything was drawn.
    """
    drawn = False
    stacked: Counter = Counter()  # OOM markers at the same x are staggered down the edge
    for name, style in styles.items():
        rows = frame[frame[group] == name].sort_values(x)
        if rows.empty:
            continue
        xs, ys = _finite(rows[x]), _finite(rows[y])
        ok = (rows[status] == "ok").to_numpy() & np.isfinite(ys) & (ys > 0)
        oom = (rows[status] == "oom").to_numpy()
        if ok.any():
            ax.plot(xs[ok], ys[ok], color=style["color"], marker=style["marker"], markersize=5,
                    linestyle="-" if connect else "none", linewidth=1.6, label=name)
            drawn = True
        valued = oom & np.isfinite(ys) & (ys > 0)
        if valued.any():
            tail_x, tail_y = xs[valued], ys[valued]
            if connect and ok.any():
                tail_x, tail_y = np.r_[xs[ok][-1], tail_x], np.r_[ys[ok][-1], tail_y]
                ax.plot(tail_x, tail_y, color=style["color"], linestyle=":", linewidth=1.4)
            ax.plot(xs[valued], ys[valued], color=style["color"], **OOM_STYLE)
            drawn = True
        for value in xs[oom & ~valued]:
            level = 1.0 - 0.045 * stacked[round(float(value), 6)]
            stacked[round(float(value), 6)] += 1
            ax.plot([value], [level], color=style["color"], transform=ax.get_xaxis_transform(), clip_on=False,
                    **OOM_STYLE)
    return drawn


def _merge_close(values: Iterable[float], rel: float = 0.15) -> list[float]:
    merged: list[float] = []
    for value in sorted(v for v in values if v and math.isfinite(v) and v > 0):
        if not merged or value > merged[-1] * (1 + rel):
            merged.append(value)
    return merged


def _plain(value: float, _pos: object = None) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}"


def log_log(ax: Axes, xlabel: str, ylabel: str, title: str, xticks: Iterable[float] | None = None) -> None:
    """Log axes with units in the labels; ``xticks`` (e.g. the token counts measured) labelled
    in plain numbers when there are few enough to read."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.margins(x=0.08)  # room for the markers of the first and last points beside the spines
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, pad=12)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    ticks = _merge_close(xticks if xticks is not None else [])
    if 1 < len(ticks) <= 8:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(_plain))
        ax.xaxis.set_minor_locator(NullLocator())
        for label in ax.get_xticklabels():
            label.set_rotation(30)
    _readable_log_y(ax)


def _readable_log_y(ax: Axes) -> None:
    """Over less than two decades matplotlib labels one or two powers of ten, or crowds every
    minor tick: label 1-2-5 steps (1..9 over a narrow range) in plain numbers instead."""
    low, high = ax.get_ylim()
    if not (low > 0 and high / low < 100):
        return
    for subs in ((1.0, 2.0, 5.0), tuple(range(1, 10))):
        ticks = [t for t in LogLocator(subs=subs).tick_values(low, high) if low <= t <= high]
        if len(ticks) >= 3:
            break
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(_plain))
    ax.yaxis.set_minor_formatter(NullFormatter())


def empty_panel(ax: Axes, title: str, message: str = "not measured") -> None:
    """A panel with nothing to show says so rather than drawing empty axes."""
    ax.set_title(title, pad=12)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def legend_below(fig: Figure, styles: dict[str, dict], with_oom: bool = False) -> None:
    """One legend for all panels, below them: the groups, and the out-of-memory marker
    (an ``x`` at the point's value where it was measured, at the panel's top edge where not)."""
    handles = [Line2D([], [], color=s["color"], marker=s["marker"], linewidth=1.6, label=name)
               for name, s in styles.items()]
    if with_oom:
        handles.append(Line2D([], [], color="0.2", label=OOM_LABEL, **OOM_STYLE))
    per_row = max(1, int(fig.get_figwidth() // 1.6))  # entries that fit side by side
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), per_row), frameon=False)


def save_figure(fig: Figure, stem: str | os.PathLike, formats: Sequence[str] = ("png", "svg"),
                dpi: int = 130) -> list[Path]:
    """Write ``stem.png``, ``stem.svg`` (or ``formats``) atomically; returns the paths."""
    paths = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        buffer = io.BytesIO()
        metadata = {"Date": None} if fmt == "svg" else None  # same figure, same bytes
        fig.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata)
        with atomic_open(path) as fh:
            fh.write(buffer.getvalue())
        paths.append(path)
    return paths
