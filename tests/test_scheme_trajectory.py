"""Trajectory attention (Motionformer): the block against a naive reference, and its properties.

The reference is written from the paper's equations with explicit loops over the query's
frame and position, every key frame and every head, in float64, with its own linear algebra
(weights read off the modules; no SDPA, no einops, nothing from the scheme file).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vattn_cli.errors import UsageError
from vattn_cli.measure.conformance import carries_work
from vattn_cli.measure.flops import count_flops, count_model_flops
from vattn_cli.testing import check_scheme
from vattn_cli.zoo import create_model, get_scheme, list_schemes
from vattn_cli.zoo.info import count_params
from vattn_cli.zoo.scheme import BlockArgs, Grid
import vattn_cli.zoo.schemes._grid as grid_module
from vattn_cli.zoo.schemes.trajectory import TrajectoryBlock, frames_per_chunk

SCHEME = "trajectory"
DIM, HEADS = 32, 4
GRIDS = [Grid(4, 3, 3), Grid(3, 2, 5)]  # odd and non-square; the second has W not a multiple of H


def make_block(grid_std: float = 0.2, **options) -> nn.Module:
    """A block with every weight random (LayerNorms included)."""
    block = TrajectoryBlock(BlockArgs(DIM, HEADS), **options).eval()
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.weight.copy_(torch.randn_like(module.weight) * grid_std + isinstance(module, nn.LayerNorm))
                module.bias.copy_(torch.randn_like(module.bias) * 0.1)
    return block


# ------------------------------------------------------------------------------ the reference

def linear(layer: nn.Linear, x: Tensor) -> Tensor:
    return x @ layer.weight.T + layer.bias


def softmax(scores: Tensor) -> Tensor:
    e = torch.exp(scores - scores.max())
    return e / e.sum()


def reference_attention(attn: nn.Module, x: Tensor, grid: Grid) -> Tensor:
    """The paper's equations for ``x [B, 1 + T*S, D]`` (CLS first), float64, explicit loops."""
    b_, n, d = x.shape
    t_, s_ = grid.t, grid.h * grid.w
    hd = d // HEADS
    scale = 1.0 / math.sqrt(hd)
    q, k, v = linear(attn.qkv, x).split(d, dim=-1)
    token = lambda t, s: 1 + t * s_ + s  # noqa: E731  (frame-major, row-major positions)
    heads = lambda z, h: z[..., h * hd:(h + 1) * hd]  # noqa: E731
    out = torch.zeros(b_, n, d, dtype=x.dtype)
    for b in range(b_):
        # CLS: one softmax over every token, itself included; no temporal step
        for h in range(HEADS):
            w = softmax(torch.stack([heads(q[b, 0], h) @ heads(k[b, j], h) * scale for j in range(n)]))
            out[b, 0, h * hd:(h + 1) * hd] = sum(w[j] * heads(v[b, j], h) for j in range(n))
        for tq in range(t_):
            for sq in range(s_):
                i = token(tq, sq)
                # y[s', t', t]: per key frame t, a softmax over that frame's S positions
                traj = torch.zeros(t_, d, dtype=x.dtype)
                for t in range(t_):
                    for h in range(HEADS):
                        scores = torch.stack([heads(q[b, i], h) @ heads(k[b, token(t, s)], h) * scale for s in range(s_)])
                        w = softmax(scores)
                        traj[t, h * hd:(h + 1) * hd] = sum(w[s] * heads(v[b, token(t, s)], h) for s in range(s_))
                q2 = linear(attn.proj_q, traj[tq])                  # the query's own frame
                k2, v2 = linear(attn.proj_kv, traj).split(d, dim=-1)  # every frame
                for h in range(HEADS):
                    w = softmax(torch.stack([heads(q2, h) @ heads(k2[t], h) * scale for t in range(t_)]))
                    out[b, i, h * hd:(h + 1) * hd] = sum(w[t] * heads(v2[t], h) for t in range(t_))
    return linear(attn.proj, out)


def reference_block(block: nn.Module, x: Tensor, grid: Grid) -> Tensor:
    blk = copy.deepcopy(block).double()
    x = x.double()
    x = x + reference_attention(blk.attn, blk.norm1(x), grid)
    return x + blk.mlp(blk.norm2(x))


