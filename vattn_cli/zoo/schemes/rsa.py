"""Relational Self-Attention (RSA; Kim et al., NeurIPS 2021) as a scheme of the shared backbone.

RSA mixes each token with its local space-time neighbourhood (default 5 x 7 x 7 tokens) through
a *dynamic kernel* applied to a *dynamic context*, both built from relations between features
rather than from isolated features. Per position ``p`` and neighbourhood offset ``m``, with
``q`` (one per head), the shared key ``k`` and the shared value ``v`` all L2-normalised over
channels (RSA uses no softmax):

* kernel, in a latent space of ``dd`` dims::

      kappa[p, h, d] = sum_c q[p,h,c] * P[c,d]                              (basic kernel)
                     + sum_m sum_c q[p,h,c] * k[p+m,c] * H[c,d,m]           (relational kernel)

  the second term projects the Hadamard query-key correlations of the whole neighbourhood
  (``M x dk`` numbers) to ``dd`` dims;
* context, ``dv`` channels by ``dd`` latent dims::

      X[p, e, d] = sum_m' Hv[d,m'] * ( sum_v I[v,e] v[p+m',v]                 (values)
                   + sum_m G[e,m] * <v[p+m], v[p+m']> )                         (value-value
                                                                                self-correlation)
* output per head: ``y[p, h, e] = sum_d kappa[p,h,d] X[p,e,d]``, heads concatenated, then a
  linear projection (as every attention of the backbone has).

This is the official layer's factorisation (``kernel_type = feat_type = "VplusR"``, its
default for Something-Something, with ``dk = dv = dd = channels / heads``): kernel and context
meet in ``dd`` latent dims instead of the ``M`` neighbourhood slots, so the ``M x M`` and
``M x C`` tensors of the paper's equations are never formed. Every sum over the neighbourhood is
a grouped 3D convolution (``H`` depthwise over key channels, ``Hv`` and ``G`` over value
channels folded into the batch) and every sum over channels is an einsum; the largest
intermediate holds ``dk * dd`` numbers per token, never an ``M``-fold copy of the channels.

Training on small grids: while autograd records and the grid has no more tokens than the
window has offsets (every neighbourhood mostly border), the two value convolutions run as one
product with the window's weights laid out as a token x token matrix
(:func:`~vattn_cli.zoo.schemes._grid.window_matrix`): the same sums with fewer multiplies, 4-5x
faster forward plus backward on the built-in tasks' 4 x 4 grids on CPU, where the convolution's
backward is slow; on clips of more frames than the window spans, both run as one
:func:`~vattn_cli.zoo.schemes._grid.frames_conv` instead (1.2x a training step at 8 x 32).
The key convolution (``dk`` groups of ``dd`` kernels) would need
``dk * dd * N^2`` numbers that way; it trains through :func:`~vattn_cli.zoo.schemes._grid.frames_conv`
instead, with matrices over one frame's tokens and shifts along time (``dk * dd * kt * (H W)^2``
numbers). Inference (no autograd) and FLOP counting (a trace) always convolve.

Borders: the convolutions zero-pad, so a neighbour outside the grid contributes nothing to
any sum; the neighbourhood is *clipped*, the weights of the remaining offsets are unchanged
(no renormalisation).

CLS token: none (``cls_token = "none"``). RSA is a local operator on the patch grid with no
place for a token outside it, so the backbone mean-pools the final tokens before the head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vattn_cli.errors import UsageError
from vattn_cli.zoo.catalog import register_scheme
from vattn_cli.zoo.scheme import BlockArgs, Grid, PreNormBlock
from vattn_cli.zoo.schemes._grid import frames_conv, frames_conv_fits, triple, use_matrix, window_matrix
from vattn_cli.zoo.steps import AttentionStep, around

#: L2 normalisation floor (the official layer uses 1e-6).
NORM_EPS = 1e-6


class RelationalAttention(nn.Module):
    """The RSA layer on ``[B, T*H*W, C]`` tokens: projections, kernel, context, output projection.

    ``heads`` query heads of ``dk = C / heads`` channels share one key (``dk`` channels) and one
    value (``dv = C / heads`` channels); the latent size is ``dd = dk``. Parameter names say
    what the official ones are: ``key_conv`` is ``H1``, ``query_basis`` is ``P1``,
    ``context_conv`` is ``H2``, ``relation_conv`` is ``G``, ``context_mix`` is ``I``.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        window: Sequence[int] = (5, 7, 7),
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if heads < 1 or dim % heads:
            raise UsageError(f"invalid RSA heads {heads}; expected a divisor of the width {dim}")
        self.heads = heads
        self.window = tuple(window)
        self.dk = self.dv = self.dd = dim // heads
        padding = tuple(k // 2 for k in self.window)
        size = math.prod(self.window)
        self.qkv = nn.Linear(dim, heads * self.dk + self.dk + self.dv, bias=qkv_bias)
        self.key_conv = nn.Conv3d(self.dk, self.dk * self.dd, self.window, padding=padding, groups=self.dk, bias=False)
        self.query_basis = nn.Parameter(torch.randn(self.dk, self.dd) * math.sqrt(1.0 / (size * self.dd)))
        self.context_conv = nn.Conv3d(1, self.dd, self.window, padding=padding, bias=False)
        self.relation_conv = nn.Conv3d(1, self.dv, self.window, padding=padding, bias=False)
        self.context_mix = nn.Parameter(torch.eye(self.dv))
        self.proj = nn.Linear(heads * self.dv, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        b = x.shape[0]
        t, h, w = grid
        q, k, v = self.qkv(x).split([self.heads * self.dk, self.dk, self.dv], dim=-1)
        # Positions merge into one batch axis ``a = (b t y x)``: every einsum below is a batched
        # matrix product, spelt as one of the two forms fvcore counts exactly (others it counts
        # through numpy's 4-digit estimate).
        q = F.normalize(rearrange(q, "b n (h c) -> (b n) c h", h=self.heads), dim=1, eps=NORM_EPS)
        k = F.normalize(k, dim=-1, eps=NORM_EPS)
        v = F.normalize(v, dim=-1, eps=NORM_EPS)

        # Kernel: H sums each key channel over the neighbourhood into dd latent dims; the
        # query then contracts the channels (relational), plus the query's own projection P.
        volume = rearrange(k, "b (t y x) c -> b c t y x", t=t, y=h, x=w)
        if frames_conv_fits(self.key_conv.weight, grid):  # training on small grids: keys [c, a, d]
            keys = frames_conv(volume, self.key_conv.weight, grid)
            # P apart: adding it to every position's keys would cost a slow strided sum backward
            kernel = torch.einsum("ach,cad->ahd", q, keys) + torch.einsum("ach,cd->ahd", q, self.query_basis)
        else:
            keys = rearrange(self.key_conv(volume), "b (c d) t y x -> (b t y x) c d", d=self.dd).contiguous()
            kernel = torch.einsum("ach,acd->ahd", q, keys + self.query_basis)

        # Context: each value channel is one single-channel volume (batch-folded), so one
        # convolution serves all channels; G's output against Hv's is the projected
        # value-value self-correlation, I adds the plain values.
        # both value kernels as one [dd + dv, 1, *window] weight, only where frames_conv may take them
        both = torch.cat([self.context_conv.weight, self.relation_conv.weight]) if t > self.window[0] else None
        if both is not None and frames_conv_fits(both, grid):
            # more frames than the window spans: per-frame matrices and time shifts (T * kt frame
            # pairs) take fewer multiplies than the whole-grid matrix (T * T); both kernels in one
            values = rearrange(v, "b (t y x) c -> (b c) 1 t y x", t=t, y=h, x=w)
            both = rearrange(frames_conv(values, both, grid), "1 (b c n) r -> (b n) c r", b=b, c=self.dv)
            latent, relation = both.split([self.dd, self.dv], dim=-1)
        elif use_matrix(grid) and t * h * w <= math.prod(self.window):
            latent, relation = (
                torch.einsum("bqc,dqn->bncd", v, window_matrix(conv.weight[:, 0], grid)).flatten(0, 1)
                for conv in (self.context_conv, self.relation_conv)
            )
        else:
            values = rearrange(v, "b (t y x) c -> (b c) 1 t y x", t=t, y=h, x=w)
            latent = rearrange(self.context_conv(values), "(b c) d t y x -> (b t y x) c d", b=b).contiguous()
            relation = rearrange(self.relation_conv(values), "(b c) e t y x -> (b t y x) c e", b=b).contiguous()
        context = torch.einsum("ace,acd->aed", relation + self.context_mix, latent)

        out = torch.einsum("ahd,aed->aeh", kernel, context)
        return self.proj_drop(self.proj(rearrange(out, "(b n) e h -> b n (h e)", b=b)))


@register_scheme("rsa")
class RSABlock(PreNormBlock):
    """Pre-norm block whose token mixer is :class:`RelationalAttention`.

    Options: ``window`` (neighbourhood on the token grid, ``(t, h, w)`` or one odd int; default
    the paper's 5 x 7 x 7) and ``heads`` (query heads; ``None`` = the backbone's heads, which
    sets the latent sizes ``dk = dv = dd = width / heads``; the paper's ResNet used 8).
    """

    cls_token = "none"
    description = "relational self-attention over a local 5x7x7 space-time window (Kim et al. 2021)"

    def __init__(
        self,
        args: BlockArgs,
        window: int | Sequence[int] = (5, 7, 7),
        heads: int | None = None,
    ) -> None:
        super().__init__(args)
        self.attn = RelationalAttention(
            args.dim, args.num_heads if heads is None else heads, triple("RSA window", window, odd=True),
            qkv_bias=args.qkv_bias, proj_drop=args.drop,
        )

    def attention_steps(self) -> tuple[AttentionStep, ...]:
        # every term sums over the window around the query (clipped at the borders), no softmax
        return (AttentionStep("window", around(self.attn.window), output="attn.proj"),)

    def attend(self, x: Tensor, grid: Grid) -> Tensor:
        return self.attn(x, grid)
