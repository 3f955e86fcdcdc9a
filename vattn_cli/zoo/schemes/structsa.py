"""Structural Self-Attention (StructSA; Kim et al., CVPR 2024, StructViT) as a scheme.

StructSA lets a query see the *structure* of its correlations with the keys, not just their
values: the query-key correlation map over the ``T x H x W`` grid is convolved with ``D``
learned kernels over a local ``M = 3 x 3 x 3`` window (structural query-key attention), one
softmax runs over all ``(key position, pattern)`` pairs jointly, and each attention weight
aggregates the local value context through the matching value kernel (contextual value
aggregation). Per head, with scale ``s = 1/sqrt(head_dim)``::

    a[i, n, d] = softmax over (n, d) of  s * sum_m U[d,m] * <q_i, k_{n+m}>
    y_i        = sum_{n,d} a[i, n, d] * sum_m W[d,m] * v_{n+m}

Convolution is linear, so ``sum_m U[d,m] <q_i, k_{n+m}> = <q_i, (U_d * K)_n>``: convolving the
correlation map equals convolving the keys depthwise, and StructSA is ordinary softmax
attention of the ``N`` queries over ``N*D`` pseudo-tokens (structured keys and values). That
is how it runs here: two depthwise 3D convolutions (``C -> C*D`` channels, ``groups=C``) then
``scaled_dot_product_attention``, whose fused kernels keep memory linear in ``N*D`` (no
``N x N*D`` attention matrix).

Options:

* ``patterns`` (D, default 4) and ``window`` (default 3 x 3 x 3);
* ``share``: ``"head"`` (default) gives each head its own ``D`` kernels shared by its channels,
  exactly a convolution of that head's correlation map; ``"channel"`` gives every channel its
  own kernels (a convolution of the channel-wise query-key correlations, summed), a superset;
* ``kv_stride``: stride of the key/value convolutions, the paper's "-S" variants that cut the
  pseudo-tokens; an int ``s`` strides space only (``(1, s, s)``), a triple gives ``(t, h, w)``.

Training on small grids (``share="head"``, stride 1, at most
:data:`~vattn_cli.zoo.schemes._grid.MATRIX_TOKENS` tokens): the structured keys and values are one
product with each head's patterns laid out as token x token matrices
(:func:`~vattn_cli.zoo.schemes._grid.window_matrix`) instead of the depthwise convolution, whose
backward is slow on CPU at such grids; the same sums, more multiplies (``N`` per output instead
of the window's 27), each a GEMM. Inference (no autograd) and FLOP counting (a trace) convolve.

Borders: the convolutions zero-pad, so neighbours outside the grid are left out of the sums
(the window is clipped; the remaining kernel weights are not renormalised). With a stride the
structured tokens sit at every ``s``-th grid position from the first (``ceil(T/s)`` along each
axis).

CLS token: none (``cls_token = "none"``; the backbone mean-pools before the head, as
StructViT's classifier does). A CLS token has no grid position to convolve around.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vattn_cli.errors import UsageError, one_of
from vattn_cli.zoo.layers import Attention
from vattn_cli.zoo.catalog import register_scheme
from vattn_cli.zoo.scheme import BlockArgs, Grid, PreNormBlock
from vattn_cli.zoo.schemes._grid import triple, use_matrix, window_matrix
from vattn_cli.zoo.steps import AttentionStep, covered_grid, with_query

SHARE_MODES = ("head", "channel")


class StructuralAttention(Attention):
    """Multi-head StructSA on ``[B, T*H*W, C]`` tokens; ``qkv``/``proj`` as plain attention.

    ``key_patterns``/``value_patterns`` hold the ``D`` kernels per head (``share="head"``,
    shape ``[heads, D, *window]``) or per channel (``[C, D, *window]``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        patterns: int = 4,
        window: Sequence[int] = (3, 3, 3),
        kv_stride: Sequence[int] = (1, 1, 1),
        share: str = "head",
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        if share not in SHARE_MODES:
            raise one_of("StructSA share", share, SHARE_MODES)
        self.patterns = patterns
        self.window = tuple(window)
        self.kv_stride = tuple(kv_stride)
        self.share = share
        rows = num_heads if share == "head" else dim
        self.key_patterns = nn.Parameter(torch.empty(rows, patterns, *self.window))
        self.value_patterns = nn.Parameter(torch.empty(rows, patterns, *self.window))
        bound = 1.0 / math.sqrt(math.prod(self.window))  # nn.Conv3d's default for these fan-ins
        nn.init.uniform_(self.key_patterns, -bound, bound)
        nn.init.uniform_(self.value_patterns, -bound, bound)

    def structured(self, x: Tensor, kernels: Tensor, grid: Grid) -> Tensor:
        """``[B, heads, N, hd]`` keys or values to ``[B, heads, N'*D, hd]`` structured ones.

        Pseudo-token ``n' * D + d`` is pattern ``d`` at (strided) grid position ``n'``.
        """
        heads, head_dim = x.shape[1], x.shape[3]
        if self.share == "head" and self.kv_stride == (1, 1, 1) and use_matrix(grid):  # see _grid.window_matrix
            matrix = window_matrix(kernels.flatten(0, 1), grid).unflatten(0, (heads, self.patterns))
            return torch.einsum("bhqc,hdqn->bhndc", x, matrix).flatten(2, 3)
        channels = heads * head_dim
        if self.share == "head":  # every channel of a head gets the head's kernels
            kernels = kernels.unsqueeze(1).expand(heads, head_dim, *kernels.shape[1:])
        weight = kernels.reshape(channels * self.patterns, 1, *self.window)
        volume = rearrange(x, "b h (t y x) c -> b (h c) t y x", t=grid.t, y=grid.h, x=grid.w)
        out = F.conv3d(volume, weight, stride=self.kv_stride, padding=tuple(k // 2 for k in self.window), groups=channels)
        return rearrange(out, "b (h c d) t y x -> b h (t y x d) c", h=heads, d=self.patterns)

    def forward(self, x: Tensor, grid: Grid) -> Tensor:  # type: ignore[override]
        q, k, v = self.qkv_heads(x)
        k = self.structured(k, self.key_patterns, grid)
        v = self.structured(v, self.value_patterns, grid)
        # Contiguous: with the head dim strided (as the einsum or the conv's rearrange leaves it),
        # SDPA leaves its fused CPU kernel for the math path, 1.24x slower a training step at 8x32.
        k, v = k.contiguous(), v.contiguous()
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))


@register_scheme("structsa")
class StructSABlock(PreNormBlock):
    """Pre-norm block whose token mixer is :class:`StructuralAttention` (see module docstring)."""

    cls_token = "none"
    description = "structural self-attention: joint softmax over N x D structured tokens (Kim et al. 2024)"

    def __init__(
        self,
        args: BlockArgs,
        patterns: int = 4,
        window: int | Sequence[int] = (3, 3, 3),
        kv_stride: int | Sequence[int] = 1,
        share: str = "head",
    ) -> None:
        super().__init__(args)
        if isinstance(patterns, bool) or not isinstance(patterns, int) or patterns < 1:
            raise UsageError(f"invalid StructSA patterns {patterns!r}; expected an integer >= 1")
        self.attn = StructuralAttention(
            args.dim, args.num_heads, patterns=patterns, window=triple("StructSA window", window, odd=True),
            kv_stride=triple("StructSA kv_stride", kv_stride, spatial_int=True), share=share,
            qkv_bias=args.qkv_bias, attn_drop=args.attn_drop, proj_drop=args.drop,
        )

    def attention_steps(self) -> tuple[AttentionStep, ...]:
        attn = self.attn

        def keys(grid: Grid, query: tuple[int, int, int]) -> Tensor:
            # one softmax over every structured token; each reads the window around its (strided) position
            return with_query(covered_grid(grid, attn.window, attn.kv_stride), query)

        return (AttentionStep("structured", keys, output="attn.proj"),)

    def attend(self, x: Tensor, grid: Grid) -> Tensor:
        return self.attn(x, grid)
