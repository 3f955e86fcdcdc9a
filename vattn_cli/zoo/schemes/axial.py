"""Axial attention (TimeSformer's T+W+H, paper section 3 and Figure 2).

Per block, three attentions, each a residual step with its own norm and Q/K/V:

1. **time**: each patch attends to the patches at the same ``(h, w)`` in every frame
   (``temporal_norm1``/``temporal_attn``/``temporal_fc``, named as divided's so its temporal
   weights load by name). The CLS token takes no part, as in divided.
2. **width**: each patch attends to the patches of its row, same ``(t, h)``
   (``width_norm1``/``width_attn``/``width_fc``).
3. **height**: each patch attends to the patches of its column, same ``(t, w)``, with the
   block's ``norm1``/``attn`` (the image model's attention, as divided's spatial step).
4. The MLP.

CLS handling follows divided's spatial step: in the width and height steps the CLS token is
repeated into every row (``T*H`` of them), respectively every column (``T*W``), attends with
it, and its outputs are averaged back into one token. Steps 1 and 2 end in a linear ``*_fc``
initialised to zero, so a fresh block starts as the image model's block (height attention
only). Those two ``fc`` layers are what brings the count to 157,020,304 at base 8x224 with 400
classes (the paper reports 156.8M; without them it would be 142.8M). Every step folds its lines
into the batch axis and calls ``scaled_dot_product_attention`` with no mask, so memory grows
linearly with the token count for a fixed line length.
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from torch import Tensor

from vattn_cli.zoo.catalog import register_scheme
from vattn_cli.zoo.scheme import BlockArgs, Grid, SoftmaxBlock
from vattn_cli.zoo.steps import AttentionStep, same

Axis = Literal["t", "w", "h"]

#: How each axis's lines are folded into the batch: the attended axis is left last.
_LINES: dict[str, str] = {"t": "(b h w) t d", "w": "(b t h) w d", "h": "(b t w) h d"}


@register_scheme("axial")
class AxialAttention(SoftmaxBlock):
    cls_token = "shared"
    description = "attention along time, then width, then height (TimeSformer axial T+W+H)"

    def __init__(self, args: BlockArgs) -> None:
        super().__init__(args)
        self.temporal = self.add_branch("temporal")  # temporal_norm1, temporal_attn, temporal_fc
        self.width = self.add_branch("width")  # width_norm1, width_attn, width_fc

    def attention_steps(self) -> tuple[AttentionStep, ...]:
        return (
            AttentionStep("time", same("hw"), output="temporal_fc"),  # no CLS
            AttentionStep("width", same("th"), output="width_fc", cls=True),  # its row
            AttentionStep("height", same("tw"), output="attn.proj", cls=True),  # its column
        )

    def attend_axis(self, axis: Axis, cls: Tensor | None, patches: Tensor, grid: Grid) -> tuple[Tensor | None, Tensor]:
        """One step's attention output on normalised tokens: ``(cls_out, patches_out)``.

        ``cls`` is ``[B, 1, D]`` or ``None`` (it then takes no part and ``cls_out`` is ``None``).
        """
        attn = {"t": self.temporal_attn, "w": self.width_attn, "h": self.attn}[axis]
        t, h, w = grid
        lines = rearrange(patches, f"b (t h w) d -> {_LINES[axis]}", t=t, h=h, w=w)
        if cls is None:
            out = attn(lines)
            return None, rearrange(out, f"{_LINES[axis]} -> b (t h w) d", t=t, h=h, w=w)
        per_line = lines.shape[0] // cls.shape[0]
        out = attn(torch.cat([cls.repeat_interleave(per_line, dim=0), lines], dim=1))
        cls_out = rearrange(out[:, :1], "(b l) 1 d -> b l d", l=per_line).mean(1, keepdim=True)
        return cls_out, rearrange(out[:, 1:], f"{_LINES[axis]} -> b (t h w) d", t=t, h=h, w=w)

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        cls, patches = x[:, :1], x[:, 1:]
        res = self.temporal(patches, lambda _, y: self.drop_path(self.attend_axis("t", None, y, grid)[1]))
        x = torch.cat([cls, patches + res], dim=1)
        x = x + self.width(x, lambda _, y: self.drop_path(self._attend_with_cls("w", y, grid)))
        x = x + self.drop_path(self._attend_with_cls("h", self.norm1(x), grid))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _attend_with_cls(self, axis: Axis, y: Tensor, grid: Grid) -> Tensor:
        return torch.cat(self.attend_axis(axis, y[:, :1], y[:, 1:], grid), dim=1)
