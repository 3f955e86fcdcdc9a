"""MViTv2 pooling attention (``pooled``): the block against a naive float64 reference written
from the paper's equations, and the scheme's own properties.

The reference shares no code with the scheme: it reads the block's weights by name and
computes the depthwise pooling with explicit loops over the pooled grid and the kernel offsets,
the LayerNorms from their formula, the relative offsets as exact fractions, the tables'
linear interpolation position by position, and adds every positional term to the logits
explicitly before a plain softmax.
"""

from __future__ import annotations

import math
from fractions import Fraction
from itertools import product

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vattn_cli.errors import UsageError
from vattn_cli.measure.conformance import carries_work
from vattn_cli.measure.flops import ATTN, analysis, count_flops
from vattn_cli.testing import check_scheme
from vattn_cli.zoo import create_model, get_scheme
from vattn_cli.zoo.scheme import BlockArgs, Grid
from vattn_cli.zoo.schemes import pooled as scheme_module
from vattn_cli.zoo.schemes.pooled import PooledAttention

SCHEME = "pooled"
DIM, HEADS = 32, 4
EPS = 1e-6


# ------------------------------------------------------------------------ the reference

def layer_norm(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + EPS) * w + b


def out_len(n: int, k: int, s: int) -> int:
    """Convolution output length with zero padding k // 2 on both sides."""
    return (n + 2 * (k // 2) - k) // s + 1


def pool_reference(z: Tensor, weight: Tensor, kernel, stride) -> Tensor:
    """Depthwise pooling of ``z [B, heads, T, H, W, d]`` with ``weight [d, 1, kt, kh, kw]``:
    ``out[a, b, c] = sum_{u,v,w} weight[:, u, v, w] * z[a*st - pt + u, b*sh - ph + v, c*sw - pw + w]``
    over the offsets that land inside the grid (zero padding)."""
    size = z.shape[2:5]
    pads = [k // 2 for k in kernel]
    shape = [out_len(n, k, s) for n, k, s in zip(size, kernel, stride)]
    out = z.new_zeros(*z.shape[:2], *shape, z.shape[-1])
    for a, b, c in product(*(range(n) for n in shape)):
        acc = z.new_zeros(*z.shape[:2], z.shape[-1])
        for u, v, w in product(*(range(k) for k in kernel)):
            src = (a * stride[0] - pads[0] + u, b * stride[1] - pads[1] + v, c * stride[2] - pads[2] + w)
            if all(0 <= i < n for i, n in zip(src, size)):
                acc = acc + weight[:, 0, u, v, w] * z[:, :, src[0], src[1], src[2], :]
        out[:, :, a, b, c] = acc
    return out


def offset(i: int, j: int, n_q: int, n_k: int) -> int:
    """Table row of query position i against pooled key position j along one axis (MViTv2's
    scaled relative distance ``i * max(nk/nq, 1) - j * max(nq/nk, 1) + (nk - 1) * max(nq/nk, 1)``)."""
    m = max(n_q, n_k)
    return math.floor(Fraction(i * m, n_q) + Fraction((n_k - 1 - j) * m, n_k))


def interpolate_reference(table: Tensor, n: int) -> Tensor:
    """Linear interpolation of the rows of ``table`` to ``n`` rows (half-pixel centres)."""
    length = table.shape[0]
    if length == n:
        return table
    rows = []
    for i in range(n):
        src = max((i + 0.5) * length / n - 0.5, 0.0)
        i0 = int(math.floor(src))
        i1 = min(i0 + 1, length - 1)
        lam = src - i0
        rows.append((1 - lam) * table[i0] + lam * table[i1])
    return torch.stack(rows)


def reference_block(block: nn.Module, x: Tensor, grid: Grid, stride, kernel=(3, 3, 3), *, pool_q=False,
                    residual=True, rel_t=True, rel_s=True) -> Tensor:
    p = {k: v.double() for k, v in block.state_dict().items()}
    x = x.double()
    b, n, dim = x.shape
    heads, d = HEADS, dim // HEADS
    t, h, w = grid

    y = layer_norm(x, p["norm1.weight"], p["norm1.bias"])
    qkv = (y @ p["attn.qkv.weight"].T + p["attn.qkv.bias"]).reshape(b, n, 3, heads, d)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [B, heads, 1 + N, d]

    def pool(z: Tensor, name: str, s) -> tuple[Tensor, tuple[int, int, int]]:
        vol = z[:, :, 1:].reshape(b, heads, t, h, w, d)
        pooled = pool_reference(vol, p[f"attn.pool_{name}.weight"], kernel, s)
        z = torch.cat([z[:, :, :1], pooled.reshape(b, heads, -1, d)], dim=2)  # CLS first, then norm
        return layer_norm(z, p[f"attn.norm_{name}.weight"], p[f"attn.norm_{name}.bias"]), tuple(pooled.shape[2:5])

    k, kg = pool(k, "k", stride)
    v, _ = pool(v, "v", stride)
    if pool_q:
        q, _ = pool(q, "q", (1, 1, 1))

    logits = q @ k.transpose(-1, -2) / math.sqrt(d)
    queries = list(product(range(t), range(h), range(w)))
    keys = list(product(*(range(m) for m in kg)))
    axes = ([0] if rel_t else []) + ([1, 2] if rel_s else [])
    for axis in axes:
        n_q, n_k = grid[axis], kg[axis]
        table = interpolate_reference(p[f"attn.rel_pos_{'thw'[axis]}"], 2 * max(n_q, n_k) - 1)
        rows = torch.tensor([[offset(qi[axis], kj[axis], n_q, n_k) for kj in keys] for qi in queries])
        logits[:, :, 1:, 1:] += torch.einsum("bnic,ijc->bnij", q[:, :, 1:], table[rows])
    out = logits.softmax(-1) @ v
    if residual:
        out[:, :, 1:] += q[:, :, 1:]
    out = out.transpose(1, 2).reshape(b, n, dim) @ p["attn.proj.weight"].T + p["attn.proj.bias"]
    x = x + out
    y = layer_norm(x, p["norm2.weight"], p["norm2.bias"])
    y = F.gelu(y @ p["mlp.fc1.weight"].T + p["mlp.fc1.bias"]) @ p["mlp.fc2.weight"].T + p["mlp.fc2.bias"]
    return x + y


def make_block(built: Grid, **options) -> nn.Module:
    """A block with every weight random (LayerNorms, pooling weights and tables included)."""
    block = PooledAttention(BlockArgs(DIM, HEADS, norm_eps=EPS), rel_pos_grid=built, **options).eval()
    with torch.no_grad():
        for name, param in block.named_parameters():
            unit = name.endswith("weight") and "norm" in name
            scale = 0.3 if "pool_" in name else 0.1
            param.copy_(torch.randn_like(param) * scale + unit)
    return block


def expected_adaptive(grid: Grid) -> tuple[int, int, int]:
    """The documented rule: (1, 4, 4) at 14 x 14, scaled with the rows and columns."""
    return (1, max(1, round(4 * grid.h / 14)), max(1, round(4 * grid.w / 14)))


# --------------------------------------------------------------------- against the reference

CASES = [
    # built-at grid, run grid, options, stride the reference uses
    (Grid(4, 7, 7), Grid(4, 7, 7), {"kv_stride": (1, 2, 2)}, (1, 2, 2)),
    (Grid(3, 5, 6), Grid(3, 5, 6), {"kv_stride": (2, 2, 3)}, (2, 2, 3)),  # 5, 6, 3 not divisible
    (Grid(4, 7, 7), Grid(4, 7, 7), {}, (1, 2, 2)),  # adaptive at 7 x 7
    (Grid(4, 7, 7), Grid(3, 5, 6), {"kv_stride": (2, 2, 3)}, (2, 2, 3)),  # tables interpolated down
    (Grid(4, 7, 7), Grid(6, 8, 9), {}, (1, 2, 3)),  # up, adaptive at the clip's 8 x 9
    (Grid(3, 5, 6), Grid(3, 5, 6), {"kv_stride": 2, "kernel": (1, 3, 5), "pool_q": True}, (1, 2, 2)),
    (Grid(3, 5, 6), Grid(3, 5, 6), {"kv_stride": (1, 2, 2), "rel_pos_temporal": False}, (1, 2, 2)),
    (Grid(3, 5, 6), Grid(3, 5, 6), {"kv_stride": (2, 1, 2), "rel_pos_spatial": False,
                                    "residual_pooling": False}, (2, 1, 2)),
    (Grid(3, 5, 6), Grid(3, 5, 6), {"kv_stride": (2, 2, 2), "rel_pos_spatial": False,
                                    "rel_pos_temporal": False}, (2, 2, 2)),
]


@pytest.mark.parametrize("built, grid, options, stride", CASES,
                         ids=[f"{b}->{g}-{o}" for b, g, o, _ in CASES])
def test_block_equals_reference(built, grid, options, stride) -> None:
    torch.manual_seed(0)
    block = make_block(built, **options)
    if "kv_stride" not in options:
        assert expected_adaptive(grid) == stride
    x = torch.randn(2, 1 + grid.patches, DIM)
    with torch.no_grad():
        got = block(x, grid)
    want = reference_block(
        block, x, grid, stride, options.get("kernel", (3, 3, 3)), pool_q=options.get("pool_q", False),
        residual=options.get("residual_pooling", True), rel_t=options.get("rel_pos_temporal", True),
        rel_s=options.get("rel_pos_spatial", True),
    )
    assert (got.double() - want).abs().max().item() < 1e-5


def test_query_chunks_change_nothing(monkeypatch) -> None:
    """Chunking the patch queries (one frame per chunk here) gives the same block."""
    torch.manual_seed(1)
    grid = Grid(3, 5, 6)
    block = make_block(grid, kv_stride=(2, 2, 3))
    x = torch.randn(2, 1 + grid.patches, DIM)
    with torch.no_grad():
        whole = block(x, grid)
        monkeypatch.setattr(scheme_module, "MASK_BUDGET", 1)
        chunked = block(x, grid)
    want = reference_block(block, x, grid, (2, 2, 3))
    assert (chunked - whole).abs().max().item() < 1e-6
    assert (chunked.double() - want).abs().max().item() < 1e-5


def test_gradients_match_finite_differences(monkeypatch) -> None:
    """In float64, the autograd gradient (through the in-place mask writes, chunked) matches a
    central difference along a random direction of every parameter and the input at once."""
    torch.manual_seed(4)
    monkeypatch.setattr(scheme_module, "MASK_BUDGET", 1)
    grid = Grid(3, 5, 6)
    block = make_block(grid, kv_stride=(2, 2, 3), pool_q=True).double()
    x = torch.randn(1, 1 + grid.patches, DIM, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(1, 1 + grid.patches, DIM, dtype=torch.float64)
    params = [x, *block.parameters()]
    (block(x, grid) * weights).sum().backward()
    direction = [torch.randn_like(p) for p in params]
    analytic = sum((p.grad * u).sum() for p, u in zip(params, direction)).item()
    eps = 1e-6
    with torch.no_grad():
        def shifted(sign: float) -> float:
            for p, u in zip(params, direction):
                p.add_(sign * eps * u)
            value = (block(x, grid) * weights).sum().item()
            for p, u in zip(params, direction):
                p.sub_(sign * eps * u)
            return value

        numeric = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
    assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric))


# ------------------------------------------------------------------------------ properties

@pytest.mark.parametrize("rel_pos", [False, True], ids=["rel-pos-off", "rel-pos-zero"])
def test_identity_pooling_is_joint_attention(rel_pos) -> None:
    """Stride 1, kernel 1, unit pooling weights, identity norms, no positional term and no
    residual pooling: joint attention over all tokens, with the same weights."""
    torch.manual_seed(2)
    grid = Grid(3, 5, 6)
    block = make_block(grid, kv_stride=(1, 1, 1), kernel=1, residual_pooling=False,
                       rel_pos_spatial=rel_pos, rel_pos_temporal=rel_pos)
    with torch.no_grad():
        block.attn.pool_k.weight.fill_(1.0)
        block.attn.pool_v.weight.fill_(1.0)
        for table in (block.attn.rel_pos_t, block.attn.rel_pos_h, block.attn.rel_pos_w):
            if table is not None:
                table.zero_()
    block.attn.norm_k = nn.Identity()
    block.attn.norm_v = nn.Identity()
    joint = get_scheme("joint")(BlockArgs(DIM, HEADS, norm_eps=EPS)).eval()
    joint.load_state_dict({k: v for k, v in block.state_dict().items() if k in joint.state_dict()})
    x = torch.randn(2, 1 + grid.patches, DIM)
    with torch.no_grad():
        assert (block(x, grid) - joint(x, grid)).abs().max().item() < 1e-5


def test_cls_query_has_no_positional_term() -> None:
    """The tables reach patch-to-patch logits only: the CLS token's attention output ignores them."""
    torch.manual_seed(3)
    grid = Grid(3, 5, 6)
    block = make_block(grid, kv_stride=(1, 2, 2))
    x = torch.randn(1, 1 + grid.patches, DIM)
    with torch.no_grad():
        before = block.attn(x, grid)
        for table in (block.attn.rel_pos_t, block.attn.rel_pos_h, block.attn.rel_pos_w):
            table.mul_(5.0)
        after = block.attn(x, grid)
    assert (before[:, 0] - after[:, 0]).abs().max().item() < 1e-6
    assert (before[:, 1:] - after[:, 1:]).abs().max().item() > 1e-3


@pytest.mark.parametrize("side, stride", [(1, 1), (4, 1), (5, 1), (6, 2), (7, 2), (8, 2), (12, 3),
                                          (14, 4), (16, 5), (20, 6), (28, 8)])
def test_adaptive_stride_keeps_the_pooled_size(side, stride) -> None:
    block = PooledAttention(BlockArgs(DIM, HEADS), rel_pos_grid=Grid(4, 14, 14))
    grid = Grid(4, side, side)
    assert block.attn.stride(grid) == (1, stride, stride) == expected_adaptive(grid)
    pooled = block.attn.pooled_grid(grid)
    assert pooled.t == 4 and pooled.h == pooled.w == out_len(side, 3, stride)
    if side >= 6:
        assert 3 <= pooled.h <= 4  # about what (1, 4, 4) gives at 14 x 14


def test_explicit_stride_is_used_as_is_and_tables_follow_rel_pos_grid() -> None:
    block = PooledAttention(BlockArgs(DIM, HEADS), rel_pos_grid=Grid(8, 14, 14), kv_stride=(2, 2, 2))
    assert block.attn.stride(Grid(4, 28, 28)) == (2, 2, 2)
    assert block.attn.pooled_grid(Grid(8, 14, 14)) == Grid(4, 7, 7)
    assert PooledAttention(BlockArgs(DIM, HEADS), kv_stride=3).attn.stride(Grid(2, 5, 5)) == (1, 3, 3)
    assert [tuple(t.shape) for t in (block.attn.rel_pos_t, block.attn.rel_pos_h, block.attn.rel_pos_w)] == [
        (15, DIM // HEADS), (27, DIM // HEADS), (27, DIM // HEADS)]  # 2 * max(q, kv) - 1
    # Not the setting a model is built for: its parameters are the same at every setting.
    small, large = (create_model(SCHEME, size="tiny", frames=f, img_size=z) for f, z in ((4, 112), (16, 448)))
    assert tuple(small.blocks[0].attn.rel_pos_h.shape) == tuple(large.blocks[0].attn.rel_pos_h.shape) == (27, 32)
    assert [tuple(t.shape) for t in (small.blocks[0].attn.rel_pos_t, small.blocks[0].attn.rel_pos_w)] == [(15, 32), (27, 32)]


def test_rel_index_is_the_official_float32_arithmetic() -> None:
    """Official ``cal_rel_pos_spatial`` computes the offsets in float32; at some size pairs that
    lands one below the exact quotient, and the scheme keeps the official rows."""
    def official(n_q: int, n_k: int) -> np.ndarray:
        q_ratio, k_ratio = np.float32(max(n_k / n_q, 1.0)), np.float32(max(n_q / n_k, 1.0))
        dist = np.arange(n_q, dtype=np.float32)[:, None] * q_ratio - np.arange(n_k, dtype=np.float32)[None, :] * k_ratio
        return (dist + np.float32((n_k - 1) * max(n_q / n_k, 1.0))).astype(np.int64)

    for n_q, n_k in [(14, 4), (7, 4), (5, 3), (8, 6), (16, 6), (28, 4), (3, 5)]:
        assert scheme_module.rel_index(n_q, n_k).tolist() == official(n_q, n_k).tolist()
    exact = [[offset(i, j, 8, 6) for j in range(6)] for i in range(8)]
    assert scheme_module.rel_index(8, 6).tolist() != exact


def test_initialisation() -> None:
    model = create_model(SCHEME, size="tiny", frames=4, img_size=112)
    attn = model.blocks[1].attn
    for p in (attn.rel_pos_t, attn.rel_pos_h, attn.rel_pos_w, attn.pool_k.weight, attn.pool_v.weight):
        assert 0.015 < p.std().item() < 0.025  # trunc_normal_(std=0.02), as official (cut at +-2, not 2 std)
    zero = create_model(SCHEME, size="tiny", frames=4, img_size=112, rel_pos_zero_init=True)
    assert all(not t.any() for t in (zero.blocks[0].attn.rel_pos_t, zero.blocks[0].attn.rel_pos_w))
    assert torch.equal(attn.norm_k.weight, torch.ones(32)) and not attn.norm_k.bias.any()


# ----------------------------------------------------------------------------------- FLOPs

def attn_macs(dim: int, grid: Grid, pooled: Grid) -> int:
    """SDPA's Q.K^T + A.V over (1 + N) x (1 + Nk) tokens, plus the three positional einsums
    ``q . R`` (N x (Tk + Hk + Wk) x d per head); batch 1."""
    n, nk = grid.patches, pooled.patches
    return 2 * dim * (1 + n) * (1 + nk) + dim * n * (pooled.t + pooled.h + pooled.w)


def conv_macs(dim: int, grid: Grid, pooled: Grid, kernel: int = 27, pool_q: bool = False) -> int:
    """The key and value pooling convolutions (and the query's, stride 1): d x K per output per head."""
    return dim * kernel * (2 * pooled.patches + (grid.patches if pool_q else 0))


def joint_macs(dim: int, grid: Grid) -> int:
    return 2 * dim * (1 + grid.patches) ** 2


def pooled_of(grid: Grid, stride=None, kernel=3) -> Grid:
    s = stride or expected_adaptive(grid)
    return Grid(*(out_len(n, kernel, si) for n, si in zip(grid, s)))


class AtGrid(nn.Module):
    def __init__(self, block: nn.Module, grid: Grid) -> None:
        super().__init__()
        self.block, self.grid = block, grid

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x, self.grid)


@pytest.mark.parametrize("grid, options", [(Grid(4, 7, 7), {}), (Grid(3, 5, 6), {"kv_stride": (2, 2, 3), "pool_q": True})],
                         ids=["4x7x7-adaptive", "3x5x6-pool_q"])
def test_flops_match_the_formula(grid, options) -> None:
    dim = 64
    block = PooledAttention(BlockArgs(dim, 4), rel_pos_grid=grid, **options).eval()
    x = torch.randn(1, 1 + grid.patches, dim)
    count = count_flops(AtGrid(block, grid), (x,))
    pooled = pooled_of(grid, options.get("kv_stride"))
    assert count.attn == attn_macs(dim, grid, pooled)
    assert not {op for op in count.unsupported if carries_work(op)}, count.unsupported
    by_op = analysis(AtGrid(block, grid), (x,)).by_operator()
    assert by_op["conv"] == conv_macs(dim, grid, pooled, pool_q=options.get("pool_q", False))
    assert by_op[ATTN] == count.attn


def test_model_flops_have_no_uncounted_work() -> None:
    model = create_model(SCHEME, size="tiny", frames=4, img_size=64)
    count = count_flops(model, (torch.randn(1, 3, 4, 64, 64),))
    assert count.attn > 0 and not {op for op in count.unsupported if carries_work(op)}, count.unsupported


@pytest.mark.parametrize("grid", [Grid(4, 7, 7), Grid(8, 14, 14), Grid(2, 28, 28), Grid(16, 8, 8)], ids=str)
def test_cheaper_than_joint_counted(grid) -> None:
    """Counted: pooled attention (SDPA + positional einsums + pooling convolutions) < joint's."""
    dim = 32
    x = torch.randn(1, 1 + grid.patches, dim)
    pooled = count_flops(AtGrid(PooledAttention(BlockArgs(dim, 4), rel_pos_grid=grid).eval(), grid), (x,))
    joint = count_flops(AtGrid(get_scheme("joint")(BlockArgs(dim, 4)).eval(), grid), (x,))
    conv = conv_macs(dim, grid, pooled_of(grid))
    assert pooled.attn + conv < joint.attn
    assert pooled.total < joint.total


def test_cheaper_than_joint_by_formula() -> None:
    """At every grid from 6 x 6 up (the adaptive stride is then >= 2), 1 to 96 frames; at 224 px
    the ratio tends to 33/392 (16 of 196 keys per frame, plus the temporal einsum)."""
    for side in (6, 7, 8, 10, 14, 16, 20, 28):
        for frames in (1, 2, 4, 8, 16, 32, 64, 96):
            grid = Grid(frames, side, side)
            p = pooled_of(grid)
            assert attn_macs(768, grid, p) + conv_macs(768, grid, p) < joint_macs(768, grid)
    grid = Grid(96, 14, 14)
    ratio = attn_macs(768, grid, pooled_of(grid)) / joint_macs(768, grid)
    assert abs(ratio - 33 / 392) < 2e-3


# -------------------------------------------------------------------------- end to end, options

def test_conformance() -> None:
    check_scheme(SCHEME)


def test_train_step_reaches_every_parameter() -> None:
    """Every parameter gets a non-zero gradient, except the last block's tables: they act on
    patch queries only, and only the CLS token leaves the last block (as in official MViTv2)."""
    model = create_model(SCHEME, size="tiny", frames=2, img_size=96, num_classes=3)
    model(torch.randn(2, 3, 2, 96, 96)).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    last = len(model.blocks) - 1
    assert zero == [f"blocks.{last}.attn.rel_pos_{a}" for a in "thw"], zero


@pytest.mark.parametrize("options, match", [
    ({"kv_stride": 0}, "kv_stride"),
    ({"kv_stride": "fast"}, "adaptive"),
    ({"kv_stride": (1, 2)}, "three positive integers"),
    ({"kernel": 2}, "odd"),
    ({"kernel": (3, 3)}, "kernel"),
    ({"pool_q": "yes"}, "pool_q"),
    ({"residual_pooling": 1}, "residual_pooling"),
    ({"rel_pos_spatial": None}, "rel_pos_spatial"),
    ({"rel_pos_temporal": "no"}, "rel_pos_temporal"),
    ({"rel_pos_zero_init": 0}, "rel_pos_zero_init"),
])
def test_bad_options_are_usage_errors(options, match) -> None:
    with pytest.raises(UsageError, match=match):
        create_model(SCHEME, size="tiny", frames=2, img_size=32, **options)


def test_good_option_spellings() -> None:
    for value in (None, "adaptive", 2, (1, 2, 2), [1, 2, 2]):
        create_model(SCHEME, size="tiny", frames=2, img_size=32, kv_stride=value)
