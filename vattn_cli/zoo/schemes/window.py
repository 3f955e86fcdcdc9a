"""Shifted-window attention (Video Swin Transformer; Liu et al., CVPR 2022) on the isotropic backbone.

Each block runs multi-head self-attention inside non-overlapping 3D windows of the patch grid,
``window = (Wt, Wh, Ww)`` tokens (default the paper's ``(8, 7, 7)``), with a learned relative
position bias; every other block shifts the windows by half a window, so information crosses
window borders from one block to the next (Swin's W-MSA / SW-MSA alternation). The cost is
linear in the number of tokens: ``windows x (Wt*Wh*Ww)^2`` per head instead of ``N^2``.

Who attends to whom, per block and clip grid ``(T, H, W)``:

1. **Window size for this clip.** As the official ``get_window_size``: on an axis where the grid
   is not larger than the window (``T <= Wt``), the window is the whole axis and that axis is
   not shifted. The clipped size is recomputed for every forward (a model built at 8 frames
   runs at 16 or at 4).
2. **Shift.** Blocks with an odd ``index`` (the second, fourth, ...) shift by ``Wa // 2`` on every
   axis ``a`` that is not clipped (``shift=False`` turns shifting off everywhere). The shift is
   Swin's cyclic one: the (padded) grid is rolled back by the shift, partitioned into windows,
   and rolled forward again after attention.
3. **Masks.** In the rolled grid the last window along a shifted axis holds tokens from both
   ends of the clip; as in Swin, tokens of different regions of that window do not attend to
   each other. Equivalently, in clip coordinates the windows along an axis start at the shift:
   ``[0, s), [s, s + W), [s + W, s + 2W), ...`` and a token attends exactly to the tokens
   whose window index ``(c - s) // W`` matches its own on all three axes.
4. **Padding.** A grid that is not a multiple of the (clipped) window is padded at its end
   (after t, h and w) and cropped after attention. Padded tokens are *never keys of real
   tokens*: they are masked out of every real query's softmax (``-inf``), so a window at the
   border is simply a smaller window. Padded queries (whose outputs are cropped) are given their
   own region's keys so that no softmax row is empty.
5. **Relative position bias.** Each head has a table of ``(2Wt-1)(2Wh-1)(2Ww-1)`` learned
   entries, sized by the ``window`` option (so the parameter count does not depend on the grid),
   initialised trunc-normal with std 0.02 as official; query ``i`` and key ``j`` add
   ``table[c_i - c_j]`` to their logit (clip-coordinate offsets; within one region these are the
   offsets inside the rolled window). A clipped smaller window uses the central subset of the
   offsets. Logits are ``q.k / sqrt(head_dim) + bias`` (masked ``-inf``), softmax, times ``v``.

Implementation: the Q/K/V projection runs on the real tokens only; q, k, v are then padded with
zeros, rolled and partitioned, and the windows folded into the batch axis go through
``scaled_dot_product_attention`` with a float additive ``attn_mask`` (bias + ``-inf`` mask) of
``[heads, Wt*Wh*Ww, Wt*Wh*Ww]``. Windows whose masks are identical form one call (a plan cached per
grid: along each axis a window's mask depends only on which of its positions wrap around or are
padding, so there are a handful of kinds, at most 27, one when nothing is shifted or padded);
nothing of size ``N x N`` is formed, the largest tensors are the window-folded q/k/v and one
mask per window kind. The output projection runs on the cropped, real tokens.

Attention FLOPs (one fused multiply-add = one FLOP) per block and clip:
``windows x (Wt*Wh*Ww)^2 x head_dim x 2 x heads`` with the clipped window and the padded grid's
window count ``ceil(T/Wt) * ceil(H/Wh) * ceil(W/Ww)`` (padded windows are computed). At fixed
frame size the count grows linearly with the frames once ``T > Wt`` (in steps of ``Wt``).

Options:

* ``window``: ``(t, h, w)`` window in tokens, or one int for all three axes; default ``(8, 7, 7)``.
* ``shift``: shift the windows on odd blocks (default ``True``).

CLS token: none (``cls_token = "none"``; the backbone mean-pools before the head, as Video Swin's
head averages the final feature map). The backbone's absolute spatial and temporal position
embeddings are kept (``uses_time_embed = True``), on top of the relative bias: the backbone is
the same for every scheme (Video Swin itself has no absolute embedding).

Deliberate differences from the official code (``mmaction/models/backbones/swin_transformer.py``):

* Isotropic backbone: one width and window for all blocks, no patch merging, no stages; the
  per-frame 16 x 16 patch embedding of the shared backbone instead of Swin's 2 x 4 x 4 one.
* Padding never leaks: the official code zero-pads the normalised tokens and lets them act as
  keys (their keys and values are the Q/K/V biases), so border tokens attend to padding. Here
  padded keys are masked out of every real query, and the projection runs on real tokens only
  (the same result at real tokens, whatever the padding holds).
* Masked logits are ``-inf`` (exact exclusion), not the official ``-100``.
* Relative bias of a clipped window: the official code reads its full-window
  ``relative_position_index[:N, :N]``. That is right when only the temporal (leading) axis is
  clipped, but where h or w is clipped the first ``N`` tokens of the full window are not the
  clipped window's tokens and the offsets belong to other pairs; here the offsets are always
  those of the clipped window's own tokens, read from the centre of the same table (equal to
  the official index whenever the official one is right).
* The CLS-free mean pool and the backbone's absolute position embeddings (see above).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from itertools import product
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vattn_cli.errors import UsageError
from vattn_cli.zoo.catalog import register_scheme
from vattn_cli.zoo.scheme import BlockArgs, Grid, SoftmaxBlock
from vattn_cli.zoo.schemes._grid import triple
from vattn_cli.zoo.steps import AttentionStep, coords

#: Plans are built on the CPU whatever the default device is (``torch.device("meta")`` when
#: parameters are counted without allocating them), then moved to the clip's device.
CPU = torch.device("cpu")


def clip_window(grid: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The window and shift used on ``grid``: the official ``get_window_size``.

    Where the grid is not larger than the window on an axis, the window is the grid's extent
    and that axis is not shifted.
    """
    size = tuple(min(n, w) for n, w in zip(grid, window))
    moved = tuple(0 if n <= w else s for n, w, s in zip(grid, window, shift))
    return size, moved


