"""X-ViT's space-time mixing attention (scheme ``xvit``).

The block is checked against a naive float64 reference written from the paper's Eq. 9-10 and the
official code's channel layout (the scheme's docstring): explicit loops over frames and channels
build the mixed keys and values, then explicit loops over frames and heads run a written-out
softmax. Nothing is shared with the implementation.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import Tensor, nn

from vattn_cli.errors import UsageError
from vattn_cli.measure.conformance import carries_work
from vattn_cli.measure.flops import count_flops, count_model_flops
from vattn_cli.testing import check_scheme
from vattn_cli.zoo import create_model, get_scheme
from vattn_cli.zoo.info import count_params
from vattn_cli.zoo.scheme import BlockArgs, Grid

SCHEME = "xvit"
DIM, HEADS = 64, 4  # head width 16
HEAD_DIM = DIM // HEADS


def make_block(scheme: str = SCHEME, **options) -> nn.Module:
    """A block with every weight random (LayerNorms included)."""
    block = get_scheme(scheme)(BlockArgs(DIM, HEADS), **options).eval()
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.weight.copy_(torch.randn_like(module.weight) * 0.1 + isinstance(module, nn.LayerNorm))
                module.bias.copy_(torch.randn_like(module.bias) * 0.1)
    return block


def tokens(grid: Grid, batch: int = 2) -> Tensor:
    return torch.randn(batch, grid.t * (1 + grid.h * grid.w), DIM)


# ------------------------------------------------------------------ the reference (the spec)

def source_offset(j: int, fold: int, window: int) -> int:
    """Channel ``j`` of a group: block ``j // fold`` of the first ``2*window`` blocks reads frame
    offset ``+1, -1, +2, -2, ...``; every later channel is the frame's own (offset 0)."""
    if fold == 0 or j // fold >= 2 * window:
        return 0
    i = j // fold
    return (i // 2 + 1) * (1 if i % 2 == 0 else -1)


def layer_norm(z: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    mean = z.mean(-1, keepdim=True)
    var = ((z - mean) ** 2).mean(-1, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps) * weight + bias


def reference_block(block: nn.Module, x: Tensor, grid: Grid, mix: float, window: int, split: str) -> Tensor:
    p = {name: value.double() for name, value in block.state_dict().items()}
    b, t_, n = x.shape[0], grid.t, 1 + grid.h * grid.w
    z = x.double().reshape(b, t_, n, DIM)
    y = layer_norm(z, p["norm1.weight"], p["norm1.bias"])
    qkv = y @ p["attn.qkv.weight"].T + p["attn.qkv.bias"]
    q, k, v = qkv[..., :DIM], qkv[..., DIM:2 * DIM], qkv[..., 2 * DIM:]

    width = DIM if split == "channels" else HEAD_DIM
    fold = math.floor(mix * width + 1e-9)
    k_mix, v_mix = torch.zeros_like(k), torch.zeros_like(v)
    for t in range(t_):
        for c in range(DIM):
            src = t + source_offset(c % width, fold, window)
            if 0 <= src < t_:  # outside the clip: zeros
                k_mix[:, t, :, c] = k[:, src, :, c]
                v_mix[:, t, :, c] = v[:, src, :, c]

    out = torch.zeros_like(q)
    for t in range(t_):  # each query against the keys of its own frame only
        for h in range(HEADS):
            c = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
            scores = q[:, t, :, c] @ k_mix[:, t, :, c].transpose(-1, -2) / math.sqrt(HEAD_DIM)
            weights = torch.exp(scores - scores.amax(-1, keepdim=True))
            weights = weights / weights.sum(-1, keepdim=True)
            out[:, t, :, c] = weights @ v_mix[:, t, :, c]
    z = z + out @ p["attn.proj.weight"].T + p["attn.proj.bias"]
    hidden = layer_norm(z, p["norm2.weight"], p["norm2.bias"]) @ p["mlp.fc1.weight"].T + p["mlp.fc1.bias"]
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
    z = z + hidden @ p["mlp.fc2.weight"].T + p["mlp.fc2.bias"]
    return z.reshape(b, t_ * n, DIM)


OPTION_SETS = [
    {},  # mix 1/4 per side over all channels: one whole head from t+1, one from t-1
    {"mix": 0.125},  # 8 channels: half a head from each side
    {"mix": 0.2},  # floor(12.8) = 12 channels, not a head multiple
    {"split": "head"},  # 4 channels per head from each side
    {"mix": 0.3, "split": "head"},  # floor(4.8) = 4 per head
    {"mix": 0.125, "window": 2},  # t+1, t-1, t+2, t-2 each 8 channels
    {"mix": 0.5},  # every channel borrowed (the paper's rho = 100%)
]


@pytest.mark.parametrize("grid", [Grid(4, 3, 3), Grid(3, 2, 5), Grid(1, 2, 2), Grid(2, 3, 2)], ids=str)
@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_block_equals_naive_reference(grid: Grid, options: dict) -> None:
    block = make_block(**options)
    x = tokens(grid)
    with torch.no_grad():
        got = block(x, grid)
    want = reference_block(block, x, grid, options.get("mix", 0.25), options.get("window", 1), options.get("split", "channels"))
    assert (got.double() - want).abs().max().item() < 1e-5


def test_defaults_are_the_papers() -> None:
    block = make_block()
    assert (block.mix, block.window, block.split) == (0.25, 1, "channels")
    assert block.cls_token == "per_frame" and block.uses_time_embed


# ------------------------------------------------------------------------- properties

@pytest.mark.parametrize("options", [{"mix": 0}, {"window": 0}, {"mix": 0, "split": "head"}])
@pytest.mark.parametrize("grid", [Grid(4, 3, 3), Grid(3, 2, 5)], ids=str)
def test_without_mixed_channels_it_is_space(options: dict, grid: Grid) -> None:
    block = make_block(**options)
    space = get_scheme("space")(BlockArgs(DIM, HEADS)).eval()
    space.load_state_dict(block.state_dict())  # the same parameter names: norm1, attn, norm2, mlp
    x = tokens(grid)
    with torch.no_grad():
        y = block.norm1(x)
        assert torch.allclose(block.attend(y, grid), space.attend(y, grid), atol=1e-6, rtol=0)
        assert torch.allclose(block(x, grid), space(x, grid), atol=1e-6, rtol=0)


@pytest.mark.parametrize("split", ["channels", "head"])
@pytest.mark.parametrize("window", [1, 2])
def test_borrowed_channels_at_the_clip_borders_are_zero(split: str, window: int) -> None:
    grid, mix = Grid(5, 2, 3), 0.125
    block = make_block(mix=mix, window=window, split=split)
    x = tokens(grid)
    with torch.no_grad():
        _, k, v = block.qkv_mixed(x, grid)  # [B*T, heads, N, d_h]
        raw = block.attn.qkv(x).reshape(2, grid.t, -1, 3, DIM)  # the unmixed keys and values
    width = DIM if split == "channels" else HEAD_DIM
    fold = math.floor(mix * width)
    for name, mixed, unmixed in (("k", k, raw[:, :, :, 1]), ("v", v, raw[:, :, :, 2])):
        mixed = mixed.reshape(2, grid.t, HEADS, -1, HEAD_DIM).transpose(2, 3).reshape(2, grid.t, -1, DIM)
        for t in range(grid.t):
            for c in range(DIM):
                j = c % width
                offset = (j // fold // 2 + 1) * (1 if (j // fold) % 2 == 0 else -1) if j < 2 * window * fold else 0
                src = t + offset
                if 0 <= src < grid.t:
                    assert torch.equal(mixed[:, t, :, c], unmixed[:, src, :, c]), (name, t, c)
                else:  # a frame outside the clip: zero keys and values (the CLS token's too)
                    assert not mixed[:, t, :, c].any(), (name, t, c)
        # the first frame has exactly window*fold zero channels per group (from t-1 .. t-window)
        zero_first = (mixed[:, 0] == 0).all(0).all(0).sum().item()
        assert zero_first == window * fold * (DIM // width)


@pytest.mark.parametrize("window", [1, 2])
def test_one_block_reaches_window_frames_each_side(window: int) -> None:
    grid = Grid(6, 2, 2)
    n = 1 + grid.h * grid.w
    block = make_block(mix=0.125, window=window)
    x = tokens(grid, batch=1)
    with torch.no_grad():
        base = block(x, grid).reshape(grid.t, n, DIM)
        for j in range(grid.t):
            x2 = x.clone().reshape(grid.t, n, DIM)
            x2[j] += torch.randn(n, DIM)
            moved = (block(x2.reshape(1, -1, DIM), grid).reshape(grid.t, n, DIM) - base).abs().amax((1, 2))
            for t in range(grid.t):
                if abs(t - j) <= window:
                    assert moved[t] > 1e-4, (t, j)
                else:
                    assert moved[t] == 0, (t, j)


def reverse_frames(x: Tensor, grid: Grid) -> Tensor:
    return x.reshape(x.shape[0], grid.t, -1, DIM).flip(1).reshape(x.shape)


@pytest.mark.parametrize("grid", [Grid(4, 3, 3), Grid(3, 2, 5)], ids=str)
def test_frame_order_matters_unlike_space(grid: Grid) -> None:
    x = tokens(grid)
    with torch.no_grad():
        space = make_block("space")
        assert torch.allclose(space(reverse_frames(x, grid), grid), reverse_frames(space(x, grid), grid), atol=1e-6)
        for options in ({}, {"split": "head"}, {"mix": 0.125, "window": 2}):
            xvit = make_block(**options)
            gap = (xvit(reverse_frames(x, grid), grid) - reverse_frames(xvit(x, grid), grid)).abs().max()
            assert gap > 1e-3, options


def test_a_fresh_model_tells_a_clip_from_its_reversal() -> None:
    # The temporal embedding starts at zero, so at initialisation only the mixing sees order.
    video = torch.randn(2, 3, 4, 32, 32)
    backwards = video.flip(2)
    with torch.no_grad():
        for scheme, options, order_blind in ((SCHEME, {}, False), (SCHEME, {"mix": 0}, True), ("space", {}, True)):
            torch.manual_seed(0)
            model = create_model(scheme, size="tiny", frames=4, img_size=32, num_classes=5, **options).eval()
            same = torch.allclose(model(video), model(backwards), atol=1e-5)
            assert same == order_blind, (scheme, options)


# ------------------------------------------------------------------------------- FLOPs

def attention_flops(frames: int, img: int, patch: int, dim: int, depth: int) -> int:
    """Each frame's 1 + S tokens against themselves: Q.K^T plus A.V, ``2 * T * (1+S)^2 * D``."""
    n = 1 + (img // patch) ** 2
    return depth * 2 * frames * n * n * dim


def test_fvcore_counts_everything_and_attention_equals_space() -> None:
    video = torch.randn(1, 3, 4, 64, 64)
    xvit = create_model(SCHEME, size="tiny", frames=4, img_size=64).eval()
    space = create_model("space", size="tiny", frames=4, img_size=64).eval()
    got, ref = count_flops(xvit, (video,)), count_flops(space, (video,))
    assert not [op for op in got.unsupported if carries_work(op)], got.unsupported
    assert got.attn == ref.attn == attention_flops(4, 64, 16, 128, 4)
    assert got.total == ref.total  # the mixing is data movement: nothing else changes either


@functools.lru_cache(maxsize=None)
def space_flops():
    return count_model_flops(create_model("space", size="tiny", frames=4, img_size=64))


@pytest.mark.parametrize("options", [{"split": "head"}, {"mix": 0.125, "window": 2}, {"mix": 0.5}, {"mix": 0}])
def test_attention_flops_equal_space_at_every_option(options: dict) -> None:
    got = count_model_flops(create_model(SCHEME, size="tiny", frames=4, img_size=64, **options))
    ref = space_flops()
    assert not [op for op in got.unsupported if carries_work(op)], got.unsupported
    assert (got.attn, got.total) == (ref.attn, ref.total)
    assert got.attn == attention_flops(4, 64, 16, 128, 4)


def test_attention_flops_grow_linearly_with_frames() -> None:
    attn = {t: count_model_flops(create_model(SCHEME, size="tiny", frames=t, img_size=64)).attn for t in (2, 4, 8)}
    assert attn[4] == 2 * attn[2] and attn[8] == 2 * attn[4]
    assert attn[8] == attention_flops(8, 64, 16, 128, 4)


# --------------------------------------------------------------------- model and options

def test_conforms() -> None:
    check_scheme(SCHEME)


def test_parameters_are_spaces_plus_the_time_embedding() -> None:
    assert count_params(SCHEME, size="tiny", frames=4, img_size=64) == count_params("space", size="tiny", frames=4, img_size=64) + 4 * 128


@pytest.mark.parametrize(
    "options, match",
    [
        ({"mix": -0.1}, "mix -0.1"),
        ({"mix": 0.6}, "mix 0.6"),
        ({"mix": "1/4"}, "mix '1/4'"),
        ({"mix": True}, "mix True"),
        ({"mix": 0.25, "window": 3}, "window 3"),
        ({"mix": 0.001}, "borrows no channel"),
        ({"mix": 0.01, "split": "head"}, "borrows no channel"),
        ({"window": -1}, "window -1"),
        ({"window": 1.5}, "window 1.5"),
        ({"split": "pixel"}, "accepted: channels, head"),
    ],
)
def test_bad_options_are_usage_errors(options: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        create_model(SCHEME, size="tiny", frames=2, img_size=32, **options)
