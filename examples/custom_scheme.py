"""A complete attention scheme defined outside vattn: temporal-shift attention.

Space-only attention (each frame attends within itself) costs the least of the TimeSformer
schemes but cannot tell frame order. The Temporal Shift Module (Lin et al., ICCV 2019) and
TokShift (Zhang et al., ACM MM 2021) give a frame its neighbours' information for free: before
the attention, a slice of the channels moves one frame back and another slice one frame
forward. The attention FLOPs stay those of space-only; the model now mixes time.

Nothing here is registered in vattn: the command line loads it by import path.

    PYTHONPATH=examples vattn zoo --scheme custom_scheme:TemporalShiftAttention --size tiny
    PYTHONPATH=examples vattn zoo --check custom_scheme:TemporalShiftAttention
    python examples/custom_scheme.py          # the same conformance suite, from Python

docs/adding-a-scheme.md walks through it line by line and shows profile, ablate and train runs.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from vattn_cli.zoo import BlockArgs, Grid, SoftmaxBlock


def temporal_shift(x: Tensor, fold: int) -> Tensor:
    """Move channels ``[0, fold)`` one frame later and ``[fold, 2*fold)`` one frame earlier.

    ``x`` is ``[B, T, N, D]``. Frames shifted in from outside the clip are zeros (TSM's
    zero-padded shift, which unlike a roll does not wrap the last frame onto the first).
    """
    if fold == 0:
        return x
    zeros = torch.zeros_like(x[:, :1, :, :fold])
    from_past = torch.cat([zeros, x[:, :-1, :, :fold]], dim=1)  # frame t gets frame t-1
    from_future = torch.cat([x[:, 1:, :, fold : 2 * fold], zeros], dim=1)  # frame t gets t+1
    return torch.cat([from_past, from_future, x[..., 2 * fold :]], dim=-1)


class TemporalShiftAttention(SoftmaxBlock):
    """Per-frame softmax attention on temporally shifted tokens (TSM / TokShift style).

    Token layout ``per_frame``: each frame carries its own CLS token (``[B, T*(1+H*W), D]``),
    as TimeSformer's space-only model; the backbone averages the frames' CLS tokens at the end.
    ``shift_div``: a ``1/shift_div`` slice of the channels moves each way (TSM uses 8).
    """

    cls_token = "per_frame"
    uses_time_embed = True
    description = "attention within each frame after a temporal channel shift (TSM / TokShift)"

    def __init__(self, args: BlockArgs, shift_div: int = 8) -> None:
        # args: the backbone's standard block arguments (width, heads, dropout rates), handed on
        # to SoftmaxBlock, which builds the norms, the attention and the MLP from them.
        super().__init__(args)
        if shift_div < 2:
            raise ValueError(f"shift_div must be >= 2 (two slices move), got {shift_div}")
        self.fold = args.dim // shift_div

    def attend(self, x: Tensor, grid: Grid) -> Tensor:
        # x is the normalised input of the residual branch, [B, T*(1+H*W), D].
        frames = rearrange(x, "b (t n) d -> b t n d", t=grid.t)
        frames = temporal_shift(frames, self.fold)
        out = self.attn(rearrange(frames, "b t n d -> (b t) n d"))
        return rearrange(out, "(b t) n d -> b (t n) d", t=grid.t)


if __name__ == "__main__":
    from vattn_cli.testing import check_scheme
    from vattn_cli.measure.conformance import checks_frame

    print(checks_frame(check_scheme(TemporalShiftAttention)).to_string(index=False))
