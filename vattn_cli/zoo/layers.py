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


#: The MLP activations: ``gelu`` (exact, erf-based: ViT, TimeSformer, VideoMAE) and ``gelu_tanh``
#: (the tanh approximation, Hugging Face's ``gelu_fast``/``gelu_new``/``gelu_pytorch_tanh``, which
#: HF's ViViT config uses by default). The two differ by up to ~1e-3 per element, enough to move
#: logits, so a checkpoint must run with the one it was trained with.
MLP_ACTS = ("gelu", "gelu_tanh")


class Mlp(nn.Module):
    """Two linear layers with GELU between them (ViT's feed-forward); ``act`` is one of :data:`MLP_ACTS`."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, act: str = "gelu") -> None:
        super().__init__()
        if act not in MLP_ACTS:
            raise ValueError(f"mlp activation must be one of {MLP_ACTS}, got {act!r}")
        self.act_name = act
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU() if act == "gelu" else nn.GELU(approximate="tanh")
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
        q, k, v = qkv.unbind(0)  # not qkv[i]: each select's backward zero-fills a whole-size gradient
        return q, k, v

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


def interpolate_joint(embed: Tensor, source: tuple[int, int, int], grid: tuple[int, int, int]) -> Tensor:
    """Resize a joint ``[1, t*h*w, D]`` space-time embedding laid out on ``source`` = (t, h, w)
    to ``grid`` (nearest over t, h and w, like the spatial and temporal tables)."""
    source, grid = tuple(int(v) for v in source), tuple(int(v) for v in grid)
    n = int(embed.shape[1])
    if n != source[0] * source[1] * source[2]:
        raise ValueError(f"joint position embedding of {n} tokens does not fit its grid {source}")
    if source == grid:
        return embed
    table = rearrange(embed, "1 (t h w) d -> 1 d t h w", t=source[0], h=source[1], w=source[2])
    table = F.interpolate(table, size=grid, mode="nearest")
    return rearrange(table, "1 d t h w -> 1 (t h w) d")


def sincos_table(n_position: int, dim: int, *, device=None, dtype=torch.float32) -> Tensor:
    """The fixed sine-cosine table ``[1, n_position, dim]`` of VideoMAE (and "Attention is all you
    need"): ``angle[p, j] = p / 10000 ** (2 * (j // 2) / dim)``, sine at even ``j``, cosine at odd
    ``j``; the same formula as ``transformers``' ``get_sinusoid_encoding_table``, in float64 then cast."""
    pos = torch.arange(int(n_position), dtype=torch.float64, device=device).unsqueeze(1)
    j = torch.arange(int(dim), device=device)
    angle = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64, device=device),
                            (2 * torch.div(j, 2, rounding_mode="floor")).to(torch.float64) / dim)
    table = torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.to(dtype).unsqueeze(0)


#: How a 2D patch embedding ``[D, C, p, p]`` becomes a 3D (tubelet) one ``[D, C, t, p, p]``.
TUBELET_INITS = ("central", "repeat")


def inflate_patch_weight(weight: Tensor, tubelet: int, rule: str = "central") -> Tensor:
    """Inflate a 2D patch-embedding kernel ``[D, C, p, p]`` to a 3D one ``[D, C, tubelet, p, p]``.

    ``central`` (ViViT's "central frame initialisation"): the 2D kernel on the central temporal
    slice (index ``tubelet // 2``), zeros on the others, so a fresh tubelet model first sees one
    frame of each tubelet exactly as the image model did. ``repeat`` (I3D's "filter inflation"):
    the 2D kernel divided by ``tubelet`` on every slice, so a clip of identical frames embeds
    exactly as the image did. The bias is unchanged under both rules.
    """
    if rule not in TUBELET_INITS:
        raise ValueError(f"tubelet_init must be one of {TUBELET_INITS}, got {rule!r}")
    if weight.ndim != 4:
        raise ValueError(f"expected a 2D patch-embedding kernel [D, C, p, p], got shape {tuple(weight.shape)}")
    if rule == "repeat":
        return weight.unsqueeze(2).repeat(1, 1, tubelet, 1, 1) / tubelet
    out = weight.new_zeros((weight.shape[0], weight.shape[1], tubelet, *weight.shape[2:]))
    out[:, :, tubelet // 2] = weight
    return out


def inflate_patch_embed_(state: dict[str, Tensor], tubelet: int, rule: str = "central",
                         prefix: str = "patch_embed.proj.") -> None:
    """Turn a per-frame (2D) patch embedding in ``state`` into a tubelet (3D) one, in place
    (:func:`inflate_patch_weight`); a 3D kernel, or ``tubelet == 1``, is left as it is."""
    key = prefix + "weight"
    if tubelet > 1 and key in state and state[key].ndim == 4:
        state[key] = inflate_patch_weight(state[key], tubelet, rule)


def resize_embeddings_(
    state: dict[str, Tensor],
    frames: int,
    grid_hw: tuple[int, int],
    *,
    joint_source: tuple[int, int, int] | None = None,
) -> None:
    """Resize ``pos_embed``/``time_embed`` entries of a state dict in place to a new setting.

    ``frames`` is the number of temporal tokens (frames / tubelet). ``pos_embed`` keeps its CLS
    slot (first token) when it has one (``1 + P*P`` tokens). A joint space-time table
    (``pos_embed="joint"``) is named by ``joint_source``, the (t, h, w) grid it was learned on:
    it is resized over (t, h, w) to ``(frames, *grid_hw)``, keeping its CLS slot (a table of
    ``1 + t*h*w`` tokens).
    """
    if "time_embed" in state:
        state["time_embed"] = interpolate_time(state["time_embed"], frames)
    if "pos_embed" in state:
        pos = state["pos_embed"]
        n = pos.shape[1]
        if joint_source is not None:
            has_cls = n == 1 + joint_source[0] * joint_source[1] * joint_source[2]
            cls, patches = (pos[:, :1], pos[:, 1:]) if has_cls else (pos[:, :0], pos)
            resized = interpolate_joint(patches, joint_source, (frames, *grid_hw))
            state["pos_embed"] = torch.cat([cls, resized], dim=1)
            return
        has_cls = int(round(n**0.5)) ** 2 != n
        cls, patches = (pos[:, :1], pos[:, 1:]) if has_cls else (pos[:, :0], pos)
        state["pos_embed"] = torch.cat([cls, interpolate_space(patches, grid_hw)], dim=1)
