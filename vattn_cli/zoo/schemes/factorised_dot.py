"""Factorised dot-product attention (ViViT model 4; Arnab et al., ICCV 2021, "ViViT: A Video
Vision Transformer"), as the official Scenic code (``factorized_dot_product_attention`` in
``scenic/projects/vivit/model_utils.py``) does it.

One ordinary pre-norm block with one multi-head attention (one ``qkv``, one ``proj``: the
parameters of ``joint``'s block), whose heads are split in two equal halves:

* heads ``0 .. heads/2 - 1`` attend **temporally**: a patch at position ``(t, h, w)`` attends to
  the ``T`` patches at the same ``(h, w)`` in every frame;
* heads ``heads/2 .. heads - 1`` attend **spatially**: it attends to the ``H*W`` patches of its
  own frame ``t``.

Each head runs its own softmax over its own key set; the outputs are concatenated over the heads
in head order (temporal half first) and projected by ``proj``, as ordinary multi-head attention.
Which half is which follows the official code: it splits the heads in order (``jnp.split`` over
the head axis) and gives the first part the time axis, the second the space axis. Both halves go
through ``scaled_dot_product_attention``: frames folded into the batch for the spatial half,
spatial positions folded into the batch for the temporal half, so nothing quadratic in
``T*H*W`` is ever built. Attention cost per block: ``T*S^2*d_h*2*(heads/2) + S*T^2*d_h*2*(heads/2)``
multiply-adds (``S = H*W``, ``d_h`` the head width).

Frame order: softmax attention along time treats the ``T`` frames as a set, so the block
itself is equivariant to permuting frames; order reaches the model through the learned temporal
position embedding only (as for ``joint`` and ``divided``), which starts at zero.

Options: none. The split is fixed at half and half, as in the paper and the code.

Heads: the number of heads must be even (the official code raises a ``ValueError`` when it is not
divisible by the two attention axes); an odd ``num_heads`` is a ``UsageError`` naming it.

CLS token: none (``cls_token = "none"``); the backbone mean-pools the patch tokens before the
head. The official model 4 refuses the token classifier (``classifier`` must not be ``token``;
its configs use ``gap``, global average pooling), so this is the official behaviour.

Grid: the block reads the clip's grid in ``forward``; it runs at any frame count and resolution
(one frame: the temporal heads see only the patch itself, so they pass its value through).

Deviations from the official code, each deliberate:

* Position embedding: the official model adds one learned embedding over all ``T*H*W`` tokens
  (``learned_1d``); vattn's backbone adds its learned spatial embedding plus a learned temporal
  one (``uses_time_embed = True``), as for every scheme, so the model resizes to other settings.
* Attention dropout: the official attention dropout is one mask per element as here (the block
  passes ``broadcast_dropout=False``); we use SDPA's dropout on each half.
* The backbone is vattn's isotropic one (2-D patch embedding per frame, vattn's width, depth,
  pre-norm blocks, MLP and head), not ViViT's tubelet embedding or its initialisation
  (Xavier attention kernels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from vattn_cli.errors import UsageError
from vattn_cli.zoo.catalog import register_scheme
from vattn_cli.zoo.scheme import BlockArgs, Grid, SoftmaxBlock
from vattn_cli.zoo.steps import AttentionStep, same


@register_scheme("factorised_dot")
class FactorisedDotProductAttention(SoftmaxBlock):
    """One multi-head attention: the first half of the heads along time, the second within the frame."""

    cls_token = "none"
    uses_time_embed = True
    description = "half the heads attend within the frame, half along time, one projection (ViViT model 4)"

    def __init__(self, args: BlockArgs) -> None:
        super().__init__(args)
        if self.num_heads % 2:
            raise UsageError(
                f"invalid num_heads {self.num_heads} for factorised_dot; expected an even number "
                "(half the heads attend in space, half in time)"
            )
        self.temporal_heads = self.num_heads // 2

    def extra_repr(self) -> str:
        return f"temporal_heads=0..{self.temporal_heads - 1}, spatial_heads={self.temporal_heads}..{self.num_heads - 1}"

    def attention_steps(self) -> tuple[AttentionStep, ...]:
        split = self.temporal_heads * (self.dim // self.num_heads)  # proj's input: the temporal heads first
        return (
            AttentionStep("time heads", same("hw"), output="attn.proj", channels=(0, split)),
            AttentionStep("space heads", same("t"), output="attn.proj", channels=(split, self.dim)),
        )

    def attend(self, x: Tensor, grid: Grid) -> Tensor:
        t, s = grid.t, grid.h * grid.w
        q, k, v = self.attn.qkv_heads(x)  # [B, heads, T*S, d_h]
        half = self.temporal_heads
        drop = self.attn.attn_drop if self.training else 0.0

        def along_time(z: Tensor) -> Tensor:
            return rearrange(z[:, :half], "b h (t s) d -> (b s) h t d", t=t, s=s)

        def in_frame(z: Tensor) -> Tensor:
            return rearrange(z[:, half:], "b h (t s) d -> (b t) h s d", t=t, s=s)

        temporal = F.scaled_dot_product_attention(along_time(q), along_time(k), along_time(v), dropout_p=drop)
        spatial = F.scaled_dot_product_attention(in_frame(q), in_frame(k), in_frame(v), dropout_p=drop)
        temporal = rearrange(temporal, "(b s) h t d -> b h (t s) d", s=s)
        spatial = rearrange(spatial, "(b t) h s d -> b h (t s) d", t=t)
        out = rearrange(torch.cat([temporal, spatial], dim=1), "b h n d -> b n (h d)")
        return self.attn.proj_drop(self.attn.proj(out))
