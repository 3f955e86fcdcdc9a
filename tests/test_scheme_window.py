"""Shifted-window attention (Video Swin) against a naive reference written from the paper.

The reference never pads, rolls or partitions: it builds one explicit mask over the real token
grid (query ``i`` sees key ``j`` iff their window indices ``(c - s) // W`` agree on every axis,
Swin's shifted partition with its wrapped regions split apart) and one explicit bias over it
(the learned table read at the pair's ``(dt, dh, dw)`` offset), then runs plain softmax attention
in float64. Nothing is imported from the scheme's module into the reference.
"""

from __future__ import annotations

import copy
import math
from itertools import product

import pytest
import torch
from torch import Tensor, nn

from vattn_cli.errors import UsageError
from vattn_cli.measure.conformance import carries_work
from vattn_cli.measure.flops import count_flops
from vattn_cli.testing import check_scheme
from vattn_cli.zoo import create_model
from vattn_cli.zoo.info import count_params
from vattn_cli.zoo.scheme import BlockArgs, Grid
from vattn_cli.zoo.schemes.joint import JointAttention
from vattn_cli.zoo.schemes.window import ShiftedWindowBlock

SCHEME = "window"
DIM, HEADS = 32, 4


def make_block(window, index: int = 0, shift: bool = True) -> ShiftedWindowBlock:
    """A block with every weight random (LayerNorms and the bias table included)."""
    block = ShiftedWindowBlock(BlockArgs(DIM, HEADS, index=index), window=window, shift=shift).eval()
    gen = torch.Generator().manual_seed(index + 7)
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.2 + isinstance(module, nn.LayerNorm))
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.2)
        table = block.attn.relative_position_bias_table
        table.copy_(torch.randn(table.shape, generator=gen))
    return block


# ------------------------------------------------------------------------- the reference

