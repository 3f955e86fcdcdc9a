"""ViViT model 4's factorised dot-product attention (scheme ``factorised_dot``).

The block is checked against a naive float64 reference written from the paper's description and
the official head split: one explicit ``N x N`` mask per head over the ``(t, h, w)`` grid (the
first half of the heads may see the patches at their own position in every frame, the second
half the patches of their own frame), a written-out masked softmax per head, the heads
concatenated and projected. Nothing is shared with the implementation.
"""

from __future__ import annotations

import math

import pytest
import torch
from einops import rearrange
from torch import Tensor, nn

from vattn_cli.errors import UsageError
from vattn_cli.measure.conformance import carries_work
from vattn_cli.measure.flops import count_flops, count_model_flops
from vattn_cli.testing import check_scheme
from vattn_cli.zoo import create_model, get_scheme
from vattn_cli.zoo.info import count_params
from vattn_cli.zoo.scheme import BlockArgs, Grid

SCHEME = "factorised_dot"
DIM, HEADS = 64, 4  # head width 16: heads 0-1 temporal, 2-3 spatial
HEAD_DIM = DIM // HEADS
GRIDS = [Grid(4, 3, 3), Grid(3, 2, 5), Grid(1, 2, 3), Grid(5, 1, 1)]


def randomise(block: nn.Module) -> nn.Module:
    """Every weight random (LayerNorms included)."""
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.weight.copy_(torch.randn_like(module.weight) * 0.1 + isinstance(module, nn.LayerNorm))
                module.bias.copy_(torch.randn_like(module.bias) * 0.1)
    return block


def make_block(scheme: str = SCHEME, dim: int = DIM, heads: int = HEADS) -> nn.Module:
    return randomise(get_scheme(scheme)(BlockArgs(dim, heads)).eval())


def tokens(grid: Grid, batch: int = 2) -> Tensor:
    return torch.randn(batch, grid.patches, DIM)


# ------------------------------------------------------------------ the reference (the spec)

def head_masks(grid: Grid, heads: int) -> Tensor:
    """``[heads, N, N]`` booleans: may query ``i`` see key ``j`` in head ``m``."""
    coords = [(t, h, w) for t in range(grid.t) for h in range(grid.h) for w in range(grid.w)]
    n = len(coords)
    masks = torch.zeros(heads, n, n, dtype=torch.bool)
    for m in range(heads):
        temporal = m < heads // 2
        for i, (ti, hi, wi) in enumerate(coords):
            for j, (tj, hj, wj) in enumerate(coords):
                masks[m, i, j] = (hi, wi) == (hj, wj) if temporal else ti == tj
    return masks


