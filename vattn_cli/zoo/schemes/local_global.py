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

Both steps go through ``scaled_dot_product_attention`` with no mask: the local step gathers each
group of queries' window (queries sharing a window start, all columns at once, one group of
rows at a time), the global step slices the 8 parity groups. No N x N tensor is ever built, so
memory grows with ``N * T * kh * kw`` per group of rows, and odd grid sizes need no padding.
"""

from __future__ import annotations

from itertools import groupby, product

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vattn_cli.zoo.layers import Attention
from vattn_cli.zoo.registry import register_scheme
from vattn_cli.zoo.scheme import Grid, SoftmaxBlock


def local_extent(n: int) -> int:
    """Window length along an axis of ``n`` patches: half of it, rounded up (at least 1)."""
    return max(1, (n + 1) // 2)


def window_starts(n: int, k: int) -> list[int]:
    """First index of the ``k``-long window of each position ``0..n-1``: centred, kept inside."""
    return [min(max(i - (k - 1) // 2, 0), n - k) for i in range(n)]


def _sdpa(attn: Attention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop if attn.training else 0.0)


def _project(attn: Attention, out: Tensor) -> Tensor:
    return attn.proj_drop(attn.proj(rearrange(out, "b h n d -> b n (h d)")))


@register_scheme("local_global")
class LocalGlobalAttention(SoftmaxBlock):
    cls_token = "shared"
    description = "local T x H/2 x W/2 window then stride-2 sparse global attention (TimeSformer L+G)"

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias, norm_eps, drop, attn_drop, drop_path)
        self.local_norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.local_attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.local_fc = nn.Linear(dim, dim)

    def reset_temporal(self) -> None:
        """Zero the local projection so the block starts as a (sparse) image-model block."""
        nn.init.zeros_(self.local_fc.weight)
        nn.init.zeros_(self.local_fc.bias)

    def local_attention(self, x: Tensor, grid: Grid) -> Tensor:
        """Step 1 on normalised patch tokens ``[B, T*H*W, D]`` (no CLS)."""
        t, h, w = grid
        kh, kw = local_extent(h), local_extent(w)
        q, k, v = (z.unflatten(2, (t, h, w)) for z in self.local_attn.qkv_heads(x))
        out = q.new_empty(q.shape)
        col_starts = torch.tensor(window_starts(w, kw), device=x.device)
        cols = col_starts[:, None] + torch.arange(kw, device=x.device)  # [W, kw]
        row = 0
        for start, members in groupby(window_starts(h, kh)):
            rows = slice(row, row + len(list(members)))
            row = rows.stop
            qs = rearrange(q[:, :, :, rows], "b n t r w d -> (b w) n (t r) d")
            ks, vs = (
                rearrange(z[:, :, :, start:start + kh][..., cols, :], "b n t r w c d -> (b w) n (t r c) d")
                for z in (k, v)
            )
            res = _sdpa(self.local_attn, qs, ks, vs)
            out[:, :, :, rows] = rearrange(res, "(b w) n (t r) d -> b n t r w d", w=w, t=t)
        return _project(self.local_attn, out.flatten(2, 4))

    def global_attention(self, x: Tensor, grid: Grid) -> Tensor:
        """Step 2 on normalised tokens ``[B, 1 + T*H*W, D]`` (CLS first)."""
        t, h, w = grid
        q, k, v = self.attn.qkv_heads(x)
        out = q.new_empty(q.shape)
        out[:, :, :1] = _sdpa(self.attn, q[:, :, :1], k, v)
        grids = [z[:, :, 1:].unflatten(2, (t, h, w)) for z in (q, k, v, out)]
        for pt, ph, pw in product(range(2), repeat=3):
            group = (slice(None), slice(None), slice(pt, None, 2), slice(ph, None, 2), slice(pw, None, 2))
            qg, kg, vg, og = (z[group] for z in grids)
            if qg.numel() == 0:  # an axis of length 1 has no odd positions
                continue
            kg, vg = (torch.cat([z[:, :, :1], zg.flatten(2, 4)], dim=2) for z, zg in ((k, kg), (v, vg)))
            og.copy_(_sdpa(self.attn, qg.flatten(2, 4), kg, vg).reshape(og.shape))
        return _project(self.attn, out)

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        cls, patches = x[:, :1], x[:, 1:]
        res = self.drop_path(self.local_attention(self.local_norm1(patches), grid))
        x = torch.cat([cls, patches + self.local_fc(res)], dim=1)
        x = x + self.drop_path(self.global_attention(self.norm1(x), grid))
        return x + self.drop_path(self.mlp(self.norm2(x)))
