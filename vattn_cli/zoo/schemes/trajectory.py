"""Trajectory attention (Motionformer; Patrick et al., NeurIPS 2021, "Keeping Your Eye on the
Ball: Trajectory Attention in Video Transformers"), exact (no Orthoformer approximation).

One block's token mixer, in two softmax steps, for a patch query at frame ``t'``, position ``s'``
(``S = H*W`` positions per frame, ``N = T*S`` patches, per head, scale ``head_dim ** -0.5``):

1. **Spatial attention in every frame.** With ``q, k, v`` from ``qkv``, the query attends to the
   patches of each frame ``t`` separately, a softmax over the ``S`` positions of that frame::

       y[s', t', t] = sum_s softmax_s(q[s', t'] . k[s, t]) v[s, t]        for every frame t

   giving one *trajectory token* per frame: where the query's content is in frame ``t``.
2. **Temporal attention along the trajectory.** The query's own frame's trajectory token is the
   new query, the others are keys and values::

       q~ = proj_q(y[s', t', t'])      k~[t], v~[t] = proj_kv(y[s', t', t])
       out[s', t'] = sum_t softmax_t(q~ . k~[t]) v~[t]

   heads split after the projections (``proj_q``/``proj_kv`` mix all channels of the
   concatenated heads, as the official code), then the output projection ``proj``.

Parameters are the official ``TrajectoryAttention``'s, as ``attn.qkv``, ``attn.proj_q``,
``attn.proj_kv`` (keys then values) and ``attn.proj``, with ``bias=qkv_bias`` on the first three;
the block is the official ``Block`` (``norm1``, ``attn``, ``norm2``, ``mlp``, pre-norm residuals),
so the names match its checkpoints. Attention dropout applies to the spatial weights only, as
in the official code; the temporal and CLS weights get none.

**CLS token** (``cls_token = "shared"``), as the official code: the CLS query attends jointly to
every token, itself included (one softmax over ``1 + N`` keys), and its output skips the
temporal step (straight to ``proj``). The CLS is *not* a key of the patches' spatial attention,
so no patch ever reads it; it only collects.

**Order.** The block is equivariant under any permutation of the frames (the spatial softmaxes
are per frame and the temporal softmax is over a set), as joint attention is; frame order
reaches the model through the backbone's time embedding, which this scheme keeps
(``uses_time_embed = True``; Motionformer's default ``POS_EMBED = "separate"`` is the same
space + time embedding).

**Computation** through ``scaled_dot_product_attention``: per chunk of query frames, one call per
key frame (the chunk's queries against that frame's ``S`` keys, unmasked) fills the chunk's
trajectory tensor ``[B, Nc, T, dim]``; the temporal step is one call with ``B*Nc`` batched
single queries against ``T`` keys; the CLS is one more call. No ``N x N`` tensor is formed: at
most one key frame's ``Nc x S`` weights per head exist at a time (a training forward on a grid of
at most ``_grid.MATRIX_TOKENS`` patches forms the ``N x N`` scores instead: one batched product
instead of a kernel call per key frame, 1.2x a training step for the tiny model at 8 x 32). Chunks hold whole query
frames, as many as keep the trajectory tensor under ``chunk_mb`` (at least one frame): at
base 32x224 (``N = 6272``, ``T = 32``, dim 768) the whole tensor would be 0.6 GB per clip in
fp32; with the default 128 MiB a chunk is 6 frames (110 MiB). A chunk's transient peak is
about four times its trajectory tensor (the tensor, ``proj_kv``'s output at twice its size,
SDPA's workspace), freed before the next chunk: about 0.5 GB per block in an inference forward
at base 32x224, whatever the frame count. Training keeps every chunk's tensors for the
backward pass, O(N*T*dim) per block: about four trajectory tensors (its input to ``proj_kv``,
``proj_kv``'s output, the spatial SDPA outputs), some 2.3 GB per block at base 32x224, batch 1,
fp32; the official code keeps the ``N x N`` scores and their softmax instead (1.9 GB each).

Option:

* ``chunk_mb`` (default 128): the most MiB one chunk's trajectory tensor may take (batch x
  chunk queries x frames x dim, in the compute dtype); a positive number. Chunking changes
  memory and the number of SDPA calls, never the result.

Deviations from the official code:

* **Temporal values are projected** (``v~ = W_v y``, the paper's equation and the official
  ``use_original_code=False``). The official default (``USE_ORIGINAL_TRAJ_ATTN_CODE = True``)
  keeps a typo its authors document, ``v~ = y``, which leaves the value half of ``proj_kv``
  unused (no gradient, which breaks DistributedDataParallel and the conformance suite); it is
  not offered.
* The isotropic shared backbone: its 2D patch embedding (Motionformer's default tokenises 2 x 16
  x 16 tubelets with a 3D convolution) and its position embeddings (nearest-resized, where the
  official code interpolates bicubically).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vattn_cli.errors import UsageError
from vattn_cli.zoo.catalog import register_scheme
from vattn_cli.zoo.scheme import BlockArgs, Grid, PreNormBlock
from vattn_cli.zoo.schemes._grid import use_matrix
from vattn_cli.zoo.steps import AttentionStep, everywhere

MIB = 1 << 20

def check_chunk_mb(value: object) -> float:
    """``chunk_mb`` as a positive float, or a usage error naming it."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise UsageError(f"invalid chunk_mb {value!r}; expected a positive number of MiB")
    return float(value)


