"""TimeSformer's sparse local-global (L+G) and axial (T+W+H) schemes.

Each scheme is checked against an independent reference that runs the same weights through
plain softmax attention written out here (no SDPA, no einops): L+G as joint attention with an
explicit boolean mask built coordinate by coordinate from the docstring's definition, axial as
explicit loops over every time line, row and column.
"""

from __future__ import annotations

import math
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vattn_cli.zoo import create_model, get_scheme, list_schemes
from vattn_cli.zoo.info import count_params
from vattn_cli.zoo.scheme import BlockArgs, Grid

DIM, HEADS = 32, 4
GRIDS = [Grid(1, 1, 1), Grid(2, 3, 5), Grid(3, 5, 4), Grid(4, 4, 4), Grid(3, 7, 6), Grid(1, 5, 5), Grid(5, 2, 3)]


def coords(grid: Grid) -> list[tuple[int, int, int]]:
    return [(t, h, w) for t in range(grid.t) for h in range(grid.h) for w in range(grid.w)]


def manual_attention(attn: nn.Module, x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Multi-head softmax attention of ``x [B, L, D]`` with ``attn``'s weights, written out."""
    b, n, d = x.shape
    hd = d // HEADS
    q, k, v = attn.qkv(x).split(d, dim=-1)
    q, k, v = (z.reshape(b, n, HEADS, hd).transpose(1, 2) for z in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    out = scores.softmax(-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(b, n, d))


# ---------------------------------------------------------------- who attends to whom (the spec)

def window(n: int, i: int) -> range:
    """Docstring: ceil(n/2) consecutive positions, centred on i (extra one after), kept inside."""
    k = math.ceil(n / 2)
    lo = max(0, min(i - (k - 1) // 2, n - k))
    return range(lo, lo + k)


def local_mask(grid: Grid) -> Tensor:
    pts = coords(grid)
    mask = torch.zeros(len(pts), len(pts), dtype=torch.bool)
    for i, (_, h, w) in enumerate(pts):
        for j, (_, h2, w2) in enumerate(pts):
            mask[i, j] = h2 in window(grid.h, h) and w2 in window(grid.w, w)
    return mask


def global_mask(grid: Grid) -> Tensor:
    """CLS (index 0) attends to all and is attended by all; patches: same (t, h, w) parity."""
    pts = coords(grid)
    mask = torch.ones(1 + len(pts), 1 + len(pts), dtype=torch.bool)
    for i, a in enumerate(pts):
        for j, b in enumerate(pts):
            mask[1 + i, 1 + j] = all(x % 2 == y % 2 for x, y in zip(a, b))
    return mask


def axis_mask(grid: Grid, axis: str) -> Tensor:
    """Dependence of outputs on inputs for one axial step, over ``[CLS, patches]``."""
    keep = {"t": (1, 2), "w": (0, 1), "h": (0, 2)}[axis]  # coordinates a line shares
    pts = coords(grid)
    mask = torch.zeros(1 + len(pts), 1 + len(pts), dtype=torch.bool)
    for i, a in enumerate(pts):
        for j, b in enumerate(pts):
            mask[1 + i, 1 + j] = all(a[c] == b[c] for c in keep)
    if axis != "t":  # CLS joins every line: it reads all patches and every patch reads it
        mask[0, :] = True
        mask[:, 0] = True
    return mask


# --------------------------------------------------------------------------- references

def reference_local_global(block: nn.Module, x: Tensor, grid: Grid) -> Tensor:
    cls, patches = x[:, :1], x[:, 1:]
    patches = patches + block.local_fc(manual_attention(block.local_attn, block.local_norm1(patches), local_mask(grid)))
    x = torch.cat([cls, patches], dim=1)
    x = x + manual_attention(block.attn, block.norm1(x), global_mask(grid))
    return x + block.mlp(block.norm2(x))


def reference_axial(block: nn.Module, x: Tensor, grid: Grid) -> Tensor:
    t_, h_, w_ = grid
    index = {p: 1 + i for i, p in enumerate(coords(grid))}
    lines = {
        "t": [[index[(t, h, w)] for t in range(t_)] for h in range(h_) for w in range(w_)],
        "w": [[index[(t, h, w)] for w in range(w_)] for t in range(t_) for h in range(h_)],
        "h": [[index[(t, h, w)] for h in range(h_)] for t in range(t_) for w in range(w_)],
    }
    steps = [
        ("t", block.temporal_norm1, block.temporal_attn, block.temporal_fc),
        ("w", block.width_norm1, block.width_attn, block.width_fc),
        ("h", block.norm1, block.attn, nn.Identity()),
    ]
    for axis, norm, attn, fc in steps:
        y = norm(x)
        res = torch.zeros_like(x)
        cls_outs = []
        for line in lines[axis]:
            if axis == "t":
                res[:, line] = manual_attention(attn, y[:, line])
            else:
                out = manual_attention(attn, y[:, [0] + line])
                res[:, line] = out[:, 1:]
                cls_outs.append(out[:, :1])
        if cls_outs:
            res[:, :1] = torch.stack(cls_outs).mean(0)
            x = x + fc(res)
        else:  # CLS takes no part in the time step: nothing is added to it
            x = torch.cat([x[:, :1], x[:, 1:] + fc(res[:, 1:])], dim=1)
    return x + block.mlp(block.norm2(x))


REFERENCES = {"local_global": reference_local_global, "axial": reference_axial}


def make_block(scheme: str) -> nn.Module:
    """A block with every weight random (LayerNorms and the zero-initialised fc's included)."""
    block = get_scheme(scheme)(BlockArgs(DIM, HEADS)).eval()
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.weight.copy_(torch.randn_like(module.weight) * 0.1 + isinstance(module, nn.LayerNorm))
                module.bias.copy_(torch.randn_like(module.bias) * 0.1)
    return block


# --------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("grid", GRIDS, ids=str)
@pytest.mark.parametrize("scheme", ["local_global", "axial"])
def test_block_equals_explicit_reference(scheme: str, grid: Grid) -> None:
    block = make_block(scheme)
    x = torch.randn(2, 1 + grid.patches, DIM)
    with torch.no_grad():
        got, want = block(x, grid), REFERENCES[scheme](block, x, grid)
    assert (got - want).abs().max().item() < 1e-5


def dependence(step, n_tokens: int) -> Tensor:
    """``max |d out_i|`` when input token ``j`` alone changes, for every ``i, j``."""
    x = torch.randn(1, n_tokens, DIM)
    with torch.no_grad():
        base = step(x)
        rows = []
        for j in range(n_tokens):
            x2 = x.clone()
            x2[0, j] += torch.randn(DIM)
            rows.append((step(x2) - base).abs().amax(-1)[0])
    return torch.stack(rows, dim=1)  # [outputs, inputs]


def assert_pattern(change: Tensor, mask: Tensor) -> None:
    assert change.shape == mask.shape
    assert (change * ~mask).max().item() < 1e-6, "an output moved when a token outside its set changed"
    assert change[mask].min().item() > 1e-4, "an output did not move when a token inside its set changed"


@pytest.mark.parametrize("grid", [Grid(3, 5, 4), Grid(2, 6, 3)], ids=str)
def test_local_global_attention_pattern(grid: Grid) -> None:
    block = make_block("local_global")
    mask = local_mask(grid)
    kh, kw = math.ceil(grid.h / 2), math.ceil(grid.w / 2)
    assert (mask.sum(1) == grid.t * kh * kw).all() and mask.diagonal().all()  # T x H/2 x W/2, self included
    assert_pattern(dependence(lambda x: block.local_attention(x, grid), grid.patches), mask)
    assert_pattern(dependence(lambda x: block.global_attention(x, grid), 1 + grid.patches), global_mask(grid))


@pytest.mark.parametrize("axis", ["t", "w", "h"])
def test_axial_attention_pattern(axis: str) -> None:
    grid = Grid(3, 4, 5)
    block = make_block("axial")

    def step(x: Tensor) -> Tensor:
        cls_out, out = block.attend_axis(axis, None if axis == "t" else x[:, :1], x[:, 1:], grid)
        return torch.cat([torch.zeros_like(x[:, :1]) if cls_out is None else cls_out, out], dim=1)

    assert_pattern(dependence(step, 1 + grid.patches), axis_mask(grid, axis))


@pytest.mark.parametrize("scheme", ["local_global", "axial"])
def test_attention_is_mask_free_and_computes_exactly_the_allowed_scores(scheme: str, monkeypatch) -> None:
    # Memory stays bounded: every SDPA call is unmasked, and the scores computed over all calls
    # are exactly the allowed (query, key) pairs, so no N x N matrix is ever formed.
    grid, batch = Grid(4, 7, 6), 2
    calls: list[tuple[torch.Size, torch.Size, object]] = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        calls.append((q.shape, k.shape, attn_mask))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    block = make_block(scheme)
    with torch.no_grad():
        block(torch.randn(batch, 1 + grid.patches, DIM), grid)
    assert calls and all(mask is None for _, _, mask in calls)
    computed = sum(q[:-1].numel() * k[-2] for q, k, _ in calls)
    if scheme == "local_global":
        allowed = local_mask(grid).sum() + global_mask(grid).sum()
    else:  # CLS repeated into each row and column: (1 + line)^2 scores per line
        t, h, w = grid
        allowed = h * w * t * t + t * h * (1 + w) ** 2 + t * w * (1 + h) ** 2
    assert computed == batch * HEADS * int(allowed)
    n = 1 + grid.patches
    assert max(q[-2] * k[-2] for q, k, _ in calls) < n * n // 2


def test_parameter_counts_at_base() -> None:
    setting = dict(size="base", frames=8, img_size=224, num_classes=400)
    divided, joint = count_params("divided", **setting), count_params("joint", **setting)
    # L+G: the local step carries divided's temporal parameters (the paper: 121.4M for both).
    assert count_params("local_global", **setting) == divided == 121_566_352
    # Axial: two extra steps, each with norm, Q/K/V, projection and fc (the paper: 156.8M).
    assert count_params("axial", **setting) == joint + 2 * (divided - joint) == 157_020_304


@pytest.mark.parametrize("scheme", ["local_global", "axial"])
def test_model_forward_backward_and_registry(scheme: str) -> None:
    assert scheme in list_schemes()
    model = create_model(scheme, size="tiny", frames=3, img_size=80, num_classes=5)
    fcs = [p for name, p in model.named_parameters() if name.endswith(("local_fc.weight", "temporal_fc.weight"))]
    assert fcs and all((p == 0).all() for p in fcs)  # zero-initialised added branches
    video = torch.randn(2, 3, 3, 80, 48)  # 5 x 3 patches: odd, unequal sides
    loss = model(video).logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fcs)
    assert model.eval()(torch.randn(1, 3, 5, 64, 96)).shape == (1, 5)  # other frames/resolution
    assert bool(torch.isfinite(model(video)).all())


def test_grid_index_sanity() -> None:
    # The reference's layout is the backbone's: (t, h, w) frame-major, row-major.
    grid = Grid(2, 3, 4)
    assert coords(grid)[: 5] == [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 0, 3), (0, 1, 0)]
    assert list(window(14, 0)) == list(range(7)) and list(window(14, 13)) == list(range(7, 14))
    assert list(window(14, 6)) == list(range(3, 10)) and list(window(1, 0)) == [0]
    assert list(window(4, 1)) == [1, 2] and list(window(5, 4)) == [2, 3, 4]
