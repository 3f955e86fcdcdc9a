"""Sparse local-global attention (TimeSformer's L+G, paper section 3 and Figure 2).

The paper describes it in one sentence and released no code; this is our reading. Per block:

1. **Local attention.** Patch ``(t, h, w)`` attends to the patches of *every* frame inside a
   window of ``kh x kw`` patches around it, ``kh = ceil(H/2)``, ``kw = ceil(W/2)`` (the
   paper's ``F x H/2 x W/2``). The window's rows are ``[s, s + kh)`` with
   ``s = clamp(h - (kh - 1) // 2, 0, H - kh)``: centred on the patch (one more row after it than
   before it when ``kh`` is even), shifted inward at the borders so that every patch sees
   exactly ``T * kh * kw`` patches (as neighbourhood attention does); columns likewise. A
   centred sliding window, not a tiling, because the paper's window is *around* each patch.
   The CLS token takes no part. The step has its own norm, Q/K/V and output projection and a
   ``local_fc`` initialised to zero: it plays divided's temporal step, with the same
   parameters, so the parameter count equals divided's (121,566,352 at base 8x224 with 400
   classes; the paper gives 121.4M for both).
2. **Sparse global attention** with stride 2 along t, h and w, in the dilated form of the
   sparse transformer's strided pattern (Child et al. 2019, whom the paper cites): patch
   ``(t, h, w)`` attends to the patches with the same ``(t % 2, h % 2, w % 2)``, i.e. every
   second patch along each axis counted from itself, over the whole clip, plus the CLS token.
   We prefer this over sub-sampling the keys to the even positions: the cost is the same
   (``N^2 / 8``), but no patch is left out as a key, and the pattern is symmetric. The CLS
   token is a global token (as in Longformer/BigBird): it attends to every token, and every
   patch attends to it, so one softmax over the clip forms the class summary at O(N) cost. It
   uses the block's ``norm1``/``attn``, the image model's attention, as divided's spatial step.
3. The MLP.

Both steps go through ``scaled_dot_product_attention`` with no mask, on gathered tokens (a plan
cached per grid, see :func:`local_plan` and :func:`global_plan`): the local step runs one call
per run of rows that share a window start (``H - kh + 1`` calls, the ``W`` columns batched, each
column's queries from all frames attending to its ``T x kh x kw`` window); the global step runs
one call for the CLS query and one per parity group. No N x N tensor is ever built: the largest
gather is ``W x T*kh*kw`` tokens per call, and odd grid sizes need no padding.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import groupby, product
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from vattn_cli.zoo.layers import Attention
from vattn_cli.zoo.catalog import register_scheme
from vattn_cli.zoo.scheme import BlockArgs, Grid, SoftmaxBlock
from vattn_cli.zoo.steps import AttentionStep, box, coords


def local_extent(n: int) -> int:
    """Window length along an axis of ``n`` patches: half of it, rounded up (at least 1)."""
    return max(1, (n + 1) // 2)


def window_starts(n: int, k: int) -> list[int]:
    """First index of the ``k``-long window of each position ``0..n-1``: centred, kept inside."""
    return [min(max(i - (k - 1) // 2, 0), n - k) for i in range(n)]


class _Plan(NamedTuple):
    """Who attends to whom, as SDPA calls over gathered tokens.

    Call ``i`` runs ``G_i`` independent attentions (batched): row ``g`` of its query indices
    attends to row ``g`` of ``keys [G_i, Lk_i]``. The query indices of all calls, concatenated,
    are ``order``, a permutation of the tokens; ``inverse`` undoes it.
    """

    order: Tensor
    inverse: Tensor
    calls: tuple[tuple[int, int, Tensor], ...]  # (G, Lq, keys [G, Lk])


def _plan(calls: list[tuple[Tensor, Tensor]]) -> _Plan:
    order = torch.cat([q.flatten() for q, _ in calls])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return _Plan(order, inverse, tuple((q.shape[0], q.shape[1], k) for q, k in calls))


@lru_cache(maxsize=32)
def local_plan(grid: Grid, device: torch.device) -> _Plan:
    """Step 1 over patch tokens: one call per run of rows sharing a window start, columns batched."""
    t, h, w = grid
    kh, kw = local_extent(h), local_extent(w)
    idx = torch.arange(grid.patches, device=device).view(t, h, w)
    cols = torch.tensor(window_starts(w, kw), device=device)[:, None] + torch.arange(kw, device=device)
    calls, row = [], 0
    for start, members in groupby(window_starts(h, kh)):
        rows = slice(row, row + len(list(members)))
        row = rows.stop
        calls.append((
            rearrange(idx[:, rows], "t r w -> w (t r)"),
            rearrange(idx[:, start:start + kh][:, :, cols], "t r w c -> w (t r c)"),
        ))
    return _plan(calls)


@lru_cache(maxsize=32)
def global_plan(grid: Grid, device: torch.device) -> _Plan:
    """Step 2 over ``[CLS, patches]``: the CLS query over all tokens, then the 8 parity groups."""
    idx = torch.arange(1, 1 + grid.patches, device=device).view(*grid)
    cls = idx.new_zeros(1)
    calls = [(cls[None], torch.cat([cls, idx.flatten()])[None])]
    for pt, ph, pw in product(range(2), repeat=3):
        group = idx[pt::2, ph::2, pw::2].flatten()
        if group.numel():  # an axis of length 1 has no odd positions
            calls.append((group[None], torch.cat([cls, group])[None]))
    return _plan(calls)


def attend_planned(attn: Attention, x: Tensor, plan: _Plan) -> Tensor:
    """``attn`` over ``x [B, N, D]`` restricted to ``plan``: unmasked SDPA on gathered tokens.

    Tokens are gathered as whole rows (D contiguous values) before the heads are split, which
    keeps the copies cheap; nothing of size N x N is formed.
    """
    b, _, d = x.shape
    q, k, v = (z.contiguous() for z in attn.qkv(x).chunk(3, dim=-1))  # Attention's "(three h d)"
    q = q.index_select(1, plan.order)
    outs, start = [], 0
    for g, lq, keys in plan.calls:
        qg = q[:, start:start + g * lq].reshape(b * g, lq, attn.num_heads, -1).transpose(1, 2)
        kg, vg = (
            z.index_select(1, keys.flatten()).view(b * g, keys.shape[1], attn.num_heads, -1).transpose(1, 2)
            for z in (k, v)
        )
        res = F.scaled_dot_product_attention(qg, kg, vg, dropout_p=attn.attn_drop if attn.training else 0.0)
        outs.append(res.transpose(1, 2).reshape(b, g * lq, d))
        start += g * lq
    out = torch.cat(outs, dim=1).index_select(1, plan.inverse)
    return attn.proj_drop(attn.proj(out))


def local_keys(grid: Grid, query: tuple[int, int, int]) -> Tensor:
    """Step 1's keys, as the module docstring says: every frame, the ``kh x kw`` window around the query."""
    _, qh, qw = query
    kh, kw = local_extent(grid.h), local_extent(grid.w)
    h0, w0 = window_starts(grid.h, kh)[qh], window_starts(grid.w, kw)[qw]
    return box(grid, ((0, grid.t), (h0, h0 + kh), (w0, w0 + kw)))


