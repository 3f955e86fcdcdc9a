"""Building blocks shared by the schemes: multi-head attention, MLP, stochastic depth.

Attention goes through ``F.scaled_dot_product_attention`` so fused kernels run where the
platform has them; the parameter names (``qkv``, ``proj``, ``fc1``, ``fc2``) follow the official
TimeSformer code so its checkpoints load by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class DropPath(nn.Module):
    """Stochastic depth per sample; identity at eval time or with ``p == 0``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Two linear layers with GELU between them (ViT's feed-forward)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head softmax self-attention over the second-to-last axis of ``[B, N, D]``.

    The leading batch axis is whatever the scheme folded into it (frames, positions, windows),
    which is how every TimeSformer scheme restricts who attends to whom without a mask.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project ``[B, N, D]`` to q, k, v of shape ``[B, heads, N, D/heads]``."""
        qkv = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        q, k, v = self.qkv_heads(x)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0
        )
        return self.proj_drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))


def init_weights(module: nn.Module) -> None:
    """ViT initialisation (truncated normal 0.02 for linear layers, unit LayerNorm)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def interpolate_time(embed: Tensor, frames: int) -> Tensor:
    """Resize a ``[1, T, D]`` time embedding to ``frames`` (nearest, as the official code)."""
    if embed.shape[1] == frames:
        return embed
    return F.interpolate(embed.transpose(1, 2), size=frames, mode="nearest").transpose(1, 2)


def interpolate_space(embed: Tensor, grid_hw: tuple[int, int]) -> Tensor:
    """Resize a ``[1, P*P, D]`` spatial embedding to ``[1, h*w, D]`` (nearest, as official)."""
    n = int(embed.shape[1])  # int(): under torch.jit.trace (fvcore) sizes are tensors
    side = int(round(n**0.5))
    if side * side != n:
        raise ValueError(f"spatial position embedding of {n} tokens is not a square grid")
    if (side, side) == tuple(grid_hw):
        return embed
    grid = rearrange(embed, "1 (p q) d -> 1 d p q", p=side)
    grid = F.interpolate(grid, size=tuple(grid_hw), mode="nearest")
    return rearrange(grid, "1 d p q -> 1 (p q) d")


def resize_embeddings_(state: dict[str, Tensor], frames: int, grid_hw: tuple[int, int]) -> None:
    """Resize ``pos_embed``/``time_embed`` entries of a state dict in place to a new setting.

    ``pos_embed`` keeps its CLS slot (first token) when it has one (``1 + P*P`` tokens).
    """
    if "time_embed" in state:
        state["time_embed"] = interpolate_time(state["time_embed"], frames)
    if "pos_embed" in state:
        pos = state["pos_embed"]
        n = pos.shape[1]
        has_cls = int(round(n**0.5)) ** 2 != n
        cls, patches = (pos[:, :1], pos[:, 1:]) if has_cls else (pos[:, :0], pos)
        state["pos_embed"] = torch.cat([cls, interpolate_space(patches, grid_hw)], dim=1)
