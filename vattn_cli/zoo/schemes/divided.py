"""Divided space-time attention (TimeSformer's ``divided_space_time``), as the official code.

Per block:

1. temporal attention: each patch attends to the patches at the same position in every
   frame (CLS left out), with its own norm and Q/K/V; the result goes through ``temporal_fc``
   (initialised to zero, so training starts from the image model) and is added to the patches;
2. spatial attention within each frame, the CLS token repeated into every frame; the T
   outputs for the CLS token are averaged back into one;
3. the MLP.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from vattn_cli.zoo.catalog import register_scheme
from vattn_cli.zoo.scheme import BlockArgs, Grid, SoftmaxBlock
from vattn_cli.zoo.steps import AttentionStep, same


@register_scheme("divided")
class DividedAttention(SoftmaxBlock):
    cls_token = "shared"
    description = "temporal then spatial attention per block (TimeSformer divided_space_time)"

    def __init__(self, args: BlockArgs) -> None:
        super().__init__(args)
        self.temporal = self.add_branch("temporal")  # temporal_norm1, temporal_attn, temporal_fc

    def attention_steps(self) -> tuple[AttentionStep, ...]:
        return (
            AttentionStep("time", same("hw"), output="temporal_fc"),  # its position in every frame, no CLS
            AttentionStep("space", same("t"), output="attn.proj", cls=True),  # its frame, with the CLS
        )

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        t, h, w = grid
        cls, patches = x[:, :1], x[:, 1:]

        def along_time(attn: nn.Module, y: Tensor) -> Tensor:
            lines = rearrange(y, "b (t h w) d -> (b h w) t d", t=t, h=h, w=w)
            return rearrange(self.drop_path(attn(lines)), "(b h w) t d -> b (t h w) d", h=h, w=w)

        patches = patches + self.temporal(patches, along_time)

        frames = rearrange(patches, "b (t n) d -> (b t) n d", t=t)
        frames = torch.cat([cls.repeat_interleave(t, dim=0), frames], dim=1)
        res = self.drop_path(self.attn(self.norm1(frames)))
        res_cls = rearrange(res[:, :1], "(b t) 1 d -> b t d", t=t).mean(1, keepdim=True)
        res_patches = rearrange(res[:, 1:], "(b t) n d -> b (t n) d", t=t)

        x = torch.cat([cls + res_cls, patches + res_patches], dim=1)
        return x + self.drop_path(self.mlp(self.norm2(x)))
