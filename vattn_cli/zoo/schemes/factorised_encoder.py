"""Factorised encoder (ViViT model 2; Arnab et al., ICCV 2021, "ViViT: A Video Vision
Transformer"), as the official Scenic code (``SpaceTimeViViT`` in
``scenic/projects/vivit/model.py``, ``attention_config.type = 'factorized_encoder'``) does it.

Two transformers, one after the other:

1. **Spatial encoder**: the backbone's ``depth`` blocks, each attending within one time index
   (``cls_token = "per_frame"``: every time index carries its own CLS token, the same learned
   token for all of them, with the spatial position table's CLS slot, as Scenic's ``vmap`` over
   time shares one spatial encoder). No temporal position embedding here
   (``uses_time_embed = False``): the spatial encoder never sees frame order, as in Scenic.
2. **Temporal encoder** (the second stage, :meth:`FactorisedEncoder.build_second_stage`): each
   time index's CLS token after the spatial encoder's final LayerNorm (Scenic's
   ``SpatialTransformer/encoder_norm``), so ``T' = frames / tubelet`` tokens; a learned temporal
   CLS token (zero-initialised, as Scenic's ``cls_TemporalTransformer``) is prepended, one
   learned position table over its ``1 + T'`` tokens is added (Scenic's ``learned_1d``, its first
   slot the CLS token's), dropout, then ``temporal_depth`` ordinary pre-norm ViT blocks
   (attention over all ``1 + T'`` tokens: Scenic's ``EncoderBlock``) with the spatial blocks'
   width, heads and MLP ratio (every official config uses the same for both encoders).
   The backbone's final ``norm`` (Scenic's ``TemporalTransformer/encoder_norm``) and the
   temporal CLS token feed the head (``classifier = 'token'``, the official configs' choice).

Options: ``temporal_depth`` (the paper's ``L_t``), default 4, an integer >= 0. It does not scale
with the model size: 4 is ViViT-B's (Kinetics) and ViViT-L's on Epic-Kitchens and SSv2; ViViT-L
on Kinetics uses 24, which ``temporal_depth=24`` gives. It is fixed, not derived from ``depth``,
so the FLOP counter's one-block twin keeps the whole temporal encoder. ``temporal_depth=0``
builds no temporal encoder at all: the frames' CLS tokens are averaged, normalised and classified,
which is exactly ``space`` (TimeSformer's space-only model), and with one frame a plain ViT on
that frame. (Scenic's own no-temporal baseline, ``spatial_only_baseline``, averages the frames'
CLS tokens *after* the spatial norm; it also reduces to a ViT on one frame.)

Cost: the spatial encoder is ``space``'s (attention over ``1 + H*W`` tokens per time index); the
temporal encoder is ``temporal_depth`` blocks over ``1 + T'`` tokens, a small fraction of the
total at any setting vattn profiles (``vattn profile --breakdown`` lists it as
``second_stage.*``).

Position tables and other settings: the temporal table is learned at the frame count the model
was built for and resized on the fly (nearest over the ``T'`` slots, the CLS slot kept) for
another clip, like the backbone's tables; a checkpoint of another frame count is resized the same
way when its state dict is loaded.

Deviations from the official code, each deliberate:

* Initialisation: vattn's ViT initialisation (truncated normal linear layers, std 0.02 position
  tables); Scenic zero-initialises the classifier and the spatial CLS token and uses Xavier
  attention kernels. The temporal CLS token starts at zero, as in Scenic.
* The spatial encoder's CLS tokens: Scenic runs the spatial encoder on each time index as a
  separate sequence; here the backbone keeps all time indices in one sequence and each block
  folds them into the batch (the same computation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from vattn_cli.errors import UsageError
from vattn_cli.zoo.catalog import register_scheme
from vattn_cli.zoo.layers import interpolate_time
from vattn_cli.zoo.scheme import BlockArgs, Grid, SoftmaxBlock
from vattn_cli.zoo.steps import AttentionStep, same

#: ViViT-B's L_t (Scenic's ``kinetics400/vivit_base_factorised_encoder.py``).
DEFAULT_TEMPORAL_DEPTH = 4


def check_temporal_depth(value: Any) -> int:
    """``value`` if it is an integer >= 0; a usage error naming it otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(
            f"invalid temporal_depth {value!r} for factorised_encoder; expected an integer >= 0 "
            f"(the temporal encoder's number of blocks, default {DEFAULT_TEMPORAL_DEPTH}; 0: no temporal encoder)"
        )
    return value


