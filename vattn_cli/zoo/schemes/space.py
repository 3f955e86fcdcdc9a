"""Space-only attention (TimeSformer's ``space_only``): each frame attends within itself.

Every frame carries its own CLS token through all blocks and there is no temporal position
embedding; the backbone averages the frames' tokens before the final norm and the head, as
the official model does. With no exchange between frames the model cannot tell frame order:
the built-in motion benchmark relies on that.
"""

from __future__ import annotations

from einops import rearrange
from torch import Tensor

from vattn_cli.zoo.catalog import register_scheme
from vattn_cli.zoo.scheme import Grid, SoftmaxBlock
from vattn_cli.zoo.steps import AttentionStep, same


@register_scheme("space")
class SpaceAttention(SoftmaxBlock):
    cls_token = "per_frame"
    uses_time_embed = False
    description = "attention within each frame only (TimeSformer space_only)"

    def attention_steps(self) -> tuple[AttentionStep, ...]:
        return (AttentionStep("space", same("t"), output="attn.proj", cls=True),)  # its frame and the frame's CLS

    def attend(self, x: Tensor, grid: Grid) -> Tensor:
        frames = rearrange(x, "b (t n) d -> (b t) n d", t=grid.t)
        return rearrange(self.attn(frames), "(b t) n d -> b (t n) d", t=grid.t)
