"""TimeSformer's picture of who attends to whom, for any scheme: one row per scheme, one small grid
per frame, the query patch in blue and each attention step's keys in their own colour, then, as a
last panel, the tokens that reach the query through one whole block.

This module only draws (and tabulates) what it is given: :mod:`vattn_cli.measure.reach` measures
the masks from the schemes' code. A cell in the keys of several steps shows the first step's
colour with the next one's inset, so overlaps stay visible (divided's query row and column).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: Output formats ``--out`` accepts (by suffix).
FORMATS = ("png", "svg", "pdf")
QUERY_COLOUR = "#1f4fd6"
STEP_COLOURS = ("#2ca02c", "#ff7f0e", "#d62728", "#9467bd", "#8c564b", "#e377c2")
BLOCK_COLOUR = "#8c8c8c"
_EMPTY, _EDGE = (1.0, 1.0, 1.0), (0.82, 0.82, 0.82)
CELL = 6  # pixels per token: a 1-pixel edge, a 5-pixel fill with a 3-pixel inset for overlaps


@dataclass
class StepPanel:
    """The keys of one step (or the whole block) for one query: ``keys`` is ``bool [T, H, W]``."""

    name: str
    keys: np.ndarray
    cls_keys: int = 0
    matches: bool = True  # the code reads exactly the declared keys

    @property
    def count(self) -> int:
        return int(self.keys.sum()) + self.cls_keys


@dataclass
class MapRow:
    """One scheme of the figure: its steps' panels and the whole-block panel."""

    scheme: str
    query: tuple[int, int, int]
    steps: list[StepPanel]
    block: StepPanel
    tokens: int
    cls_tokens: int = 0
    description: str = ""

    def share(self, panel: StepPanel) -> float:
        return 100.0 * panel.count / max(self.tokens, 1)