# ------------------------------------------------------------------------------ correctness

@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_block_equals_naive_reference(grid: Grid) -> None:
    torch.manual_seed(0)
    block = make_block()
    x = torch.randn(2, 1 + grid.patches, DIM)
    with torch.no_grad():
        got, want = block(x, grid), reference_block(block, x, grid)
    assert (got.double() - want).abs().max().item() < 1e-5


def test_one_frame_reduces_to_spatial_attention_then_value_projection() -> None:
    # T = 1: the temporal softmax has one entry (weight 1), so a patch's output is
    #   proj( W_v y + b_v ),  y = softmax_s(q k^T / sqrt(hd)) v over the frame's own patches,
    # W_v, b_v the value half of proj_kv; proj_q and the key half of proj_kv have no effect.
    # The CLS token is unchanged: joint attention over CLS + patches, then proj.
    torch.manual_seed(1)
    grid = Grid(1, 3, 4)
    block = make_block()
    attn = block.attn
    x = torch.randn(2, 1 + grid.patches, DIM)
    with torch.no_grad():
        got = attn(x, grid)
        q, k, v = (z.view(2, -1, HEADS, DIM // HEADS).transpose(1, 2) for z in attn.qkv(x).split(DIM, -1))
        scores = q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS)
        cls = scores[:, :, :1].softmax(-1) @ v
        y = scores[:, :, 1:, 1:].softmax(-1) @ v[:, :, 1:]
        merge = lambda z: z.transpose(1, 2).reshape(2, -1, DIM)  # noqa: E731
        w_v, b_v = attn.proj_kv.weight[DIM:], attn.proj_kv.bias[DIM:]
        want = attn.proj(torch.cat([merge(cls), merge(y) @ w_v.T + b_v], dim=1))
        assert (got - want).abs().max().item() < 1e-5
        for p in (attn.proj_q.weight, attn.proj_q.bias, attn.proj_kv.weight[:DIM], attn.proj_kv.bias[:DIM]):
            p.add_(torch.randn_like(p))
        assert (attn(x, grid) - got).abs().max().item() < 1e-5


def test_cls_reads_every_token_and_no_patch_reads_the_cls() -> None:
    grid = Grid(3, 2, 3)
    block = make_block()
    x = torch.randn(1, 1 + grid.patches, DIM)
    with torch.no_grad():
        base = block.attn(x, grid)
        x2 = x.clone()
        x2[:, 0] += torch.randn(DIM)  # change the CLS input only
        moved = (block.attn(x2, grid) - base).abs().amax(-1)[0]
    assert moved[0] > 1e-4 and moved[1:].max() == 0  # the CLS is no key of the patches
    with torch.no_grad():
        x3 = x.clone()
        x3[:, -1] += torch.randn(DIM)  # the last patch: everyone reads it
        moved = (block.attn(x3, grid) - base).abs().amax(-1)[0]
    assert moved.min() > 1e-6


# ------------------------------------------------------------------------------ frame order

def reverse_frames(x: Tensor, grid: Grid) -> Tensor:
    patches = x[:, 1:].reshape(x.shape[0], grid.t, -1, x.shape[-1]).flip(1).reshape(x.shape[0], -1, x.shape[-1])
    return torch.cat([x[:, :1], patches], dim=1)


def test_block_alone_is_frame_permutation_equivariant() -> None:
    # Per-frame spatial softmaxes and a temporal softmax over a set: the block alone (like joint
    # attention) is blind to frame order; reversing the frames reverses its output.
    grid = Grid(4, 3, 3)
    block = make_block()
    x = torch.randn(1, 1 + grid.patches, DIM)
    with torch.no_grad():
        out, out_rev = block(x, grid), block(reverse_frames(x, grid), grid)
    assert (reverse_frames(out, grid) - out_rev).abs().max().item() < 1e-5


def run_tokens(model: nn.Module, video: Tensor) -> Tensor:
    x, grid = model.embed(video)
    for blk in model.blocks:
        x = blk(x, grid)
    return x


def test_frame_order_matters_in_the_model() -> None:
    # With the backbone's time embedding (random here, as every weight), reversing a clip's
    # frames changes the output at a patch other than by the reversal: the scheme is not
    # order-blind. With the time embedding zeroed it would be (the control).
    torch.manual_seed(2)
    model = create_model(SCHEME, size="tiny", frames=4, img_size=48, num_classes=3).eval()
    assert model.time_embed is not None
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.time_embed.normal_()
        video = torch.randn(1, 3, 4, 48, 48)
        grid = model.grid(video)
        out, out_rev = run_tokens(model, video), run_tokens(model, video.flip(2))
        per_patch = (reverse_frames(out, grid) - out_rev).abs().amax(-1)[0, 1:]
        assert per_patch.max().item() > 1e-2
        assert (model(video) - model(video.flip(2))).abs().max().item() > 1e-4
        model.time_embed.zero_()
        out, out_rev = run_tokens(model, video), run_tokens(model, video.flip(2))
        assert (reverse_frames(out, grid) - out_rev).abs().max().item() < 1e-4


# ------------------------------------------------------------------------------ FLOPs

class AtGrid(nn.Module):
    def __init__(self, block: nn.Module, grid: Grid) -> None:
        super().__init__()
        self.block, self.grid = block, grid

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x, self.grid)


