"""The shared ViT-style video backbone: patch embedding, position embeddings, scheme blocks, head.

Input ``[B, 3, T, H, W]``, output logits ``[B, num_classes]``. Parameter names follow the
official TimeSformer code (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``time_embed``,
``blocks.i.*``, ``norm``, ``head``), so its checkpoints load by name.

Position embeddings are learned for the setting the model was built at; a clip of another
frame count or resolution gets them resized on the fly (nearest, like the official code), so
one checkpoint runs at any number of tokens. ``pos_embed`` picks them:

* ``space-time`` (default, TimeSformer's): a spatial table ``[1, (CLS) + h*w, D]`` plus a separate
  time table ``[1, T', D]`` (``time_embed``), for the schemes that use one;
* ``space``: the spatial table only; ``none``: no position embedding;
* ``joint``: one learned table over every space-time token, ``[1, (CLS) + T'*h*w, D]``, as
  ViViT (Hugging Face's ``VivitEmbeddings``); another clip gets it resized over (t, h, w),
  nearest, its CLS slot kept;
* ``sincos``: VideoMAE's fixed sine-cosine table over the patch tokens (not learned, not saved:
  a buffer, computed for each clip's own token count, so nothing is resized; a CLS token gets none).

``pool`` picks how the tokens become one feature vector before the head:

* ``auto`` (default): the scheme's own layout decides: the CLS token after the final ``norm``
  (frame-averaged first for ``per_frame``), or the mean of the normalised tokens for a scheme
  without a CLS token;
* ``mean``: VideoMAE's ``use_mean_pooling`` (Hugging Face's ``VideoMAEForVideoClassification``):
  no CLS token at all, no final ``norm``; the mean of the last block's tokens goes through
  ``fc_norm`` (a LayerNorm of eps ``fc_norm_eps``, 1e-5 as HF's) and then the head. Only for a
  scheme without a CLS token or one that runs without it (``cls_optional``: ``joint``).

``mlp_act`` is the MLP's GELU: ``gelu`` (exact) or ``gelu_tanh`` (HF ViViT's ``gelu_fast``).

Tubelets (``tubelet`` > 1, ViViT's "tubelet embedding"): the patch embedding is a 3D convolution
with kernel and stride ``(tubelet, patch, patch)``, so the token grid is ``(T / tubelet) x h x w``
and every scheme runs on it unchanged. ``tubelet`` 1 is the per-frame 2D convolution, bit for bit.
A per-frame (2D) ``patch_embed.proj.weight`` loaded into a tubelet model is inflated by the
model's ``tubelet_init`` rule (``central`` or ``repeat``: :func:`~vattn_cli.zoo.layers.inflate_patch_weight`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from vattn_cli.zoo.layers import (
    MLP_ACTS, TUBELET_INITS, Mlp, init_weights, inflate_patch_weight, interpolate_joint, interpolate_space, interpolate_time,
    sincos_table,
)
from vattn_cli.zoo.scheme import BlockArgs, Grid, SchemeBlock, build_block

POS_EMBED_MODES = ("space-time", "space", "none", "joint", "sincos")
POOL_MODES = ("auto", "mean")


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
    tubelet: int = 1  # frames per patch (ViViT's tubelet embedding); 1: per-frame patches
    tubelet_init: str = "central"  # how 2D patch weights inflate into the 3D kernel (see layers)
    mlp_act: str = "gelu"  # the MLP's GELU: exact, or gelu_tanh (HF ViViT's gelu_fast)
    pool: str = "auto"  # auto: the scheme's CLS/mean pooling; mean: VideoMAE's mean + fc_norm, no CLS
    fc_norm_eps: float = 1e-5  # eps of fc_norm (pool="mean" only)

    @property
    def time_tokens(self) -> int:
        """Temporal positions of the token grid: ``frames / tubelet``."""
        return self.frames // self.tubelet

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def block_args(config: VideoTransformerConfig) -> BlockArgs:
    """The standard block arguments a config gives (``drop_path`` and ``index`` are set per block)."""
    return BlockArgs(
        config.dim, config.num_heads, mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias,
        norm_eps=config.norm_eps, drop=config.drop_rate, attn_drop=config.attn_drop_rate,
        depth=config.depth, mlp_act=config.mlp_act,
    )


class PatchEmbed(nn.Module):
    """Patch embedding: per frame, a ``patch x patch`` convolution with stride ``patch``
    (``tubelet`` 1); with ``tubelet`` > 1, a 3D convolution with kernel and stride
    ``(tubelet, patch, patch)`` (ViViT's tubelet embedding), one token per tubelet.

    A 2D kernel ``[D, C, p, p]`` loaded into a tubelet embedding (a per-frame or image model's
    weights) is inflated by ``tubelet_init`` (:func:`~vattn_cli.zoo.layers.inflate_patch_weight`).
    """

    def __init__(self, patch: int, in_chans: int, dim: int, tubelet: int = 1, tubelet_init: str = "central") -> None:
        super().__init__()
        if tubelet < 1:
            raise ValueError(f"tubelet must be >= 1, got {tubelet}")
        if tubelet_init not in TUBELET_INITS:
            raise ValueError(f"tubelet_init must be one of {TUBELET_INITS}, got {tubelet_init!r}")
        self.patch = patch
        self.tubelet = tubelet
        self.tubelet_init = tubelet_init
        if tubelet == 1:
            self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
        else:
            self.proj = nn.Conv3d(in_chans, dim, kernel_size=(tubelet, patch, patch), stride=(tubelet, patch, patch))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        key = prefix + "proj.weight"
        if self.tubelet > 1 and key in state_dict and state_dict[key].ndim == 4:
            state_dict[key] = inflate_patch_weight(state_dict[key], self.tubelet, self.tubelet_init)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, video: Tensor) -> Tensor:
        if self.tubelet > 1:
            return rearrange(self.proj(video), "b d t h w -> b t h w d")
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
        if config.tubelet < 1 or config.frames % config.tubelet:
            raise ValueError(f"frames {config.frames} is not a multiple of the tubelet {config.tubelet}")
        if config.pool not in POOL_MODES:
            raise ValueError(f"pool must be one of {POOL_MODES}, got {config.pool!r}")
        if config.mlp_act not in MLP_ACTS:
            raise ValueError(f"mlp_act must be one of {MLP_ACTS}, got {config.mlp_act!r}")
        mean_pool = config.pool == "mean"
        if mean_pool and block_cls.cls_token != "none" and not getattr(block_cls, "cls_optional", False):
            raise ValueError(f"pool 'mean' needs a scheme that runs without a CLS token; {config.scheme!r} "
                             f"has a {block_cls.cls_token} CLS token")
        self.config = config
        self.cls_mode = "none" if mean_pool else block_cls.cls_token
        dim, grid_side = config.dim, config.img_size // config.patch
        self.pos_grid = (config.time_tokens, grid_side, grid_side)  # the grid pos_embed was built for

        self.patch_embed = PatchEmbed(config.patch, config.in_chans, dim, config.tubelet, config.tubelet_init)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if self.cls_mode != "none" else None
        has_cls = self.cls_token is not None
        pos_tokens = grid_side * grid_side * (config.time_tokens if config.pos_embed == "joint" else 1)
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, int(has_cls) + pos_tokens, dim))
            if config.pos_embed in ("space-time", "space", "joint") else None
        )
        self.time_embed = (
            nn.Parameter(torch.zeros(1, config.time_tokens, dim))
            if config.pos_embed == "space-time" and block_cls.uses_time_embed else None
        )
        if config.pos_embed == "sincos":  # fixed; recomputed for a clip of another token count
            self.register_buffer("sincos_embed", sincos_table(config.time_tokens * grid_side * grid_side, dim),
                                 persistent=False)
        else:
            self.sincos_embed = None
        self.pos_drop = nn.Dropout(config.drop_rate)
        rates = torch.linspace(0, config.drop_path_rate, config.depth, device="cpu").tolist()
        args = block_args(config)
        self.blocks = nn.ModuleList(
            build_block(block_cls, args.replace(drop_path=rate, index=i), config.scheme_options)
            for i, rate in enumerate(rates)
        )
        # a scheme that is two encoders (factorised_encoder's temporal one): SchemeBlock.build_second_stage
        self.second_stage = block_cls.build_second_stage(
            args.replace(drop_path=config.drop_path_rate), Grid(*self.pos_grid), config.scheme_options)
        if config.mlp_act != "gelu":  # a first-interface block builds its MLP without the option
            for module in self.blocks.modules():
                if isinstance(module, Mlp) and module.act_name != config.mlp_act:
                    raise ValueError(f"scheme {config.scheme!r} builds its MLP without mlp_act {config.mlp_act!r}")
        # pool "mean" (VideoMAE): no final norm, fc_norm after the mean instead
        self.norm = None if mean_pool else nn.LayerNorm(dim, eps=config.norm_eps)
        self.fc_norm = nn.LayerNorm(dim, eps=config.fc_norm_eps) if mean_pool else None
        self.head = nn.Linear(dim, config.num_classes) if config.num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for p in (self.pos_embed, self.cls_token):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        self.apply(init_weights)
        for block in self.blocks:  # e.g. divided's zero temporal projection
            block.reset_parameters()
        if hasattr(self.second_stage, "reset_parameters"):
            self.second_stage.reset_parameters()

    @property
    def scheme(self) -> str:
        return self.config.scheme

    def grid(self, video: Tensor) -> Grid:
        """The patch grid a clip becomes; refuses frame sizes the patch does not divide."""
        if video.ndim != 5:
            raise ValueError(f"expected a video [B, C, T, H, W], got shape {tuple(video.shape)}")
        _, _, t, h, w = video.shape
        p, tubelet = self.config.patch, self.config.tubelet
        if h % p or w % p:
            raise ValueError(f"frame size {h}x{w} is not divisible by the patch size {p}")
        if t % tubelet:
            raise ValueError(f"frames {t} is not a multiple of the tubelet {tubelet}")
        return Grid(t // tubelet, h // p, w // p)

    def embed(self, video: Tensor) -> tuple[Tensor, Grid]:
        """Patch tokens with position embeddings and CLS token(s), in the scheme's layout."""
        grid = self.grid(video)
        x = self.patch_embed(video)  # [B, T, h, w, D]
        b = x.shape[0]
        x = rearrange(x, "b t h w d -> b t (h w) d")
        has_cls = self.cls_token is not None
        cls = self.cls_token.expand(b, 1, -1) if has_cls else None
        if self.pos_embed is not None and self.config.pos_embed == "joint":
            pos_patches = interpolate_joint(self.pos_embed[:, int(has_cls):], self.pos_grid, (grid.t, grid.h, grid.w))
            x = x + pos_patches.reshape(1, grid.t, grid.h * grid.w, -1)
            if has_cls:
                cls = cls + self.pos_embed[:, :1]
        elif self.pos_embed is not None:
            pos_patches = interpolate_space(self.pos_embed[:, int(has_cls):], (grid.h, grid.w))
            x = x + pos_patches.unsqueeze(1)
            if has_cls:
                cls = cls + self.pos_embed[:, :1]
        if self.sincos_embed is not None:
            n = grid.t * grid.h * grid.w
            table = self.sincos_embed
            if int(table.shape[1]) != n:
                table = sincos_table(n, table.shape[-1], device=x.device)
            x = x + table.to(x.dtype).reshape(1, grid.t, grid.h * grid.w, -1)
        if self.time_embed is not None:
            x = x + interpolate_time(self.time_embed, grid.t).unsqueeze(2)
        if self.cls_mode == "shared":
            x = torch.cat([cls, x.flatten(1, 2)], dim=1)
        elif self.cls_mode == "per_frame":
            x = torch.cat([cls.unsqueeze(1).expand(-1, grid.t, -1, -1), x], dim=2).flatten(1, 2)
        else:
            x = x.flatten(1, 2)
        return self.pos_drop(x), grid

    def pool(self, x: Tensor, grid: Grid, layout: str | None = None) -> Tensor:
        """One feature vector per clip: the CLS token, frame-averaged for ``per_frame``;
        with ``pool="mean"``, ``fc_norm`` of the tokens' mean. ``layout``: the tokens' layout
        when it is not the scheme's (a second stage's output is ``shared``)."""
        mode = layout or self.cls_mode
        if self.fc_norm is not None:
            return self.fc_norm(x.mean(1))
        if mode == "per_frame":
            x = rearrange(x, "b (t n) d -> b t n d", t=grid.t).mean(1)
            return self.norm(x)[:, 0]
        if mode == "shared":
            return self.norm(x)[:, 0]
        return self.norm(x).mean(1)

    def forward_features(self, video: Tensor) -> Tensor:
        x, grid = self.embed(video)
        for block in self.blocks:
            x = block(x, grid)
        if self.second_stage is not None:  # its output is in the shared layout (its CLS first)
            return self.pool(self.second_stage(x, grid), grid, layout="shared")
        return self.pool(x, grid)

    def forward(self, video: Tensor) -> Tensor:
        return self.head(self.forward_features(video))

    def reset_head(self, num_classes: int) -> None:
        """Replace the classifier (fine-tuning on another label set)."""
        self.head = nn.Linear(self.config.dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            init_weights(self.head)
        self.config.num_classes = num_classes