def used_window(grid: Grid, window, shifts: bool):
    """Paper + official get_window_size: an axis no longer than the window is one unshifted window."""
    size = [min(n, w) for n, w in zip(grid, window)]
    shift = [0 if (n <= w or not shifts) else w // 2 for n, w in zip(grid, window)]
    return size, shift


def reference_mask_and_bias(grid: Grid, window, shifts: bool, table: Tensor) -> tuple[Tensor, Tensor]:
    """Boolean ``[N, N]`` mask and ``[heads, N, N]`` bias over the real tokens, pair by pair."""
    size, shift = used_window(grid, window, shifts)
    coords = list(product(range(grid.t), range(grid.h), range(grid.w)))
    offsets = list(product(*(range(-(w - 1), w) for w in window)))  # the table's rows, in order
    row = {o: r for r, o in enumerate(offsets)}
    index = [[(c - s) // w for c, s, w in zip(ci, shift, size)] for ci in coords]  # window of each token
    mask = [[index[i] == index[j] for j in range(len(coords))] for i in range(len(coords))]
    rows = [[row[tuple(a - b for a, b in zip(ci, cj))] if mask[i][j] else 0 for j, cj in enumerate(coords)]
            for i, ci in enumerate(coords)]
    mask, rows = torch.tensor(mask), torch.tensor(rows)
    bias = table.double()[rows].permute(2, 0, 1) * mask  # [heads, N, N]; masked pairs get none
    return mask, bias


def manual_attention(attn: nn.Module, y: Tensor, mask: Tensor | None, bias: Tensor | None) -> Tensor:
    b, n, d = y.shape
    hd = d // HEADS
    q, k, v = attn.qkv(y).split(d, dim=-1)
    q, k, v = (z.reshape(b, n, HEADS, hd).transpose(1, 2) for z in (q, k, v))
    logits = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    out = logits.softmax(-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(b, n, d))


def reference_block(block: nn.Module, x: Tensor, grid: Grid, window, shifts: bool) -> Tensor:
    ref = copy.deepcopy(block).double()
    x = x.double()
    mask, bias = reference_mask_and_bias(grid, window, shifts, ref.attn.relative_position_bias_table.detach())
    x = x + manual_attention(ref.attn, ref.norm1(x), mask, bias)
    return x + ref.mlp(ref.norm2(x))


# ------------------------------------------------------------------------------- tests

CASES = [
    # (grid, window): a multiple of the window, not a multiple (padding on h, w / on all),
    # clipped axes, the default window, and a pad bigger than window - shift (a padded query's
    # region is padding only).
    (Grid(4, 8, 8), (2, 4, 4)),
    (Grid(4, 7, 7), (2, 4, 4)),
    (Grid(3, 5, 6), (2, 3, 4)),
    (Grid(2, 3, 5), (4, 4, 4)),
    (Grid(2, 9, 8), (8, 7, 7)),
    (Grid(1, 5, 5), (1, 4, 4)),
]


@pytest.mark.parametrize("index", [0, 1], ids=["W-MSA", "SW-MSA"])
@pytest.mark.parametrize("grid,window", CASES, ids=[f"{g.t}x{g.h}x{g.w}-w{w}" for g, w in CASES])
def test_block_equals_reference(grid: Grid, window, index: int) -> None:
    block = make_block(window, index)
    x = torch.randn(2, grid.patches, DIM)
    with torch.no_grad():
        got = block(x, grid)
    want = reference_block(block, x, grid, window, shifts=index % 2 == 1)
    assert (got.double() - want).abs().max().item() < 1e-5


def test_shift_alternates_and_can_be_turned_off() -> None:
    assert [make_block((2, 4, 4), i).shift for i in range(4)] == [(0, 0, 0), (1, 2, 2), (0, 0, 0), (1, 2, 2)]
    assert make_block((2, 4, 4), 1, shift=False).shift == (0, 0, 0)
    grid = Grid(4, 8, 8)
    x = torch.randn(1, grid.patches, DIM)
    block = make_block((2, 4, 4), 1, shift=False)
    with torch.no_grad():
        got = block(x, grid)
    want = reference_block(block, x, grid, (2, 4, 4), shifts=False)
    assert (got.double() - want).abs().max().item() < 1e-5
    # and the shift does change the result
    shifted = make_block((2, 4, 4), 1)
    shifted.load_state_dict(block.state_dict())
    with torch.no_grad():
        assert (shifted(x, grid) - got).abs().max().item() > 1e-3


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("window", [(3, 5, 6), (8, 7, 7)], ids=["exact", "larger"])
def test_one_window_is_joint_attention_plus_bias(window, index: int) -> None:
    """A window covering the grid (equal or larger: clipped, then never shifted) is joint attention."""
    grid = Grid(3, 5, 6)
    block = make_block(window, index)
    x = torch.randn(2, grid.patches, DIM)
    # joint softmax over all tokens plus the bias at every pair's offset, no mask at all
    ref = copy.deepcopy(block).double()
    coords = list(product(range(grid.t), range(grid.h), range(grid.w)))
    spans = [2 * w - 1 for w in window]
    table = ref.attn.relative_position_bias_table.detach()
    bias = torch.stack([
        torch.stack([
            table[((a[0] - b[0] + window[0] - 1) * spans[1] + a[1] - b[1] + window[1] - 1) * spans[2] + a[2] - b[2] + window[2] - 1]
            for b in coords
        ]) for a in coords
    ]).permute(2, 0, 1)
    xd = x.double()
    xd = xd + manual_attention(ref.attn, ref.norm1(xd), None, bias)
    want = xd + ref.mlp(ref.norm2(xd))
    with torch.no_grad():
        got = block(x, grid)
    assert (got.double() - want).abs().max().item() < 1e-5
    # with the table at zero it is exactly the joint scheme's block with the same weights
    with torch.no_grad():
        block.attn.relative_position_bias_table.zero_()
        joint = JointAttention(BlockArgs(DIM, HEADS)).eval()
        missing, unexpected = joint.load_state_dict(block.state_dict(), strict=False)
        assert not missing and unexpected == ["attn.relative_position_bias_table"]
        assert (block(x, grid) - joint(x, grid)).abs().max().item() < 1e-5


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("grid,window", [(Grid(3, 5, 6), (2, 3, 4)), (Grid(1, 5, 5), (1, 4, 4))])
def test_padding_never_reaches_real_tokens(grid: Grid, window, index: int) -> None:
    """Filling the padding (of q, k and v) with large random values changes no real output."""
    block = make_block(window, index)
    x = torch.randn(2, grid.patches, DIM)
    with torch.no_grad():
        clean = block(x, grid)
    pad_zero = block.pad_grid
    seen = []

    def pad_noise(z: Tensor, pad) -> Tensor:
        out = pad_zero(z, pad)
        seen.append(pad)
        filled = torch.randn_like(out) * 100
        filled[:, :z.shape[1], :z.shape[2], :z.shape[3]] = z
        return filled

    block.pad_grid = pad_noise
    with torch.no_grad():
        noisy = block(x, grid)
    assert seen and any(seen[0])
    assert (noisy - clean).abs().max().item() < 1e-5


def test_gradients_finite_with_padded_regions() -> None:
    """Shift + a pad of more than window - shift: padded queries whose region holds no real key."""
    grid, window = Grid(1, 5, 5), (1, 4, 4)
    block = make_block(window, 1).train()
    x = torch.randn(2, grid.patches, DIM, requires_grad=True)
    block(x, grid).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_parameter_count() -> None:
    """Joint's parameters (less its CLS token and CLS position slot) + one table per block."""
    for size, dim, depth, heads, window in [("tiny", 128, 4, 4, (2, 3, 4)), ("base", 768, 12, 12, (8, 7, 7))]:
        table = math.prod(2 * w - 1 for w in window)
        # the table does not depend on the grid the model is built for (the backbone's
        # position embeddings do, as for every scheme)
        for frames, img_size in [(8, 224), (4, 96)]:
            kw = {"size": size, "frames": frames, "img_size": img_size, "num_classes": 400}
            want = count_params("joint", **kw) - 2 * dim + depth * heads * table
            assert count_params(SCHEME, window=window, **kw) == want


def test_attention_flops_formula() -> None:
    """windows (padded grid) x L^2 x head_dim x 2 x heads per block; nothing uncounted."""
    window = (2, 4, 4)
    model = create_model(SCHEME, window=window, size="tiny", depth=2, frames=3, img_size=96, num_classes=10).eval()
    cfg = model.config
    video = torch.randn(1, 3, 3, 96, 96)
    count = count_flops(model, (video,))
    assert not [op for op in count.unsupported if carries_work(op)], count.unsupported
    # grid 3x6x6 -> padded 4x8x8 -> 2*2*2 windows of 2*4*4 = 32 tokens
    windows, length, head_dim = 8, 32, cfg.dim // cfg.num_heads
    assert count.attn == cfg.depth * windows * length**2 * head_dim * 2 * cfg.num_heads


@pytest.mark.parametrize("options", [
    {"window": 0}, {"window": (2, 4)}, {"window": (0, 7, 7)}, {"window": "8"}, {"window": (2.0, 4, 4)},
    {"shift": "yes"}, {"shift": 1},
])
def test_bad_options_are_usage_errors(options) -> None:
    name = next(iter(options))
    with pytest.raises(UsageError, match=rf"invalid {name} "):
        ShiftedWindowBlock(BlockArgs(DIM, HEADS), **options)


def test_int_window_means_all_axes() -> None:
    block = ShiftedWindowBlock(BlockArgs(DIM, HEADS), window=3)
    assert block.window == (3, 3, 3)
    assert block.attn.relative_position_bias_table.shape == (125, HEADS)


def test_bias_table_init() -> None:
    model = create_model(SCHEME, size="tiny", frames=4, img_size=64, num_classes=10)
    tables = torch.cat([b.attn.relative_position_bias_table.flatten() for b in model.blocks])
    assert tables.shape[0] == model.config.depth * model.config.num_heads * 15 * 13 * 13
    assert 0.018 < tables.std().item() < 0.022 and abs(tables.mean().item()) < 0.002  # trunc-normal std 0.02 (cut at +-2, as timm)


def test_conformance() -> None:
    check_scheme(SCHEME)


class SmallWindowBlock(ShiftedWindowBlock):
    """The scheme with a window smaller than the suite's 4x7x7 grid: shifted, padded windows."""

    def __init__(self, args: BlockArgs, window=(2, 4, 4), shift: bool = True) -> None:
        super().__init__(args, window=window, shift=shift)


def test_conformance_with_shifted_padded_windows() -> None:
    check_scheme(SmallWindowBlock)


def test_bias_of_a_clipped_window_uses_its_own_offsets() -> None:
    """Clipped on h and w (grid 3x2x3 under window 2x4x4): bias by the tokens' real offsets."""
    grid, window = Grid(3, 2, 3), (2, 4, 4)
    block = make_block(window, 1)
    x = torch.randn(1, grid.patches, DIM)
    with torch.no_grad():
        got = block(x, grid)
    assert (got.double() - reference_block(block, x, grid, window, shifts=True)).abs().max().item() < 1e-5