@lru_cache(maxsize=32)
def relative_index(window: tuple[int, int, int], size: tuple[int, int, int], device: torch.device) -> Tensor:
    """Table row of every (query, key) pair of a ``size`` window, flattened ``[L*L]``.

    The table is sized by ``window`` (``(2Wt-1)(2Wh-1)(2Ww-1)`` rows, offset ``(0, 0, 0)`` at
    its centre); a smaller ``size`` reads the central rows. Offsets are query minus key.
    """
    coords = torch.stack(torch.meshgrid(*(torch.arange(n, device=CPU) for n in size), indexing="ij")).flatten(1)  # 3, L
    offsets = coords[:, :, None] - coords[:, None, :]  # 3, L, L
    span_h, span_w = 2 * window[1] - 1, 2 * window[2] - 1
    index = (offsets[0] + window[0] - 1) * (span_h * span_w) + (offsets[1] + window[1] - 1) * span_w + offsets[2] + window[2] - 1
    return index.flatten().to(device)


class _Axis(NamedTuple):
    """One axis of the padded, rolled grid: per window, which positions wrap and which are real."""

    padded: int
    kinds: tuple[tuple[tuple[bool, bool], ...], ...]  # distinct (wrapped, real) patterns
    window_kind: tuple[int, ...]  # pattern of each window along the axis