def layer_norm(z: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    mean = z.mean(-1, keepdim=True)
    var = ((z - mean) ** 2).mean(-1, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps) * weight + bias


def reference_heads(p: dict, y: Tensor, masks: Tensor) -> Tensor:
    """Each head's masked softmax attention on normalised tokens ``y``, heads concatenated."""
    qkv = y @ p["attn.qkv.weight"].T + p["attn.qkv.bias"]
    q, k, v = qkv[..., :DIM], qkv[..., DIM:2 * DIM], qkv[..., 2 * DIM:]
    out = torch.zeros_like(q)
    for m in range(HEADS):
        c = slice(m * HEAD_DIM, (m + 1) * HEAD_DIM)
        scores = q[..., c] @ k[..., c].transpose(-1, -2) / math.sqrt(HEAD_DIM)
        scores = scores.masked_fill(~masks[m], float("-inf"))
        weights = torch.exp(scores - scores.amax(-1, keepdim=True))
        weights = weights / weights.sum(-1, keepdim=True)
        out[..., c] = weights @ v[..., c]
    return out


def reference_block(block: nn.Module, x: Tensor, grid: Grid) -> Tensor:
    p = {name: value.double() for name, value in block.state_dict().items()}
    z = x.double()
    heads = reference_heads(p, layer_norm(z, p["norm1.weight"], p["norm1.bias"]), head_masks(grid, HEADS))
    z = z + heads @ p["attn.proj.weight"].T + p["attn.proj.bias"]
    hidden = layer_norm(z, p["norm2.weight"], p["norm2.bias"]) @ p["mlp.fc1.weight"].T + p["mlp.fc1.bias"]
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
    return z + hidden @ p["mlp.fc2.weight"].T + p["mlp.fc2.bias"]


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_block_equals_naive_reference(grid: Grid) -> None:
    block = make_block()
    x = tokens(grid)
    with torch.no_grad():
        got = block(x, grid)
    assert (got.double() - reference_block(block, x, grid)).abs().max().item() < 1e-5


def test_layout_and_split_are_the_officials() -> None:
    cls = get_scheme(SCHEME)
    assert cls.cls_token == "none" and cls.uses_time_embed
    assert make_block().temporal_heads == HEADS // 2
    assert get_scheme("joint")(BlockArgs(DIM, HEADS)).state_dict().keys() == make_block().state_dict().keys()


# ------------------------------------------------------------------------- properties

def identity_proj(block: nn.Module) -> nn.Module:
    with torch.no_grad():
        block.attn.proj.weight.copy_(torch.eye(DIM))
        block.attn.proj.bias.zero_()
    return block


@pytest.mark.parametrize("grid", [Grid(4, 3, 3), Grid(3, 2, 5)], ids=str)
def test_spatial_heads_are_space_and_temporal_heads_are_divideds_temporal(grid: Grid) -> None:
    block = identity_proj(make_block())
    space = identity_proj(make_block("space"))
    space.attn.load_state_dict(block.attn.state_dict())
    divided = make_block("divided")
    divided.temporal_attn.load_state_dict(block.attn.state_dict())
    with torch.no_grad():
        divided.temporal_attn.proj.weight.copy_(torch.eye(DIM))
        divided.temporal_attn.proj.bias.zero_()
    y = tokens(grid)  # tokens as the attention sees them (after norm1)
    half = HEADS // 2 * HEAD_DIM
    with torch.no_grad():
        got = block.attend(y, grid)
        in_frame = space.attend(y, grid)  # every head within the frame (no CLS given)
        lines = rearrange(y, "b (t h w) d -> (b h w) t d", t=grid.t, h=grid.h, w=grid.w)
        along_time = rearrange(divided.temporal_attn(lines), "(b h w) t d -> b (t h w) d", h=grid.h, w=grid.w)
    assert torch.allclose(got[..., half:], in_frame[..., half:], atol=1e-6, rtol=0)
    assert torch.allclose(got[..., :half], along_time[..., :half], atol=1e-6, rtol=0)
    # and the two are really different computations on these heads
    assert not torch.allclose(in_frame[..., :half], along_time[..., :half], atol=1e-3)


def test_each_head_half_sees_its_own_tokens_only() -> None:
    grid = Grid(3, 2, 2)
    block = identity_proj(make_block())
    y = tokens(grid, batch=1)
    half = HEADS // 2 * HEAD_DIM
    coords = [(t, s) for t in range(grid.t) for s in range(grid.h * grid.w)]
    with torch.no_grad():
        base = block.attend(y, grid)[0]
        for j, (tj, sj) in enumerate(coords):
            y2 = y.clone()
            y2[0, j] += torch.randn(DIM)
            moved = (block.attend(y2, grid)[0] - base).abs()
            for i, (ti, si) in enumerate(coords):
                assert (moved[i, :half].max() > 1e-5) == (si == sj), ("temporal", i, j)
                assert (moved[i, half:].max() > 1e-5) == (ti == tj), ("spatial", i, j)


def reverse_frames(x: Tensor, grid: Grid) -> Tensor:
    return x.reshape(x.shape[0], grid.t, -1, x.shape[-1]).flip(1).reshape(x.shape)


@pytest.mark.parametrize("grid", [Grid(4, 3, 3), Grid(3, 2, 5)], ids=str)
def test_the_block_is_frame_permutation_equivariant(grid: Grid) -> None:
    # Softmax attention along time is a set operation: order comes from the time embedding only.
    block = make_block()
    x = tokens(grid)
    with torch.no_grad():
        assert torch.allclose(block(reverse_frames(x, grid), grid), reverse_frames(block(x, grid), grid), atol=1e-5)


def test_frame_order_matters_with_random_weights() -> None:
    video = torch.randn(2, 3, 4, 32, 32)
    backwards = video.flip(2)
    with torch.no_grad():
        torch.manual_seed(0)
        model = create_model(SCHEME, size="tiny", frames=4, img_size=32, num_classes=5).eval()
        # fresh: the time embedding starts at zero, so the model cannot tell order yet (as joint)
        assert torch.allclose(model(video), model(backwards), atol=1e-5)
        randomise(model)
        model.time_embed.normal_(0, 0.1)
        model.pos_embed.normal_(0, 0.1)
        gap = (model(video) - model(backwards)).abs().max().item()
        assert gap > 1e-3
        torch.manual_seed(0)
        space = create_model("space", size="tiny", frames=4, img_size=32, num_classes=5).eval()
        randomise(space)
        space.pos_embed.normal_(0, 0.1)
        assert torch.allclose(space(video), space(backwards), atol=1e-5)  # space stays order-blind


# ------------------------------------------------------------------------------- FLOPs

def attention_flops(frames: int, img: int, patch: int, dim: int, heads: int, depth: int) -> int:
    """Per block: spatial heads ``T*S^2*d_h*2*(heads/2)`` plus temporal ``S*T^2*d_h*2*(heads/2)``."""
    s, hd = (img // patch) ** 2, dim // heads
    return depth * (frames * s * s * hd * 2 * (heads // 2) + s * frames * frames * hd * 2 * (heads // 2))


def test_fvcore_counts_everything_and_attention_equals_the_formula() -> None:
    model = create_model(SCHEME, size="tiny", frames=4, img_size=64).eval()
    got = count_flops(model, (torch.randn(1, 3, 4, 64, 64),))
    assert not [op for op in got.unsupported if carries_work(op)], got.unsupported
    assert got.attn == attention_flops(4, 64, 16, 128, 4, 4)


def test_attention_flops_at_other_frame_counts() -> None:
    for t in (2, 8):
        got = count_model_flops(create_model(SCHEME, size="tiny", frames=t, img_size=64))
        assert not [op for op in got.unsupported if carries_work(op)], got.unsupported
        assert got.attn == attention_flops(t, 64, 16, 128, 4, 4)


# --------------------------------------------------------------------- model and options

def test_conforms() -> None:
    check_scheme(SCHEME)


def test_parameters_are_joints_without_the_cls_token() -> None:
    # joint's CLS token and its position-embedding slot: 2 * width
    kw = {"size": "tiny", "frames": 4, "img_size": 64}
    assert count_params(SCHEME, **kw) == count_params("joint", **kw) - 2 * 128


@pytest.mark.parametrize("heads", [1, 3, 5])
def test_odd_head_counts_are_usage_errors(heads: int) -> None:
    with pytest.raises(UsageError, match=f"num_heads {heads}"):
        get_scheme(SCHEME)(BlockArgs(heads * 16, heads))


def test_no_options() -> None:
    with pytest.raises(TypeError):
        get_scheme(SCHEME)(BlockArgs(DIM, HEADS), window=2)
