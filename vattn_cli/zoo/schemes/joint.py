"""Joint space-time attention (TimeSformer's ``joint_space_time``).

One softmax attention over all ``T*H*W`` patch tokens and the CLS token: the most expressive
and the most expensive scheme, quadratic in the number of tokens.
"""

from __future__ import annotations

from torch import Tensor

from vattn_cli.zoo.catalog import register_scheme
from vattn_cli.zoo.scheme import Grid, SoftmaxBlock
from vattn_cli.zoo.steps import AttentionStep, everywhere


@register_scheme("joint")
class JointAttention(SoftmaxBlock):
    cls_token = "shared"
    cls_optional = True  # every token attends to every token: nothing treats index 0 specially
    description = "one attention over all space-time tokens (TimeSformer joint_space_time)"

    def attention_steps(self) -> tuple[AttentionStep, ...]:
        return (AttentionStep("space-time", everywhere, output="attn.proj", cls=True),)

    def attend(self, x: Tensor, grid: Grid) -> Tensor:
        return self.attn(x)