def global_keys(grid: Grid, query: tuple[int, int, int]) -> Tensor:
    """Step 2's patch keys: the patches of the query's parity ``(t % 2, h % 2, w % 2)`` (and the CLS)."""
    t, h, w = coords(grid)
    return (t % 2 == query[0] % 2) & (h % 2 == query[1] % 2) & (w % 2 == query[2] % 2)


@register_scheme("local_global")
class LocalGlobalAttention(SoftmaxBlock):
    cls_token = "shared"
    description = "local T x H/2 x W/2 window then stride-2 sparse global attention (TimeSformer L+G)"

    def __init__(self, args: BlockArgs) -> None:
        super().__init__(args)
        self.local = self.add_branch("local")  # local_norm1, local_attn, local_fc

    def attention_steps(self) -> tuple[AttentionStep, ...]:
        return (
            AttentionStep("local", local_keys, output="local_fc"),
            AttentionStep("global", global_keys, output="attn.proj", cls=True),
        )

    def local_attention(self, x: Tensor, grid: Grid) -> Tensor:
        """Step 1 on normalised patch tokens ``[B, T*H*W, D]`` (no CLS)."""
        return attend_planned(self.local_attn, x, local_plan(grid, x.device))

    def global_attention(self, x: Tensor, grid: Grid) -> Tensor:
        """Step 2 on normalised tokens ``[B, 1 + T*H*W, D]`` (CLS first)."""
        return attend_planned(self.attn, x, global_plan(grid, x.device))

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        cls, patches = x[:, :1], x[:, 1:]
        res = self.local(patches, lambda _, y: self.drop_path(self.local_attention(y, grid)))
        x = torch.cat([cls, patches + res], dim=1)
        x = x + self.drop_path(self.global_attention(self.norm1(x), grid))
        return x + self.drop_path(self.mlp(self.norm2(x)))
