"""The shared ViT-style video backbone: patch embedding, position embeddings, scheme blocks, head.

Input ``[B, 3, T, H, W]``, output logits ``[B, num_classes]``. Parameter names follow the
official TimeSformer code (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``time_embed``,
``blocks.i.*``, ``norm``, ``head``), so its checkpoints load by name.

Position embeddings are learned for the setting the model was built at; a clip of another
frame count or resolution gets them resized on the fly (nearest, like the official code), so
one checkpoint runs at any number of tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from vattn_cli.zoo.layers import init_weights, interpolate_space, interpolate_time
from vattn_cli.zoo.scheme import BlockArgs, Grid, SchemeBlock, build_block

POS_EMBED_MODES = ("space-time", "space", "none")


@dataclass
class VideoTransformerConfig:
    """Everything needed to rebuild a model; saved in checkpoints as ``config``."""

    scheme: str
    dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    frames: int = 8
    img_size: int = 224
    patch: int = 16
    num_classes: int = 400
    in_chans: int = 3
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    pos_embed: str = "space-time"
    size: str | None = None
    model: str | None = None
    scheme_options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def block_args(config: VideoTransformerConfig) -> BlockArgs:
    """The standard block arguments a config gives (``drop_path`` and ``index`` are set per block)."""
    return BlockArgs(
        config.dim, config.num_heads, mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias,
        norm_eps=config.norm_eps, drop=config.drop_rate, attn_drop=config.attn_drop_rate,
        depth=config.depth,
    )


class PatchEmbed(nn.Module):
    """Per-frame patch embedding: a ``patch x patch`` convolution with stride ``patch``."""

    def __init__(self, patch: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, video: Tensor) -> Tensor:
        t = video.shape[2]
        x = self.proj(rearrange(video, "b c t h w -> (b t) c h w"))
        return rearrange(x, "(b t) d h w -> b t h w d", t=t)


class VideoTransformer(nn.Module):
    """A video transformer whose blocks are one attention scheme.

    It is handed the scheme's block class rather than looking the name up, so the backbone
    never imports the registry (which builds it): ``vattn_cli.zoo.create_model`` and
    ``create_model_from_config`` resolve ``config.scheme`` and are the way to build one.
    """

    def __init__(self, config: VideoTransformerConfig, block_cls: type[SchemeBlock]) -> None:
        super().__init__()
        if config.pos_embed not in POS_EMBED_MODES:
            raise ValueError(f"pos_embed must be one of {POS_EMBED_MODES}, got {config.pos_embed!r}")
        self.config = config
        self.cls_mode = block_cls.cls_token
        dim, grid_side = config.dim, config.img_size // config.patch

        self.patch_embed = PatchEmbed(config.patch, config.in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if self.cls_mode != "none" else None
        has_cls = self.cls_token is not None
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, int(has_cls) + grid_side * grid_side, dim))
            if config.pos_embed != "none" else None
        )
        self.time_embed = (
            nn.Parameter(torch.zeros(1, config.frames, dim))
            if config.pos_embed == "space-time" and block_cls.uses_time_embed else None
        )
        self.pos_drop = nn.Dropout(config.drop_rate)
        rates = torch.linspace(0, config.drop_path_rate, config.depth, device="cpu").tolist()
        args = block_args(config)
        self.blocks = nn.ModuleList(
            build_block(block_cls, args.replace(drop_path=rate, index=i), config.scheme_options)
            for i, rate in enumerate(rates)
        )
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.head = nn.Linear(dim, config.num_classes) if config.num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for p in (self.pos_embed, self.cls_token):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        self.apply(init_weights)
        for block in self.blocks:  # e.g. divided's zero temporal projection
            block.reset_parameters()

    @property
    def scheme(self) -> str:
        return self.config.scheme

    def grid(self, video: Tensor) -> Grid:
        """The patch grid a clip becomes; refuses frame sizes the patch does not divide."""
        if video.ndim != 5:
            raise ValueError(f"expected a video [B, C, T, H, W], got shape {tuple(video.shape)}")
        _, _, t, h, w = video.shape
        p = self.config.patch
        if h % p or w % p:
            raise ValueError(f"frame size {h}x{w} is not divisible by the patch size {p}")
        return Grid(t, h // p, w // p)

    def embed(self, video: Tensor) -> tuple[Tensor, Grid]:
        """Patch tokens with position embeddings and CLS token(s), in the scheme's layout."""
        grid = self.grid(video)
        x = self.patch_embed(video)  # [B, T, h, w, D]
        b = x.shape[0]
        x = rearrange(x, "b t h w d -> b t (h w) d")
        has_cls = self.cls_token is not None
        cls = self.cls_token.expand(b, 1, -1) if has_cls else None
        if self.pos_embed is not None:
            pos_patches = interpolate_space(self.pos_embed[:, int(has_cls):], (grid.h, grid.w))
            x = x + pos_patches.unsqueeze(1)
            if has_cls:
                cls = cls + self.pos_embed[:, :1]
        if self.time_embed is not None:
            x = x + interpolate_time(self.time_embed, grid.t).unsqueeze(2)
        if self.cls_mode == "shared":
            x = torch.cat([cls, x.flatten(1, 2)], dim=1)
        elif self.cls_mode == "per_frame":
            x = torch.cat([cls.unsqueeze(1).expand(-1, grid.t, -1, -1), x], dim=2).flatten(1, 2)
        else:
            x = x.flatten(1, 2)
        return self.pos_drop(x), grid

    def pool(self, x: Tensor, grid: Grid) -> Tensor:
        """One feature vector per clip: the CLS token, frame-averaged for ``per_frame``."""
        if self.cls_mode == "per_frame":
            x = rearrange(x, "b (t n) d -> b t n d", t=grid.t).mean(1)
            return self.norm(x)[:, 0]
        if self.cls_mode == "shared":
            return self.norm(x)[:, 0]
        return self.norm(x).mean(1)

    def forward_features(self, video: Tensor) -> Tensor:
        x, grid = self.embed(video)
        for block in self.blocks:
            x = block(x, grid)
        return self.pool(x, grid)

    def forward(self, video: Tensor) -> Tensor:
        return self.head(self.forward_features(video))

    def reset_head(self, num_classes: int) -> None:
        """Replace the classifier (fine-tuning on another label set)."""
        self.head = nn.Linear(self.config.dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            init_weights(self.head)
        self.config.num_classes = num_classes