class TemporalBlock(SoftmaxBlock):
    """One pre-norm ViT block over the whole sequence (the temporal encoder's tokens); not a scheme."""

    def attend(self, x: Tensor, grid: Grid) -> Tensor:
        return self.attn(x)


class TemporalEncoder(nn.Module):
    """ViViT model 2's temporal transformer over the time indices' CLS tokens.

    ``forward(x, grid)`` reads each time index's CLS token from the spatial encoder's output
    (``per_frame`` layout), normalises it (``spatial_norm``), prepends ``cls_token``, adds
    ``pos_embed`` and runs the blocks; it returns ``[B, 1 + T', D]``, CLS first.
    """

    def __init__(self, args: BlockArgs, time_tokens: int, depth: int) -> None:
        super().__init__()
        dim = args.dim
        self.spatial_norm = nn.LayerNorm(dim, eps=args.norm_eps)  # the spatial encoder's final norm
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + time_tokens, dim))
        self.pos_drop = nn.Dropout(args.drop)
        rates = torch.linspace(0, args.drop_path, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            TemporalBlock(args.replace(drop_path=rate, index=i, depth=depth)) for i, rate in enumerate(rates)
        )

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.cls_token)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for block in self.blocks:
            block.reset_parameters()

    @staticmethod
    def resized_table(table: Tensor, time_tokens: int) -> Tensor:
        """A ``[1, 1 + T, D]`` table at ``1 + time_tokens`` slots: CLS slot kept, the rest nearest."""
        return torch.cat([table[:, :1], interpolate_time(table[:, 1:], time_tokens)], dim=1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        """A table learned at another frame count is resized to this model's, as on the fly."""
        key = prefix + "pos_embed"
        table = state_dict.get(key)
        if isinstance(table, Tensor) and table.ndim == 3 and table.shape[1] >= 2 \
                and table.shape[1] != self.pos_embed.shape[1]:
            state_dict[key] = self.resized_table(table, self.pos_embed.shape[1] - 1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        per_time = rearrange(x, "b (t n) d -> b t n d", t=grid.t)[:, :, 0]  # each time index's CLS
        z = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), self.spatial_norm(per_time)], dim=1)
        z = self.pos_drop(z + self.resized_table(self.pos_embed, grid.t))
        line = Grid(grid.t, 1, 1)
        for block in self.blocks:
            z = block(z, line)
        return z


@register_scheme("factorised_encoder")
class FactorisedEncoder(SoftmaxBlock):
    """A spatial-encoder block (attention within one time index, its CLS included); the
    temporal encoder is the model's second stage (:meth:`build_second_stage`)."""

    cls_token = "per_frame"
    uses_time_embed = False
    description = "spatial encoder per time index, then a temporal encoder over their CLS tokens (ViViT model 2)"

    def __init__(self, args: BlockArgs, temporal_depth: int = DEFAULT_TEMPORAL_DEPTH) -> None:
        super().__init__(args)
        self.temporal_depth = check_temporal_depth(temporal_depth)

    def attention_steps(self) -> tuple[AttentionStep, ...]:
        # a block of the spatial encoder; the temporal encoder (the second stage) mixes only the
        # time indices' CLS tokens, after every block
        return (AttentionStep("space", same("t"), output="attn.proj", cls=True),)

    def attend(self, x: Tensor, grid: Grid) -> Tensor:
        frames = rearrange(x, "b (t n) d -> (b t) n d", t=grid.t)
        return rearrange(self.attn(frames), "(b t) n d -> b (t n) d", t=grid.t)

    @classmethod
    def build_second_stage(cls, args: BlockArgs, grid: Grid, options: Mapping[str, Any]) -> nn.Module | None:
        depth = check_temporal_depth(options.get("temporal_depth", DEFAULT_TEMPORAL_DEPTH))
        return TemporalEncoder(args, grid.t, depth) if depth else None