def trajectory_attn_flops(dim: int, grid: Grid) -> int:
    """Multiply-adds of Q.K^T and A.V: spatial 2 N^2 hd per head (every query against the S
    patches of each of the T frames), temporal 2 N T hd per head, the CLS 2 (1 + N) hd per head."""
    n, t = grid.patches, grid.t
    return 2 * dim * (n * n + n * t + 1 + n)


def divided_attn_flops(dim: int, grid: Grid) -> int:
    n, t, s = grid.patches, grid.t, grid.h * grid.w
    return 2 * dim * (n * t + t * (1 + s) ** 2)


def test_attention_flops_equal_the_formula_and_exceed_divided() -> None:
    grid = Grid(4, 3, 5)
    n, t = grid.patches, grid.t
    x = torch.randn(1, 1 + n, DIM)
    count = count_flops(AtGrid(TrajectoryBlock(BlockArgs(DIM, HEADS), chunk_mb=1e-3), grid), (x,))
    assert not [op for op in count.unsupported if carries_work(op)], count.unsupported
    assert count.attn == trajectory_attn_flops(DIM, grid)
    # the temporal projections are linears (not attention): proj_q per patch, proj_kv per
    # patch and frame
    assert count.by_module["block.attn.proj_q"] == n * DIM * DIM
    assert count.by_module["block.attn.proj_kv"] == n * t * DIM * 2 * DIM
    assert count.attn_by_module["block.attn.proj_q"] == count.attn_by_module["block.attn.proj_kv"] == 0
    divided = count_flops(AtGrid(get_scheme("divided")(BlockArgs(DIM, HEADS)), grid), (x,))
    assert divided.attn == divided_attn_flops(DIM, grid) < count.attn


def test_model_flops_and_growth_with_frames_at_224() -> None:
    model = create_model(SCHEME, size="tiny", frames=4, img_size=64)
    assert count_model_flops(model).attn == 4 * trajectory_attn_flops(128, Grid(4, 4, 4))
    small, big = (count_model_flops(model, frames=f, img_size=224).attn for f in (2, 4))
    assert small == 4 * trajectory_attn_flops(128, Grid(2, 14, 14))
    assert 1.9 < math.log2(big / small) <= 2.0  # quadratic in frames, like joint
    # base 8x224 (dim 768): what the README reports
    assert trajectory_attn_flops(768, Grid(8, 14, 14)) == 3_798_124_032


# ------------------------------------------------------------------------------ memory