def frames_per_chunk(batch: int, grid: Grid, dim: int, itemsize: int, chunk_mb: float) -> int:
    """How many query frames one chunk holds: its ``[batch, F*S, T, dim]`` trajectory tensor
    stays within ``chunk_mb`` MiB, at least one frame, at most all of them."""
    per_frame = batch * grid.h * grid.w * grid.t * dim * itemsize
    return max(1, min(grid.t, int(chunk_mb * MIB // max(per_frame, 1))))


class TrajectoryAttention(nn.Module):
    """Exact trajectory attention on ``[B, 1 + T*H*W, dim]`` tokens (CLS first)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, chunk_mb: float = 128.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.chunk_mb = check_chunk_mb(chunk_mb)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        b, n, d = x.shape
        b, n, d = int(b), int(n), int(d)  # int(): under torch.jit.trace sizes may be tensors
        t, s = grid.t, grid.h * grid.w
        h, hd = self.num_heads, self.head_dim
        if n != 1 + t * s:
            raise ValueError(f"expected 1 + {t}*{s} tokens for grid {tuple(grid)}, got {n}")
        # [B, heads, 1 + N, hd] views of the one qkv product (Attention's "(three h d)" layout)
        q, k, v = self.qkv(x).view(b, n, 3, h, hd).permute(2, 0, 3, 1, 4).unbind(0)

        # CLS: one softmax over every token, itself included; no temporal step.
        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v, scale=self.scale)
        outs = [cls_out.transpose(1, 2).reshape(b, 1, d)]

        q, k, v = q[:, :, 1:], k[:, :, 1:], v[:, :, 1:]  # patches; the CLS is no spatial key
        drop = self.attn_drop if self.training else 0.0
        for first, traj in self._trajectories(q, k, v, grid, drop):
            fc = traj.shape[1] // s
            nc = fc * s
            # the query's own frame: y[s', t', t'], the diagonal of (query frame, key frame)
            own = torch.diagonal(traj.view(b, fc, s, t, d)[:, :, :, first:first + fc], dim1=1, dim2=3)
            own = own.permute(0, 3, 1, 2).reshape(b, nc, d)
            # 2. temporal attention along each query's trajectory, heads split after projecting
            q2 = self.proj_q(own).view(b * nc, 1, h, hd).transpose(1, 2)           # [B*Nc, h, 1, hd]
            # unbind, not [:, :, i]: a select's backward zero-fills a whole-size gradient
            k2, v2 = self.proj_kv(traj).view(b * nc, t, 2, h, hd).transpose(1, 3).unbind(2)  # [B*Nc, h, T, hd]
            out = F.scaled_dot_product_attention(q2, k2, v2, scale=self.scale)
            outs.append(out.transpose(1, 2).reshape(b, nc, d))
        return self.proj_drop(self.proj(torch.cat(outs, dim=1)))

    def _trajectories(self, q: Tensor, k: Tensor, v: Tensor, grid: Grid, drop: float) -> Iterator[tuple[int, Tensor]]:
        """Step 1 for every query, as ``(first query frame, [B, Nc, T, dim] trajectory tokens)``
        per chunk of whole query frames (``q, k, v``: the patches' ``[B, heads, N, hd]``)."""
        b, h, n, hd = (int(x) for x in q.shape)
        t, s = grid.t, grid.h * grid.w
        if use_matrix(grid):
            # one product for all queries and key frames: [B, h, N, N] scores, a softmax over
            # each key frame's S of them, one batched product with each frame's values
            weights = (q @ k.transpose(-2, -1)).mul_(self.scale).view(b, h, n, t, s).softmax(-1)
            if drop:
                weights = F.dropout(weights, drop)
            traj = weights.transpose(2, 3) @ v.view(b, h, t, s, hd)                 # [B, h, T, N, hd]
            yield 0, traj.permute(0, 3, 2, 1, 4).reshape(b, n, t, h * hd)
            return
        # each frame's keys and values as views (unbind's backward is one stack, where slicing
        # would zero-fill a whole-size gradient per frame)
        k_frames, v_frames = k.unflatten(2, (t, s)).unbind(2), v.unflatten(2, (t, s)).unbind(2)
        step = frames_per_chunk(b, grid, h * hd, q.element_size(), self.chunk_mb)
        for first in range(0, t, step):
            qc = q[:, :, first * s:min(t, first + step) * s]
            # the chunk's queries against each key frame's S patches, stacked (writes into
            # slices of one buffer would zero-fill a whole-size gradient per key frame too)
            traj = torch.stack([
                F.scaled_dot_product_attention(qc, k_frame, v_frame, dropout_p=drop, scale=self.scale)
                for k_frame, v_frame in zip(k_frames, v_frames)
            ], dim=3)                                                                # [B, h, Nc, T, hd]
            yield first, traj.permute(0, 2, 3, 1, 4).reshape(b, qc.shape[2], t, h * hd)


@register_scheme("trajectory")
class TrajectoryBlock(PreNormBlock):
    cls_token = "shared"
    uses_time_embed = True
    description = "per-frame spatial attention gives a trajectory, then attention along it (Motionformer)"

    def __init__(self, args: BlockArgs, chunk_mb: float = 128.0) -> None:
        super().__init__(args)
        a = self.args
        self.attn = TrajectoryAttention(a.dim, a.num_heads, qkv_bias=a.qkv_bias, attn_drop=a.attn_drop,
                                        proj_drop=a.drop, chunk_mb=chunk_mb)

    def attention_steps(self) -> tuple[AttentionStep, ...]:
        # spatial attention in every frame, then along the trajectory of those outputs: one
        # step as far as tokens go (every patch), and the CLS is no key of a patch
        return (AttentionStep("trajectory", everywhere, output="attn.proj"),)

    def attend(self, x: Tensor, grid: Grid) -> Tensor:
        return self.attn(x, grid)