def _rgb(colour: str) -> tuple[float, float, float]:
    colour = colour.lstrip("#")
    return tuple(int(colour[i:i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]


def _frames_image(layers: Sequence[tuple[np.ndarray, str]], query: tuple[int, int, int], shape: tuple[int, int, int],
                  gap: int) -> np.ndarray:
    """RGB image of ``T`` grids side by side: each layer's mask in its colour (later layers inset
    where an earlier one already filled the cell), the query on top."""
    t, h, w = shape
    width = t * w * CELL + (t - 1) * gap
    image = np.ones((h * CELL, width, 3))
    fill = np.zeros(shape, dtype=int)  # how many layers already drew each cell
    for mask, colour in layers:
        rgb = _rgb(colour)
        for f, y, x in zip(*np.nonzero(mask)):
            x0, y0 = f * (w * CELL + gap) + x * CELL, y * CELL
            inset = 1 + min(fill[f, y, x], 2)
            if fill[f, y, x] == 0:
                image[y0 + 1:y0 + CELL, x0 + 1:x0 + CELL] = rgb
            else:
                image[y0 + inset:y0 + CELL - inset + 1, x0 + inset:x0 + CELL - inset + 1] = rgb
            fill[f, y, x] += 1
    qt, qh, qw = query
    x0, y0 = qt * (w * CELL + gap) + qw * CELL, qh * CELL
    image[y0 + 1:y0 + CELL, x0 + 1:x0 + CELL] = _rgb(QUERY_COLOUR)
    for f in range(t):  # cell edges
        x0 = f * (w * CELL + gap)
        for k in range(h + 1):
            image[min(k * CELL, h * CELL - 1), x0:x0 + w * CELL] = _EDGE
        for k in range(w + 1):
            image[:, min(x0 + k * CELL, x0 + w * CELL - 1)] = _EDGE
    return image


def draw(rows: Sequence[MapRow], path: str | Path, title: str | None = None) -> Path:
    """Write the figure to ``path`` (``.png``, ``.svg`` or ``.pdf``, atomically); returns it."""
    from matplotlib.figure import Figure

    from vattn_cli.report.plots import save_figure

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown figure format {path.suffix!r}; expected one of {', '.join(FORMATS)}")
    t, h, w = rows[0].block.keys.shape
    gap = 2 * CELL
    frame_px = t * w * CELL + (t - 1) * gap
    # width in inches: label column, the steps' frames, the whole-block frames, the counts
    px_per_in = 105.0
    map_w = 2 * frame_px / px_per_in + 0.6
    row_h = max(h * CELL / px_per_in, 0.55) + 0.28
    label_w = 0.3 + 0.11 * max(len(r.scheme) for r in rows)  # inches for the scheme names
    fig = Figure(figsize=(map_w + label_w + 3.9, row_h * len(rows) + 0.9))
    top = 1 - 0.55 / fig.get_figheight()
    gs = fig.add_gridspec(len(rows), 3, width_ratios=[frame_px, frame_px, 4.0 * px_per_in], wspace=0.04,
                          left=label_w / fig.get_figwidth(), right=0.99, top=top, bottom=0.15 / fig.get_figheight(),
                          hspace=0.28)
    for i, row in enumerate(rows):
        layers = [(p.keys, STEP_COLOURS[j % len(STEP_COLOURS)]) for j, p in enumerate(row.steps)]
        steps_ax, block_ax, text_ax = (fig.add_subplot(gs[i, c]) for c in range(3))
        for ax, image in ((steps_ax, _frames_image(layers, row.query, (t, h, w), gap)),
                          (block_ax, _frames_image([(row.block.keys, BLOCK_COLOUR)], row.query, (t, h, w), gap))):
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        if not row.steps:
            steps_ax.text(0.01, 0.97, "no steps declared", transform=steps_ax.transAxes, ha="left", va="top",
                          color="0.35", fontsize=9, bbox=dict(facecolor="white", edgecolor="0.8"))
        steps_ax.text(-0.01, 0.5, row.scheme, transform=steps_ax.transAxes, ha="right", va="center",
                      fontsize=11, fontweight="bold")
        if i == 0:
            for ax, label in ((steps_ax, "each attention step (frames t = 0 .. T-1)"),
                              (block_ax, "after the whole block (measured)")):
                ax.set_title(label, fontsize=9.5, pad=4)
        text_ax.axis("off")
        lines = [(f"{p.name}: {p.count} ({row.share(p):.3g}%)" + ("" if p.matches else "  != declared"),
                  STEP_COLOURS[j % len(STEP_COLOURS)] if p.matches else "#c00000") for j, p in enumerate(row.steps)]
        lines.append((f"block: {row.block.count} of {row.tokens} ({row.share(row.block):.3g}%)", BLOCK_COLOUR))
        for k, (text, colour) in enumerate(lines):
            text_ax.text(0.02, 1 - (k + 0.5) / max(len(lines), 3), text, transform=text_ax.transAxes, va="center",
                         fontsize=8.5, color=colour)
    q = rows[0].query
    heading = title or f"Who attends to whom: query patch (t, h, w) = {q} in blue, grid {t} x {h} x {w}"
    fig.suptitle(heading + "\ncounts: keys (share of all tokens, CLS included); cells with two colours are in two steps",
                 fontsize=10.5, y=1 - 0.08 / fig.get_figheight(), va="top")
    save_figure(fig, path.with_suffix(""), formats=(fmt,), dpi=int(px_per_in * 1.6))
    return path


def counts_frame(rows: Sequence[MapRow]) -> pd.DataFrame:
    """Keys per scheme, step and frame (``frame`` ``cls`` for the CLS tokens); step ``block`` is the
    whole block. ``share`` is the step's keys over all the clip's tokens."""
    import pandas as pd

    records = []
    for row in rows:
        panels = [(i + 1, p) for i, p in enumerate(row.steps)] + [(0, row.block)]
        for order, panel in panels:
            step = "block" if order == 0 else panel.name
            common = {"scheme": row.scheme, "step": step, "order": order, "query": ",".join(map(str, row.query))}
            for f in range(panel.keys.shape[0]):
                records.append({**common, "frame": str(f), "keys": int(panel.keys[f].sum()),
                                "of": int(panel.keys[f].size), "step_keys": panel.count, "tokens": row.tokens,
                                "share": round(row.share(panel), 4), "matches_declared": panel.matches})
            if row.cls_tokens:
                records.append({**common, "frame": "cls", "keys": panel.cls_keys, "of": row.cls_tokens,
                                "step_keys": panel.count, "tokens": row.tokens, "share": round(row.share(panel), 4),
                                "matches_declared": panel.matches})
    return pd.DataFrame(records)


def summary_frame(rows: Sequence[MapRow]) -> pd.DataFrame:
    """One line per scheme and step (the table ``vattn zoo --show`` prints)."""
    import pandas as pd

    records = []
    for row in rows:
        for order, panel in [(i + 1, p) for i, p in enumerate(row.steps)] + [(0, row.block)]:
            frames = int(panel.keys.reshape(panel.keys.shape[0], -1).any(1).sum())
            records.append({"scheme": row.scheme, "step": "block" if order == 0 else panel.name,
                            "keys": panel.count, "share": round(row.share(panel), 3), "frames": frames,
                            "cls": panel.cls_keys, "matches_declared": panel.matches})
    return pd.DataFrame(records)
