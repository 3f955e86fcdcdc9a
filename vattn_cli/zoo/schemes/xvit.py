"""Space-time mixing attention (X-ViT; Bulat et al., NeurIPS 2021, "Space-time Mixing Attention
for Video Transformer"), as the official code (github.com/1adrianb/video-transformers) does it.

Each frame attends within itself, as ``space`` does, but its keys and values borrow channels from
the neighbouring frames. For a query in frame ``t`` (paper Eq. 9-10, ``t_w = window``)::

    k~[s, t] = [ k[s, t+1](fold channels), k[s, t-1](fold channels), k[s, t](the rest) ]
    v~[s, t] likewise
    y[s, t]  = sum over s' in frame t of softmax_s'( q[s, t] . k~[s', t] / sqrt(d_h) ) v~[s', t]

so one softmax over the ``S`` (+ CLS) keys of the query's own frame mixes information from
frames ``t-1 .. t+1``: the cost is exactly ``space``'s (the mixing is indexing, zero FLOPs).
Queries are not mixed (the paper's Table 2c: mixing keys and values is its model). Stacked
blocks widen the temporal reach by ``window`` frames per block.

Options:

* ``mix`` (default ``1/4``): the fraction of the channels taken from *each* neighbouring frame,
  ``fold = floor(mix * width)`` channels (the official ``fold = C // shift_div``, ``mix =
  1/shift_div``). The paper's total imported share ``rho = 2 * window * mix``; its Table 2d
  finds 25% and 50% best (63.3 / 63.4 on SSv2). The default 1/4 per side (rho = 50%) is the
  paper's best and the official Something-Something-v2 config (``SHIFT_DIV: 4``), the dataset
  where order matters, as on vattn's motion benchmark; the official Kinetics configs use
  ``SHIFT_DIV: 8``, i.e. ``mix=0.125``. ``mix=0`` is ``space`` exactly.
* ``window`` (default 1, the paper's ``t_w``, its best in Table 1): neighbours ``t +- 1 ..
  t +- window`` each give ``fold`` channels, so ``2 * window * mix <= 1``; ``window=0`` is
  ``space``. The official code has ``t_w = 1`` only; for larger windows (our extension, following
  Eq. 9) the borrowed blocks come in the order ``t+1, t-1, t+2, t-2, ...``.
* ``split`` (default ``"channels"``): where the borrowed channels sit. ``"channels"`` is the
  official code: the ``heads * d_h`` key (value) channels are taken as one vector in head-major
  order (channel ``c = head * d_h + j``), and the first ``fold`` of them come from ``t+1``, the
  next ``fold`` from ``t-1``, the rest from ``t``. At base width (12 heads of 64) with
  ``mix=1/4`` that is heads 0-2 reading frame ``t+1``, heads 3-5 frame ``t-1`` and heads 6-11
  frame ``t``; with ``mix=1/8`` a head straddles two sources. ``"head"`` is the paper's Eq. 9
  read literally: inside *every* head the first ``fold = floor(mix * d_h)`` channels come from
  ``t+1``, the next ``fold`` from ``t-1``.

Borders: a neighbour outside the clip gives zeros (the official ``torch.zeros_like``; the paper:
"boundary effects (handled by filling with zeros)"), so frame 0's channels from ``t-1`` and the
last frame's from ``t+1`` are zero keys and values. The mixing runs over the clip's actual
frames, so a model runs at any frame count (one frame: every borrowed channel is zero).

CLS token: ``cls_token = "per_frame"``, as ``space``: every frame carries its own CLS token,
which is one of the frame's tokens in the official code, so its key and value are mixed like the
patches' (it reads the neighbouring frames' CLS channels). The backbone averages the frames'
tokens before the head: the paper's temporal-averaging aggregation (its Table 2b row "0 TA
layers"). Its lightweight Temporal Attention head (one transformer layer over the ``T`` CLS
tokens with its own class token, the released models' ``CONSENSUS_TYPE: vit``) and the
alternative Summary token are outside a block's scope and not implemented.

Deviations from the official code, each deliberate:

* Temporal position embedding: kept (``uses_time_embed = True``), as the paper (``p_t``,
  initialised to zero) and the code (``temp_embed``) do; vattn's backbone adds it to the patches
  only, the official code to every frame's CLS token too.
* The released Kinetics configs load 16 frames but shift within groups of ``NUM_SEGMENTS: 8``
  (zeros at the 8th/9th frame border); we mix over the whole clip, as the paper and the SSv2
  config (16 and 16) do.
* The backbone is vattn's isotropic one (same patch embedding, width, depth and head as every
  scheme); the mixing is in every block (the official ``LOCATIONS_LIST`` covers all layers, the
  paper's Table 2a "All").
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from vattn_cli.errors import UsageError, one_of
from vattn_cli.zoo.catalog import register_scheme
from vattn_cli.zoo.scheme import BlockArgs, Grid, SoftmaxBlock
from vattn_cli.zoo.steps import AttentionStep, coords

SPLIT_MODES = ("channels", "head")


def neighbour_offsets(window: int) -> tuple[int, ...]:
    """The frame offsets that lend channels, in the order their blocks sit: ``+1, -1, +2, -2, ...``."""
    return tuple(o for i in range(1, window + 1) for o in (i, -i))


def from_frame(x: Tensor, offset: int, frames: int) -> Tensor:
    """``out[:, t] = x[:, t + offset]`` along axis 1 (``frames`` long), zeros outside the clip."""
    if offset == 0:
        return x
    if abs(offset) >= frames:
        return torch.zeros_like(x)
    pad = x.new_zeros((x.shape[0], abs(offset)) + tuple(x.shape[2:]))
    if offset > 0:
        return torch.cat([x[:, offset:], pad], dim=1)
    return torch.cat([pad, x[:, :offset]], dim=1)


@register_scheme("xvit")
class SpaceTimeMixingAttention(SoftmaxBlock):
    """Per-frame attention whose keys/values mix channels of frames ``t-window .. t+window``."""

    cls_token = "per_frame"
    uses_time_embed = True
    description = "attention within each frame, keys/values borrow channels from frames t-1, t+1 (X-ViT)"

    def __init__(self, args: BlockArgs, mix: float = 0.25, window: int = 1, split: str = "channels") -> None:
        super().__init__(args)
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise UsageError(f"invalid X-ViT window {window!r}; expected an integer >= 0 (frames on each side)")
        if isinstance(mix, bool) or not isinstance(mix, numbers.Real) or not 0 <= mix <= 0.5:
            raise UsageError(f"invalid X-ViT mix {mix!r}; expected a fraction of the channels from each neighbour, 0 to 0.5")
        if 2 * window * mix > 1 + 1e-9:
            raise UsageError(
                f"invalid X-ViT mix {mix!r} with window {window}; the {2 * window} neighbours take "
                f"{2 * window} x mix > all the channels (expected mix <= {1 / (2 * window):g})"
            )
        if split not in SPLIT_MODES:
            raise one_of("X-ViT split", split, SPLIT_MODES)
        self.mix, self.window, self.split = float(mix), window, split
        self.width = args.dim if split == "channels" else args.dim // args.num_heads
        self.fold = math.floor(self.mix * self.width + 1e-9) if window else 0
        if self.mix > 0 and window and self.fold == 0:
            raise UsageError(
                f"invalid X-ViT mix {mix!r}; it borrows no channel of the {self.width} per "
                f"{'head' if split == 'head' else 'token'} (expected mix >= {1 / self.width:g} or 0)"
            )
        self.offsets = neighbour_offsets(window) if self.fold else ()

    def extra_repr(self) -> str:
        return f"mix={self.mix:g}, window={self.window}, split={self.split!r}, fold={self.fold}"

    def attention_steps(self) -> tuple[AttentionStep, ...]:
        reach = self.window if self.fold else 0

        def keys(grid: Grid, query: tuple[int, int, int]) -> Tensor:
            # one softmax over the query's frame, whose keys/values hold channels of frames t +- window
            return (coords(grid)[0] - query[0]).abs() <= reach

        return (AttentionStep("frames t-1..t+1" if reach == 1 else f"frames t-{reach}..t+{reach}", keys,
                              output="attn.proj", cls=True),)

    def mix_frames(self, kv: Tensor, frames: int) -> Tensor:
        """Space-time mixing of ``[B, T, ..., width]`` (any axes between T and the channels)."""
        if not self.offsets:
            return kv
        f = self.fold
        parts = [from_frame(kv[..., i * f:(i + 1) * f], o, frames) for i, o in enumerate(self.offsets)]
        parts.append(kv[..., len(self.offsets) * f:])
        return torch.cat(parts, dim=-1)

    def qkv_mixed(self, x: Tensor, grid: Grid) -> tuple[Tensor, Tensor, Tensor]:
        """Queries and the mixed keys/values of ``[B, T*N, D]`` tokens, each ``[B*T, heads, N, d_h]``."""
        t, h = grid.t, self.num_heads
        qkv = rearrange(self.attn.qkv(x), "b (t n) (three c) -> b t n three c", t=t, three=3)
        q, kv = qkv[:, :, :, 0], qkv[:, :, :, 1:]
        if self.split == "head":
            kv = rearrange(self.mix_frames(rearrange(kv, "... (h d) -> ... h d", h=h), t), "... h d -> ... (h d)")
        else:
            kv = self.mix_frames(kv, t)
        q = rearrange(q, "b t n (h d) -> (b t) h n d", h=h)
        k, v = rearrange(kv, "b t n two (h d) -> two (b t) h n d", h=h)
        return q, k, v

    def attend(self, x: Tensor, grid: Grid) -> Tensor:
        q, k, v = self.qkv_mixed(x, grid)
        drop = self.attn.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        out = rearrange(out, "(b t) h n d -> b (t n) (h d)", t=grid.t)
        return self.attn.proj_drop(self.attn.proj(out))