def test_chunked_sdpa_calls_and_no_full_attention_matrix(monkeypatch) -> None:
    grid, batch = Grid(5, 3, 4), 2
    s = grid.h * grid.w
    block = make_block()
    x = torch.randn(batch, 1 + grid.patches, DIM)
    with torch.no_grad():
        whole = block(x, grid)
    calls: list[tuple[torch.Size, torch.Size, object]] = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        calls.append((q.shape, k.shape, attn_mask))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    per_frame_mib = batch * s * grid.t * DIM * 4 / 2**20
    block.attn.chunk_mb = 2.5 * per_frame_mib  # two query frames per chunk: chunks of 2, 2, 1
    with torch.no_grad():
        chunked = block(x, grid)
    assert (chunked - whole).abs().max().item() < 1e-5
    assert all(mask is None for _, _, mask in calls)
    assert len(calls) == 1 + 3 * (grid.t + 1)  # CLS, then per chunk T spatial calls + 1 temporal
    assert max(q[-2] * k[-2] for q, k, _ in calls[1:]) == 2 * s * s < grid.patches ** 2 // 2  # one key frame at a time
    n = grid.patches
    computed = sum(math.prod(q[:-1]) * k[-2] for q, k, _ in calls)
    assert computed == batch * HEADS * (1 + n + n * n + n * grid.t)


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_training_score_matrix_path_equals_chunked_path_and_reference(grid: Grid, monkeypatch) -> None:
    """Small grids train through one N x N score matrix; outputs and every gradient are the
    chunked kernel calls' (and the output the naive reference's) whichever path runs."""
    torch.manual_seed(0)
    block = make_block().double()
    x = torch.randn(2, 1 + grid.patches, DIM, dtype=torch.float64)
    results = {}
    for tokens in (grid_module.MATRIX_TOKENS, 0):  # 0: every grid takes the chunked path
        monkeypatch.setattr(grid_module, "MATRIX_TOKENS", tokens)
        assert grid_module.use_matrix(grid) == bool(tokens)
        block.zero_grad()
        inputs = x.clone().requires_grad_()
        out = block(inputs, grid)
        out.pow(2).sum().backward()
        results[tokens] = (out.detach(), inputs.grad, [p.grad.clone() for p in block.parameters()])
    (matrix_out, matrix_dx, matrix_dw), (chunk_out, chunk_dx, chunk_dw) = results.values()
    assert (matrix_out - chunk_out).abs().max().item() < 1e-12
    assert (matrix_out - reference_block(block, x, grid)).abs().max().item() < 1e-10
    assert (matrix_dx - chunk_dx).abs().max().item() < 1e-10
    assert all((a - b).abs().max().item() < 1e-10 for a, b in zip(matrix_dw, chunk_dw))
    monkeypatch.setattr(grid_module, "MATRIX_TOKENS", grid.patches)
    assert grid_module.use_matrix(grid)
    with torch.no_grad():  # no autograd (inference, profiling): the chunked calls
        assert not grid_module.use_matrix(grid)


def test_chunk_plan_at_base_32x224() -> None:
    grid = Grid(32, 14, 14)
    whole = 1 * grid.patches * grid.t * 768 * 4
    assert whole == 616_562_688  # the full trajectory tensor, fp32, per clip: 0.6 GB
    frames = frames_per_chunk(1, grid, 768, 4, 128.0)
    assert frames == 6 and frames * whole // grid.t <= 128 * 2**20
    assert frames_per_chunk(64, grid, 768, 4, 128.0) == 1  # never less than one frame
    assert frames_per_chunk(1, Grid(2, 2, 2), 8, 4, 128.0) == 2  # never more than all


# ------------------------------------------------------------------------------ the scheme

def test_conformance() -> None:
    check_scheme(SCHEME)


@pytest.mark.parametrize("bad", [0, -1.0, "big", True, float("nan"), None])
def test_bad_chunk_mb_is_a_usage_error(bad) -> None:
    with pytest.raises(UsageError, match=r"chunk_mb"):
        TrajectoryBlock(BlockArgs(DIM, HEADS), chunk_mb=bad)
    with pytest.raises(UsageError, match=r"invalid chunk_mb .*positive number"):
        create_model(SCHEME, size="tiny", frames=2, img_size=32, chunk_mb=bad)


def test_registry_parameters_and_official_names() -> None:
    assert SCHEME in list_schemes()
    block = TrajectoryBlock(BlockArgs(DIM, HEADS))
    names = {name for name, _ in block.named_parameters()}
    assert {"attn.qkv.weight", "attn.proj_q.weight", "attn.proj_kv.weight", "attn.proj.weight", "norm1.weight"} <= names
    assert block.attn.proj_kv.weight.shape == (2 * DIM, DIM)
    setting = dict(size="base", frames=8, img_size=224, num_classes=400)
    extra = 12 * (3 * 768 * 768 + 3 * 768)  # proj_q and proj_kv in each of the 12 blocks
    assert count_params(SCHEME, **setting) == count_params("joint", **setting) + extra