def _axis(n: int, w: int, s: int) -> _Axis:
    padded = -(-n // w) * w
    kinds: list[tuple[tuple[bool, bool], ...]] = []
    window_kind = []
    for i in range(padded // w):
        rolled = [i * w + j for j in range(w)]
        pattern = tuple((r + s >= padded, (r + s) % padded < n) for r in rolled)
        if pattern not in kinds:
            kinds.append(pattern)
        window_kind.append(kinds.index(pattern))
    return _Axis(padded, tuple(kinds), tuple(window_kind))


class WindowPlan(NamedTuple):
    """How a clip's windows go through SDPA: padding, and one call per kind of window mask.

    ``order`` sorts the windows (in partition order, ``(t, h, w)`` window-major) by kind;
    ``counts[c]`` windows of kind ``c`` follow each other, ``masks[c]`` is that kind's additive
    ``[L, L]`` mask (0 or ``-inf``). ``masks`` is ``None`` when no window needs one.
    """

    pad: tuple[int, int, int]
    order: Tensor | None
    inverse: Tensor | None
    counts: tuple[int, ...]
    masks: Tensor | None


@lru_cache(maxsize=32)
def window_plan(grid: Grid, size: tuple[int, int, int], shift: tuple[int, int, int], device: torch.device) -> WindowPlan:
    axes = [_axis(n, w, s) for n, w, s in zip(grid, size, shift)]
    pad = tuple(a.padded - n for a, n in zip(axes, grid))
    kind_of = {}
    per_window = []
    for combo in product(*(a.window_kind for a in axes)):
        per_window.append(kind_of.setdefault(combo, len(kind_of)))
    masks = []
    for combo in kind_of:
        patterns = [torch.tensor(a.kinds[k], device=CPU) for a, k in zip(axes, combo)]  # [w_a, 2] each
        wrapped = [p[:, 0] for p in patterns]
        real = [p[:, 1] for p in patterns]
        same = torch.ones((1,) * 6, dtype=torch.bool, device=CPU)
        is_real = torch.ones((1, 1, 1), dtype=torch.bool, device=CPU)
        for axis in range(3):
            shape_q = [1] * 6
            shape_q[axis] = -1
            shape_k = [1] * 6
            shape_k[3 + axis] = -1
            same = same & (wrapped[axis].view(shape_q) == wrapped[axis].view(shape_k))
            shape = [1, 1, 1]
            shape[axis] = -1
            is_real = is_real & real[axis].view(shape)
        length = math.prod(size)
        same = same.expand(*size, *size).reshape(length, length)
        is_real = is_real.expand(*size).reshape(length)
        allowed = same & (is_real[None, :] | ~is_real[:, None])
        masks.append(torch.zeros(length, length, device=CPU).masked_fill(~allowed, float("-inf")))
    if len(masks) == 1 and not torch.isinf(masks[0]).any():
        return WindowPlan(pad, None, None, (len(per_window),), None)
    order_list = sorted(range(len(per_window)), key=lambda i: per_window[i])
    inverse_list = [0] * len(order_list)
    for position, window in enumerate(order_list):
        inverse_list[window] = position
    order = torch.tensor(order_list, device=CPU)
    inverse = torch.tensor(inverse_list, device=CPU)
    counts = tuple(per_window.count(kind) for kind in range(len(masks)))
    return WindowPlan(pad, order.to(device), inverse.to(device), counts, torch.stack(masks).to(device))


@register_scheme("window")
class ShiftedWindowBlock(SoftmaxBlock):
    """Pre-norm block with (shifted) 3D window attention and a relative position bias.

    The bias table is ``attn.relative_position_bias_table`` (``[(2Wt-1)(2Wh-1)(2Ww-1), heads]``),
    the official name and layout. ``window`` is the option as a triple, ``shift`` this block's
    shift before clipping (``window // 2`` on odd blocks, zeros on even ones or with ``shift=False``).
    """

    cls_token = "none"
    uses_time_embed = True
    description = "attention in 3D windows, shifted by half a window every other block, relative bias (Video Swin)"

    def __init__(self, args: BlockArgs, window: int | Sequence[int] = (8, 7, 7), shift: bool = True) -> None:
        super().__init__(args)
        self.window = triple("window", window)
        if not isinstance(shift, bool):
            raise UsageError(f"invalid shift {shift!r}; expected true or false")
        self.shift = tuple(w // 2 for w in self.window) if shift and args.index % 2 == 1 else (0, 0, 0)
        rows = math.prod(2 * w - 1 for w in self.window)
        self.attn.relative_position_bias_table = nn.Parameter(torch.zeros(rows, args.num_heads))
        nn.init.trunc_normal_(self.attn.relative_position_bias_table, std=0.02)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.trunc_normal_(self.attn.relative_position_bias_table, std=0.02)

    def extra_repr(self) -> str:
        return f"window={self.window}, shift={self.shift}"

    def attention_steps(self) -> tuple[AttentionStep, ...]:
        def keys(grid: Grid, query: tuple[int, int, int]) -> Tensor:
            # the module docstring's rule: same window index (c - s) // W on all three axes
            size, shift = clip_window(grid, self.window, self.shift)
            mask = torch.ones(*grid, dtype=torch.bool)
            for c, q, w, s in zip(coords(grid), query, size, shift):
                mask &= torch.div(c - s, w, rounding_mode="floor") == (q - s) // w
            return mask

        return (AttentionStep("window", keys, output="attn.proj"),)

    def pad_grid(self, x: Tensor, pad: tuple[int, int, int]) -> Tensor:
        """Pad ``[B, T, H, W, C]`` at the end of t, h and w (zeros; the values never matter)."""
        return F.pad(x, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))

    def bias(self, size: tuple[int, int, int], device: torch.device) -> Tensor:
        """Relative position bias of a ``size`` window, ``[heads, L, L]``."""
        length = math.prod(size)
        table = self.attn.relative_position_bias_table
        return table[relative_index(self.window, size, device)].view(length, length, -1).permute(2, 0, 1)

    def attend(self, x: Tensor, grid: Grid) -> Tensor:
        attn = self.attn
        b, _, d = x.shape
        size, shift = clip_window(grid, self.window, self.shift)
        plan = window_plan(Grid(*grid), size, shift, x.device)
        heads = attn.num_heads

        qkv = attn.qkv(x).view(b, grid.t, grid.h, grid.w, 3 * d)
        qkv = self.pad_grid(qkv, plan.pad)
        rolled = any(shift)
        if rolled:
            qkv = torch.roll(qkv, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        padded = qkv.shape[1:4]
        windows = rearrange(
            qkv, "b (nt wt) (nh wh) (nw ww) c -> b (nt nh nw) (wt wh ww) c", wt=size[0], wh=size[1], ww=size[2]
        )
        if plan.order is not None:
            windows = windows.index_select(1, plan.order)
        q, k, v = rearrange(windows, "b n l (three h e) -> three b n h l e", three=3, h=heads)
        bias = self.bias(size, x.device).to(q.dtype)
        dropout = attn.attn_drop if attn.training else 0.0

        outs, start = [], 0
        for kind, count in enumerate(plan.counts):
            mask = bias if plan.masks is None else bias + plan.masks[kind].to(q.dtype)
            part = [z[:, start:start + count].reshape(b * count, heads, *z.shape[-2:]) for z in (q, k, v)]
            out = F.scaled_dot_product_attention(*part, attn_mask=mask, dropout_p=dropout)
            outs.append(out.reshape(b, count, heads, *out.shape[-2:]))  # fused kernels may return a view
            start += count
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        if plan.inverse is not None:
            out = out.index_select(1, plan.inverse)

        out = rearrange(
            out, "b (nt nh nw) h (wt wh ww) e -> b (nt wt) (nh wh) (nw ww) (h e)",
            nt=padded[0] // size[0], nh=padded[1] // size[1], wt=size[0], wh=size[1], ww=size[2],
        )
        if rolled:
            out = torch.roll(out, shifts=shift, dims=(1, 2, 3))
        out = out[:, :grid.t, :grid.h, :grid.w].reshape(b, grid.patches, d)
        return attn.proj_drop(attn.proj(out))
