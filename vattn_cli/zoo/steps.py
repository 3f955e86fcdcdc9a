"""What a scheme declares about who attends to whom: its attention steps.

A block runs one or more attention steps (divided: time, then space; axial: time, width, height;
local_global: local, then global). A scheme lists them in :meth:`SchemeBlock.attention_steps
<vattn_cli.zoo.scheme.SchemeBlock.attention_steps>`, each an :class:`AttentionStep`: its name, the
keys a query patch attends to in that step (a boolean ``[T, H, W]`` grid, plus whether the CLS
token is one), and the linear layer whose output carries the step.

Why the output layer: it makes the declaration checkable against the code without knowing how
the scheme folds its tokens. Zero the output layers of every *other* step (their contribution is
then a constant) and the block's output at the query depends on exactly the tokens this step
reads (norms, MLP and residuals act per token). :mod:`vattn_cli.measure.reach` does that: it
replaces every token outside the declared keys and shows the query's output does not move, and
replaces each declared key alone and shows it does (``vattn zoo --check``, the step tests); and
``vattn zoo --show`` draws what the code reads, measured by gradients.

The helpers below build the usual patterns from coordinate volumes, so a declaration is a line::

    AttentionStep("time", same("hw"), output="temporal_fc")       # divided's temporal step
    AttentionStep("space", same("t"), output="attn.proj", cls=True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vattn_cli.zoo.scheme import Grid

#: A query patch ``(t, h, w)`` on the token grid.
Query = tuple[int, int, int]
#: ``keys(grid, query) -> bool [T, H, W]``: the patch tokens the query attends to in one step.
KeyPattern = Callable[[Grid, Query], Tensor]


@dataclass(frozen=True)
class AttentionStep:
    """One attention step of a block, as the scheme declares it.

    * ``name``: shown in ``vattn zoo --show`` (``time``, ``space``, ``local``, ...).
    * ``keys``: the patch tokens a query patch attends to, ``keys(grid, (t, h, w)) -> bool [T, H, W]``;
      the query itself included when its own token is read (its query vector always is, and
      usually its key). On a tubelet model, ``T`` counts temporal token positions.
    * ``output``: dotted name (on the block) of the ``nn.Linear`` whose output carries this step
      alone (divided's time step: ``temporal_fc``; its space step: ``attn.proj``). Zeroing its
      weight silences the step; see the module docstring.
    * ``channels``: the slice ``(start, stop)`` of that layer's *input* features that belong to this
      step, where steps share one projection (ViViT's factorised dot-product: the two halves of the
      heads); ``None``: all of them.
    * ``cls``: whether the CLS token is a key: the shared one, or, with per-frame CLS tokens, those
      of the frames in which the step has patch keys. Ignored for schemes without a CLS token.
    """

    name: str
    keys: KeyPattern
    output: str
    channels: tuple[int, int] | None = None
    cls: bool = False


def coords(grid: Grid) -> tuple[Tensor, Tensor, Tensor]:
    """Three ``[T, H, W]`` volumes holding each token's ``t``, ``h`` and ``w``."""
    t, h, w = torch.meshgrid(torch.arange(grid.t), torch.arange(grid.h), torch.arange(grid.w), indexing="ij")
    return t, h, w


def same(axes: str) -> KeyPattern:
    """Tokens that share the query's coordinates on ``axes`` (``"t"``: its frame; ``"hw"``: its
    position in every frame; ``"th"``: its row; ``"tw"``: its column; ``""``: every token)."""
    if any(a not in "thw" for a in axes):
        raise ValueError(f"axes must be letters of 'thw', got {axes!r}")

    def keys(grid: Grid, query: Query) -> Tensor:
        volumes = dict(zip("thw", coords(grid)))
        mask = torch.ones(*grid, dtype=torch.bool)
        for a in axes:
            mask &= volumes[a] == query["thw".index(a)]
        return mask

    return keys


everywhere: KeyPattern = same("")


def box(grid: Grid, ranges: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]) -> Tensor:
    """The tokens with ``lo <= coordinate < hi`` on each axis, ``ranges = ((t0, t1), (h0, h1), (w0, w1))``."""
    mask = torch.ones(*grid, dtype=torch.bool)
    for volume, (lo, hi) in zip(coords(grid), ranges):
        mask &= (volume >= lo) & (volume < hi)
    return mask


def around(extent: tuple[int, int, int]) -> KeyPattern:
    """The tokens within ``extent[a] // 2`` of the query on each axis (a window centred on it,
    clipped at the borders, as a zero-padded convolution sees it)."""

    def keys(grid: Grid, query: Query) -> Tensor:
        return box(grid, tuple((q - k // 2, q + k // 2 + 1) for q, k in zip(query, extent)))  # type: ignore[arg-type]

    return keys


def covered(n: int, kernel: int, stride: int) -> Tensor:
    """``bool [n]``: positions read by a convolution of ``kernel`` (padding ``kernel // 2``) and
    ``stride`` along an axis of ``n``, i.e. inside the window of at least one output."""
    pad = kernel // 2
    out = (n + 2 * pad - kernel) // stride + 1
    mask = torch.zeros(n, dtype=torch.bool)
    for j in range(out):
        lo = j * stride - pad
        mask[max(lo, 0):max(min(lo + kernel, n), 0)] = True
    return mask


def covered_grid(grid: Grid, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> Tensor:
    """``bool [T, H, W]``: the outer product of :func:`covered` on the three axes."""
    t, h, w = (covered(n, k, s) for n, k, s in zip(grid, kernel, stride))
    return t[:, None, None] & h[None, :, None] & w[None, None, :]


def with_query(mask: Tensor, query: Query) -> Tensor:
    """``mask`` with the query's own token added."""
    mask = mask.clone()
    mask[query] = True
    return mask
