"""Pooling attention of MViTv2 (Li et al., CVPR 2022, "MViTv2: Improved Multiscale Vision
Transformers for Classification and Detection") in the shared isotropic backbone.

Every patch token and the CLS token query all keys and values, but the keys and values are
first *pooled*: per head, a depthwise 3D convolution over the ``T x H x W`` grid with a stride
(default ``1 x 4 x 4`` at a 14 x 14 grid) shrinks them to ``Tk x Hk x Wk`` tokens, then a
LayerNorm over the head dimension. Queries keep the full grid (the backbone is isotropic: the
token count never changes, as in MViT's blocks between stage transitions). Per head, with
``d`` the head dimension, ``q_i`` the query of patch ``i = (t, h, w)`` and ``k_j``, ``v_j`` the
pooled keys and values at pooled position ``j = (a, b, c)`` (the CLS key and value first)::

    k = LN_k([k_cls, Conv_k(K)]),   v = LN_v([v_cls, Conv_v(V)])
    logit(i, j) = q_i . k_j / sqrt(d)
                  + q_i . Rt[d_t(t, a)] + q_i . Rh[d_h(h, b)] + q_i . Rw[d_w(w, c)]
    out_i = sum_j softmax_j(logit(i, .)) v_j  +  q_i          (residual pooling)
    y = proj(concat over heads of out)

* **Pooling** (official ``mode="conv"``): ``Conv3d(d, d, kernel, stride, padding=kernel // 2,
  groups=d, bias=False)`` shared by the heads (applied to each head's ``d`` channels), so a
  pooled size is ``floor((n + 2 * (kernel // 2) - kernel) / stride) + 1`` along each axis; a grid
  the stride does not divide is handled by that zero padding, as the official code. The CLS key
  and value are left out of the convolution and put back first, *before* ``norm_k``/``norm_v``
  (official ``attention_pool``: the CLS token is normalised with the pooled tokens).
* **Decomposed relative positions** (``rel_pos_t``, ``rel_pos_h``, ``rel_pos_w``, each
  ``[2 * max(n_q, n_k) - 1, d]`` with ``n_q``/``n_k`` the query/pooled sizes along the axis of
  the ``rel_pos_grid`` option, default 8 x 14 x 14 (8 x 224 at patch 16), not of the grid the
  model is built for: parameter shapes must not depend on the setting, so a checkpoint loads and
  runs at every frame count and size): along an axis with ``n_q`` queries and ``n_k`` pooled keys,
  ``d(i, j) = i * max(n_k / n_q, 1) - j * max(n_q / n_k, 1) + (n_k - 1) * max(n_q / n_k, 1)``,
  truncated to an integer, computed in float32 exactly as the official ``cal_rel_pos_spatial``
  (so the same table entries are read; at some size pairs float32 lands one below the exact
  quotient, and we keep that for parity). The term uses the unscaled query and is added to
  patch-to-patch logits only (official ``attn[:, :, 1:, 1:]``): the CLS query and the CLS key
  get no positional term. When a clip's grid gives another table length than ``rel_pos_grid``,
  the table is resized on the fly by linear interpolation (official ``get_rel_pos``:
  ``F.interpolate(mode="linear")``, ``align_corners=False``). Initialisation: truncated normal,
  std 0.02 (the Kinetics configs' ``REL_POS_ZERO_INIT: False``), or zeros with
  ``rel_pos_zero_init``.
* **Residual pooling** (official ``residual_pooling``): the query (unpooled by default; with
  ``pool_q`` its stride-1 convolved and normalised version, as official) is added to each head's
  attention output, for patch queries only (official ``x[:, :, 1:, :] += q[:, :, 1:, :]``),
  before the output projection.

Options (``vattn zoo`` lists them):

* ``kv_stride``: ``None`` (default) or ``"adaptive"``: the stride is scaled with *each clip's*
  grid so the pooled size stays what ``(1, 4, 4)`` gives at 14 x 14 (about 4 x 4 per frame):
  ``(1, max(1, round(4 * H / 14)), max(1, round(4 * W / 14)))``, i.e. 1 for grids of up to 5
  rows, 2 for 6-8 (112-128 px), 4 for 14 (224 px), 8 for 28 (448 px); time is never strided.
  An int ``s`` means ``(1, s, s)``; a ``(t, h, w)`` triple is used as is at every grid.
  (MViTv2's ``POOL_KV_STRIDE_ADAPTIVE`` also derives the stride from a reference, per stage;
  its Kinetics models pool to 7 x 7 at every stage, which would be stride 2 here: we follow the
  project's (1, 4, 4) at 14 x 14, which keeps 4 x 4 = 16 of the 196 keys of a frame.)
* ``kernel``: odd sizes ``(t, h, w)`` or one odd int, default ``(3, 3, 3)`` (``POOL_KVQ_KERNEL``).
* ``pool_q``: default ``False``. ``True`` gives the queries their own stride-1 depthwise
  convolution and ``norm_q`` (same kernel), which MViTv2's official Kinetics configs apply in
  every block (``POOL_KVQ_KERNEL`` is set for every layer of ``POOL_Q_STRIDE``, stride 1 except
  at stage transitions); the residual then adds that pooled query.
* ``residual_pooling`` (default ``True``), ``rel_pos_spatial`` (``True``: ``rel_pos_h``,
  ``rel_pos_w``), ``rel_pos_temporal`` (``True``: ``rel_pos_t``), ``rel_pos_zero_init``
  (``False``): the official flags of the same names (``RESIDUAL_POOLING``, ``REL_POS_SPATIAL``,
  ``REL_POS_TEMPORAL``, ``REL_POS_ZERO_INIT``), on as in the Kinetics MViTv2 models.

Computation: one ``scaled_dot_product_attention`` for the CLS query (no bias), and the patch
queries in chunks of whole frames, each with its positional bias as a float ``attn_mask``
``[B, heads, Lq, 1 + Nk]`` (zero in the CLS-key column). The bias is built per chunk from three
einsums (``q . R`` along t, h and w, ``N x (Tk + Hk + Wk) x d`` multiply-adds per head) and one
broadcast sum written in place into the mask (whose last axis is padded to 16 elements, the
memory-efficient kernel's alignment, so SDPA need not copy it). Chunks keep each mask under
:data:`MASK_BUDGET` elements (2**26: 128 MiB in bfloat16), so no attention-sized tensor
beyond one chunk's mask is formed at once. At base 96 x 224 (12 heads, N = 18816 patches,
Nk = 1536 pooled) the whole bias is 12 x 18816 x 1552 numbers, 0.70 GB in bfloat16 per clip and
block, run as 6 chunks of 18 frames (0.13 GB each); in training SDPA keeps each chunk's mask
for its backward, so the saved masks total that 0.70 GB per block (8.4 GB for 12 blocks, batch
1). No N x N or N x Nk attention matrix is formed besides the mask. With both positional terms
off, one SDPA call runs with no mask.

FLOPs (fvcore convention, one clip, one block; ``D`` the width, ``K`` the kernel volume): the
attention part (``attn``: SDPA's Q.K^T + A.V and the three positional einsums) is
``2 D (1 + N)(1 + Nk) + D N (Tk + Hk + Wk)``; the pooling convolutions, counted as ``conv``,
``2 D K Nk`` (plus ``D K N`` with ``pool_q``). At base 8 x 224 (N = 1568, Nk = 8 x 4 x 4):
0.330 GFLOPs of attention against joint's 3.78; at fixed 224 px both grow quadratically with
the frames (Nk grows with T), the ratio tending to 33/392, about 1/11.9 (16 of 196 keys per
frame, plus the temporal einsum's N x T x d). On grids of at most 5 rows/columns the adaptive
stride is 1 and the scheme costs more than joint attention.

Gradients: the tables act on patch queries only, and only the CLS token leaves the last block,
so the last block's ``rel_pos_*`` get zero gradients (as in the official model with
``CLS_EMBED_ON``); they still get a gradient tensor, so DistributedDataParallel is content.

Deliberate differences from the official code:

* Isotropic backbone: no query pooling with a stride, no stage transitions, no channel or head
  growth, no ``pool_skip`` on the residual path; the backbone's absolute position embeddings
  (spatial and temporal) are kept, while MViTv2's Kinetics models use relative ones only
  (``USE_ABS_POS: False``).
* ``pool_q`` is off by default (the project's spec: queries untouched); the official Kinetics
  MViTv2 models have it on in every block (a stride-1 3 x 3 x 3 convolution and ``norm_q``).
* The pooling convolutions are always present, also at kernel 1 and stride 1 (the official
  code then drops the convolution and its norm), so a model has the same parameters at every
  clip grid; the stride is applied at call time (``F.conv3d`` with ``pool_k.weight``) because
  the adaptive stride depends on the clip.
* Table lengths are computed per axis from ``rel_pos_grid`` (the official code assumes a
  square grid and sizes ``rel_pos_h`` and ``rel_pos_w`` from ``H``); the backbone's grids are
  square, so the lengths are the official ones (``2 * H - 1``; ``2 * T - 1`` for time).
* Even kernels are refused (the official code accepts them and pads ``kernel // 2``, which
  shifts the pooled grid by half a token; no official config uses one).
* Initialisation: the pooling weights get the official truncated normal (std 0.02); the norms
  keep the backbone's ViT init (unit weight, zero bias; the official init sets every
  LayerNorm and Linear bias to 0.02). Attention dropout (``args.attn_drop``) is applied to the
  attention weights, which the official layer does not have.
* The official tables are sized by the stage's own input size; here they are sized by
  ``rel_pos_grid`` and interpolated for every other grid, as the official code does for a
  checkpoint run at another resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vattn_cli.errors import UsageError
from vattn_cli.zoo.catalog import register_scheme
from vattn_cli.zoo.scheme import BlockArgs, Grid, PreNormBlock
from vattn_cli.zoo.schemes._grid import triple
from vattn_cli.zoo.steps import AttentionStep, around, covered_grid, with_query

#: The adaptive stride's reference: stride ``REFERENCE_STRIDE`` at ``REFERENCE_SIDE`` rows/columns.
REFERENCE_SIDE, REFERENCE_STRIDE = 14, 4
#: The grid the relative-position tables are sized for by default (8 x 224 at patch 16).
DEFAULT_GRID = Grid(8, 14, 14)
#: Most elements of one chunk's positional-bias mask (``B x heads x Lq x (1 + Nk)``), read at call time.
MASK_BUDGET = 1 << 26
#: The mask's last axis is padded to this many elements (the memory-efficient kernel's alignment),
#: so SDPA does not copy it to pad it.
_MASK_ALIGN = 16

ADAPTIVE = "adaptive"


def adaptive_stride(grid: Grid) -> tuple[int, int, int]:
    """The default key/value stride at ``grid``: ``(1, 4, 4)`` at 14 x 14, scaled with H and W."""
    def side(n: int) -> int:
        return max(1, round(REFERENCE_STRIDE * n / REFERENCE_SIDE))

    return (1, side(grid.h), side(grid.w))


def pooled_size(n: int, kernel: int, stride: int) -> int:
    """Output length of the pooling convolution (padding ``kernel // 2``) over ``n`` tokens."""
    return (n + 2 * (kernel // 2) - kernel) // stride + 1


@lru_cache(maxsize=256)
def rel_index(n_q: int, n_k: int) -> Tensor:
    """``[n_q, n_k]`` table rows of the decomposed relative position along one axis.

    The official ``cal_rel_pos_spatial``/``cal_rel_pos_temporal`` arithmetic, step by step in
    float32 on the CPU (the official code's ``arange`` times a Python float, in float32 whatever
    torch's default dtype is), then truncated; kept for parity.
    """
    q_ratio = max(n_k / n_q, 1.0)
    k_ratio = max(n_q / n_k, 1.0)
    f32 = {"device": "cpu", "dtype": torch.float32}
    dist = torch.arange(n_q, **f32)[:, None] * q_ratio - torch.arange(n_k, **f32)[None, :] * k_ratio
    dist += (n_k - 1) * k_ratio
    return dist.long()


def resized_table(table: Tensor, length: int) -> Tensor:
    """``table [L, d]`` at ``length`` rows: itself, or linearly interpolated (official ``get_rel_pos``)."""
    if int(table.shape[0]) == length:
        return table
    out = F.interpolate(table.t().unsqueeze(0), size=length, mode="linear")
    return out.squeeze(0).t()


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"invalid {name} {value!r}; expected true or false")
    return value


def _kv_stride(value: Any) -> tuple[int, int, int] | None:
    """``None`` for the adaptive stride, else the explicit ``(t, h, w)`` stride."""
    if value is None or (isinstance(value, str) and value.strip().lower() == ADAPTIVE):
        return None
    try:
        return triple("kv_stride", value, spatial_int=True)
    except UsageError:
        raise UsageError(
            f"invalid kv_stride {value!r}; expected None or 'adaptive' (scaled with the grid), "
            "a positive integer s for (1, s, s), or three positive integers (t, h, w)"
        ) from None


class PoolingAttention(nn.Module):
    """MViTv2's pooling attention on ``[B, 1 + T*H*W, D]`` tokens (CLS first); official names.

    ``qkv``/``proj`` as plain attention; ``pool_k``/``pool_v`` (and ``pool_q``) the depthwise
    convolutions, ``norm_k``/``norm_v`` (``norm_q``) their norms, ``rel_pos_t/h/w`` the tables.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        built: Grid,
        kernel: tuple[int, int, int] = (3, 3, 3),
        kv_stride: tuple[int, int, int] | None = None,
        pool_q: bool = False,
        residual_pooling: bool = True,
        rel_pos_spatial: bool = True,
        rel_pos_temporal: bool = True,
        rel_pos_zero_init: bool = False,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hd = dim // num_heads
        self.kernel = tuple(kernel)
        self.padding = tuple(k // 2 for k in self.kernel)
        self.kv_stride = kv_stride
        self.residual_pooling = residual_pooling
        self.rel_pos_zero_init = rel_pos_zero_init
        self.attn_drop = attn_drop

        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

        def conv(stride: tuple[int, int, int]) -> nn.Conv3d:
            return nn.Conv3d(hd, hd, self.kernel, stride=stride, padding=self.padding, groups=hd, bias=False)

        built_stride = self.stride(built)
        self.pool_q = conv((1, 1, 1)) if pool_q else None
        self.norm_q = nn.LayerNorm(hd, eps=norm_eps) if pool_q else None
        self.pool_k = conv(built_stride)
        self.norm_k = nn.LayerNorm(hd, eps=norm_eps)
        self.pool_v = conv(built_stride)
        self.norm_v = nn.LayerNorm(hd, eps=norm_eps)

        k_grid = self.pooled_grid(built)
        length = [2 * max(n_q, n_k) - 1 for n_q, n_k in zip(built, k_grid)]
        self.rel_pos_t = nn.Parameter(torch.zeros(length[0], hd)) if rel_pos_temporal else None
        self.rel_pos_h = nn.Parameter(torch.zeros(length[1], hd)) if rel_pos_spatial else None
        self.rel_pos_w = nn.Parameter(torch.zeros(length[2], hd)) if rel_pos_spatial else None
        self.reset_parameters()

    # -- geometry ---------------------------------------------------------------------------

    def stride(self, grid: Grid) -> tuple[int, int, int]:
        """The key/value stride at ``grid`` (explicit, or :func:`adaptive_stride`)."""
        return adaptive_stride(grid) if self.kv_stride is None else self.kv_stride

    def pooled_grid(self, grid: Grid) -> Grid:
        """The pooled key/value grid of a clip grid."""
        return Grid(*(pooled_size(n, k, s) for n, k, s in zip(grid, self.kernel, self.stride(grid))))

    def reset_parameters(self) -> None:
        for c in (self.pool_q, self.pool_k, self.pool_v):
            if c is not None:
                nn.init.trunc_normal_(c.weight, std=0.02)
        for table in (self.rel_pos_t, self.rel_pos_h, self.rel_pos_w):
            if table is not None:
                if self.rel_pos_zero_init:
                    nn.init.zeros_(table)
                else:
                    nn.init.trunc_normal_(table, std=0.02)

    @property
    def has_rel_pos(self) -> bool:
        return any(t is not None for t in (self.rel_pos_t, self.rel_pos_h, self.rel_pos_w))

    # -- forward ----------------------------------------------------------------------------

    def _pool(self, z: Tensor, conv: nn.Conv3d, norm: nn.LayerNorm, grid: Grid,
              stride: tuple[int, int, int]) -> tuple[Tensor, Grid]:
        """``z [B, heads, 1 + N, d]`` pooled over the grid (CLS kept out, put back, then normed)."""
        b, heads, _, hd = (int(s) for s in z.shape)
        cls, patches = z[:, :, :1], z[:, :, 1:]
        vol = patches.reshape(b * heads, *grid, hd).permute(0, 4, 1, 2, 3)
        vol = F.conv3d(vol, conv.weight, stride=stride, padding=self.padding, groups=hd)
        pooled = Grid(*(int(s) for s in vol.shape[2:]))
        vol = vol.reshape(b, heads, hd, pooled.patches).transpose(2, 3)
        return norm(torch.cat([cls, vol], dim=2)), pooled

    def _bias(self, q: Tensor, grid: Grid, k_grid: Grid, t0: int, t1: int) -> Tensor:
        """Positional bias of the patch queries of frames ``[t0, t1)``: ``[B, heads, Lq, 1 + Nk]``
        (CLS-key column zero), ``q [B, heads, Lq, d]`` unscaled; last axis padded for alignment."""
        b, heads, _, hd = (int(s) for s in q.shape)
        _, h, w = grid
        kt, kh, kw = k_grid
        rq = q.reshape(b, heads, t1 - t0, h, w, hd)

        def term(table: Tensor, n_q: int, n_k: int, rows: slice | None = None) -> Tensor:
            index = rel_index(n_q, n_k)
            if rows is not None:
                index = index[rows]
            return resized_table(table, 2 * max(n_q, n_k) - 1)[index.to(table.device)]

        terms = []
        if self.rel_pos_t is not None:
            rt = term(self.rel_pos_t, grid.t, kt, slice(t0, t1))
            terms.append(torch.einsum("bnthwc,tkc->bnthwk", rq, rt)[..., :, None, None])
        if self.rel_pos_h is not None and self.rel_pos_w is not None:
            rh, rw = term(self.rel_pos_h, h, kh), term(self.rel_pos_w, w, kw)
            terms.append(torch.einsum("bnthwc,hkc->bnthwk", rq, rh)[..., None, :, None])
            terms.append(torch.einsum("bnthwc,wkc->bnthwk", rq, rw)[..., None, None, :])
        # The mask is written in place through an 8-D view of its patch-key columns: no
        # full-size temporary besides the mask itself (autograd follows the in-place writes).
        width = 1 + kt * kh * kw
        mask = q.new_zeros(b, heads, int(rq.shape[2]) * h * w, width + (-width % _MASK_ALIGN))
        view = mask[..., 1:width].unflatten(-1, (kt, kh, kw)).unflatten(2, (t1 - t0, h, w))
        view.copy_(terms[0])
        for extra in terms[1:]:
            view.add_(extra)
        return mask[..., :width]

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        b, n, dim = (int(s) for s in x.shape)
        grid = Grid(*(int(s) for s in grid))  # under torch.jit.trace (fvcore) sizes are tensors
        heads, hd = self.num_heads, self.head_dim
        hw = grid.h * grid.w
        qkv = self.qkv(x).reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        stride = self.stride(grid)
        k, k_grid = self._pool(k, self.pool_k, self.norm_k, grid, stride)
        v, _ = self._pool(v, self.pool_v, self.norm_v, grid, stride)
        if self.pool_q is not None:
            q, _ = self._pool(q, self.pool_q, self.norm_q, grid, (1, 1, 1))
        # Under autocast the norms return float32 while the projection gave bfloat16/float16:
        # attention runs in the projection's dtype.
        q, k, v = (z.to(qkv.dtype) for z in (q, k, v))
        drop = self.attn_drop if self.training else 0.0

        if not self.has_rel_pos:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
            if self.residual_pooling:
                out = torch.cat([out[:, :, :1], out[:, :, 1:] + q[:, :, 1:]], dim=2)
        else:
            parts = [F.scaled_dot_product_attention(q[:, :, :1], k, v, dropout_p=drop)]
            per_frame = b * heads * hw * (1 + k_grid.patches)
            frames = max(1, MASK_BUDGET // per_frame)
            for t0 in range(0, grid.t, frames):
                t1 = min(grid.t, t0 + frames)
                qc = q[:, :, 1 + t0 * hw:1 + t1 * hw]
                mask = self._bias(qc, grid, k_grid, t0, t1)
                oc = F.scaled_dot_product_attention(qc, k, v, attn_mask=mask, dropout_p=drop)
                parts.append(oc + qc if self.residual_pooling else oc)
            out = torch.cat(parts, dim=2)
        out = out.transpose(1, 2).reshape(b, n, dim)
        return self.proj_drop(self.proj(out))


@register_scheme("pooled")
class PooledAttention(PreNormBlock):
    """Pre-norm block whose attention is :class:`PoolingAttention` (options: module docstring)."""

    cls_token = "shared"
    uses_time_embed = True
    description = "all tokens attend to conv-pooled keys/values (1x4x4 at 14x14), rel-pos, residual pooling (MViTv2)"

    def __init__(
        self,
        args: BlockArgs,
        kv_stride: int | Sequence[int] | str | None = None,
        kernel: int | Sequence[int] = (3, 3, 3),
        pool_q: bool = False,
        residual_pooling: bool = True,
        rel_pos_spatial: bool = True,
        rel_pos_temporal: bool = True,
        rel_pos_zero_init: bool = False,
        rel_pos_grid: int | Sequence[int] = tuple(DEFAULT_GRID),
    ) -> None:
        super().__init__(args)
        self.attn = PoolingAttention(
            args.dim, args.num_heads, Grid(*triple("rel_pos_grid", rel_pos_grid)),
            kernel=triple("kernel", kernel, odd=True),
            kv_stride=_kv_stride(kv_stride),
            pool_q=_flag("pool_q", pool_q),
            residual_pooling=_flag("residual_pooling", residual_pooling),
            rel_pos_spatial=_flag("rel_pos_spatial", rel_pos_spatial),
            rel_pos_temporal=_flag("rel_pos_temporal", rel_pos_temporal),
            rel_pos_zero_init=_flag("rel_pos_zero_init", rel_pos_zero_init),
            qkv_bias=args.qkv_bias, attn_drop=args.attn_drop, proj_drop=args.drop, norm_eps=args.norm_eps,
        )

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.attn.reset_parameters()

    def attention_steps(self) -> tuple[AttentionStep, ...]:
        attn = self.attn

        def keys(grid: Grid, query: tuple[int, int, int]) -> Tensor:
            # the tokens some pooled key/value reads, and the query (its own q: the logits, the
            # positional bias and residual pooling; with pool_q, the window its q is pooled from)
            keys = with_query(covered_grid(grid, attn.kernel, attn.stride(grid)), query)
            return keys | around(attn.kernel)(grid, query) if attn.pool_q is not None else keys

        return (AttentionStep("pooled", keys, output="attn.proj", cls=True),)

    def attend(self, x: Tensor, grid: Grid) -> Tensor:
        return self.attn(x, grid)
