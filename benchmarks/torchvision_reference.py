"""Outside check of ``window`` and ``pooled`` against torchvision's own modules (run once, not in CI).

torchvision's ``ShiftedWindowAttention3d`` (Swin3D, ``torchvision.models.video.swin_transformer``)
and ``MultiscaleAttention`` (MViTv2, ``torchvision.models.video.mvit``) get the same weights and
the same input as vattn's attention modules, at module level, where the isotropic setting is
torchvision's block; the script prints the largest absolute output difference of each case and
what explains it. Everything runs in float64 on the CPU, at tiny widths and grids (seconds).

torchvision does not import beside the project's torch build, so this runs in an environment of
its own (vattn's zoo needs only torch and einops)::

    python3 -m venv /tmp/tv
    /tmp/tv/bin/pip install torch==2.14.1 torchvision==0.29.1 einops numpy
    PYTHONPATH=. /tmp/tv/bin/python benchmarks/torchvision_reference.py

What to expect (every non-zero line is one of these; each but the last is confirmed by a second
line that removes that one cause and gets back to rounding, ~1e-15):

window (torchvision follows the official Video Swin code: pad with zeros, roll by -shift,
partition, mask from three slices per axis of the padded grid with -100, roll back, crop; the
window and shift are clipped per call exactly as vattn's ``clip_window``):

* no shift / shift, grid a multiple of the window: equal. vattn's ``-inf`` against torchvision's
  ``-100`` changes nothing at ordinary logits (exp(-100) ~ 4e-44 next to 1); only when logits
  spread by ~100 (weights scaled up here) does torchvision's masked region leak into the softmax.
* padded grid: torchvision's zero-padded tokens are keys and values (their k and v are the qkv
  biases) of the real tokens of border windows; vattn masks them out. Windows without padding
  are equal; windows with padding differ (deliberate: padding never reaches real tokens).
* window clipped on the leading (time) axis only: equal (the official ``index[:N, :N]`` is right).
  Clipped on h or w: torchvision reads ``relative_position_index[:N, :N]``, the offsets of the
  *full* window's first N tokens, which are not the clipped window's; vattn reads the clipped
  window's own offsets. Equal once the bias table is zero, and vattn's index is the full-window
  index restricted to the clipped window's tokens (deliberate: torchvision's bias is wrong there).

pooled (torchvision ``MultiscaleAttention`` with ``kernel_q=[1,1,1]`` (no query pooling; or
vattn's kernel with ``pool_q``), ``stride_q=[1,1,1]``, ``kernel_kv``/``stride_kv`` vattn's,
``residual_pool=True``, ``residual_with_cls_embed=False`` (residual on patch queries only, as
official MViTv2 and torchvision's ``mvit_v2_s``), ``rel_pos_embed=True`` and LayerNorm eps 1e-6
(torchvision's default ``nn.LayerNorm`` has eps 1e-5; ``mvit_v2_s`` passes 1e-6); the input is
``[B, 1 + N, C]`` with the CLS token first, as vattn's ``cls_token = "shared"``):

* square grids, divisible or not by the stride, pool_q, a clip grid other than the one the tables
  are sized for (vattn's ``rel_pos_grid``, torchvision's ``input_size``; default 8 x 14 x 14;
  interpolated linearly in both), queries chunked by frames: equal.
* the relative offset along an axis: torchvision rewrote the official ``cal_rel_pos_spatial``
  arithmetic as ``i*qr - (j + 1 - n_k)*kr``; in float32 that truncates to another table row than
  the official ``i*qr - j*kr + (n_k - 1)*kr`` at some size pairs (16 queries, 6 pooled keys: stride 3
  at 16 x 16). vattn keeps the official rows (documented); equal with torchvision's rows patched in.
* non-square grids: torchvision sizes ``rel_pos_h`` and ``rel_pos_w`` from ``max(H, W)`` and
  interpolates the h table at every call; vattn sizes each axis from its own length (docstring).
  With vattn's per-axis tables put into torchvision's module (no interpolation) they are equal.
* kernel 1 and stride 1: torchvision has no pooling at all (no convolution, no ``norm_k/v``);
  vattn keeps its convolutions and norms (same parameters at every grid, documented). Different
  even with the convolution set to the identity, because of the norms.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from functools import partial

try:
    import torchvision
    from torchvision.models.video import swin_transformer as tv_swin
    from torchvision.models.video.mvit import MultiscaleAttention
    from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d
except Exception as error:  # noqa: BLE001 - ImportError, or a torchvision built for another torch
    sys.exit(f"torchvision is not usable here ({type(error).__name__}: {error}); see the top of "
             "benchmarks/torchvision_reference.py for the environment to run this in")

import torch
from torch import nn

from vattn_cli.zoo.scheme import BlockArgs, Grid
from vattn_cli.zoo.schemes import pooled as pooled_module
from vattn_cli.zoo.schemes.pooled import PooledAttention
from vattn_cli.zoo.schemes.window import ShiftedWindowBlock, relative_index

DTYPE = torch.float64
DIM, HEADS = 16, 2


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def row(label: str, diff: float, note: str) -> None:
    print(f"  {label:<58} {diff:9.2e}  {note}")


# ------------------------------------------------------------------------------------ window

def window_pair(window, shifted: bool, seed: int = 0):
    """vattn's window block (its ``attend`` is the attention module) and torchvision's module, same weights."""
    torch.manual_seed(seed)
    ours = ShiftedWindowBlock(BlockArgs(DIM, HEADS, index=1 if shifted else 0), window=window).eval().to(DTYPE)
    theirs = ShiftedWindowAttention3d(DIM, list(window), list(ours.shift), HEADS).eval().to(DTYPE)
    with torch.no_grad():
        for p in ours.attn.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        # same names and layouts: qkv rows (3, heads, head_dim), table [(2Wt-1)(2Wh-1)(2Ww-1), heads]
        # indexed (dt, dh, dw) query minus key, t slowest, in both
        theirs.qkv.load_state_dict(ours.attn.qkv.state_dict())
        theirs.proj.load_state_dict(ours.attn.proj.state_dict())
        theirs.relative_position_bias_table.copy_(ours.attn.relative_position_bias_table)
    return ours, theirs


def run_window(ours, theirs, grid: Grid, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, grid.patches, DIM, generator=gen, dtype=DTYPE)
    with torch.no_grad():
        a = ours.attend(x, grid)
        b = theirs(x.view(2, *grid, DIM)).reshape(2, grid.patches, DIM)
    return a, b


def padded_window_tokens(grid: Grid, window, shift) -> torch.Tensor:
    """Boolean ``[N]``: tokens whose (shifted) window holds padding (in torchvision's padded grid)."""
    size = [min(n, w) for n, w in zip(grid, window)]
    shift = [0 if n <= w else s for n, w, s in zip(grid, window, shift)]
    padded = [-(-n // w) * w for n, w in zip(grid, size)]
    coords = torch.stack(torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij"), -1).view(-1, 3)
    hit = torch.zeros(grid.patches, dtype=torch.bool)
    # a window along an axis (rolled coordinates) is [i*W, (i+1)*W); clip coordinate c sits at (c - s) mod P
    for axis in range(3):
        n, w, s, p = grid[axis], size[axis], shift[axis], padded[axis]
        if p == n:
            continue
        pos = (coords[:, axis] - s) % p
        start = pos // w * w
        members = (start[:, None] + torch.arange(w)[None, :] + s) % p  # clip coordinates of the window
        hit |= (members >= n).any(1)
    return hit


@contextmanager
def torchvision_mask_like_vattn(grid: Grid | None = None):
    """torchvision's shifted-window mask with ``-inf`` for its ``-100`` and, given the clip ``grid``,
    padded keys masked out of real queries (vattn's rule): removes those two causes only."""
    official = tv_swin._compute_attention_mask_3d

    def mask(x, size_dhw, window_size, shift_size):
        m = official(x, size_dhw, window_size, shift_size)
        m = m.masked_fill(m != 0, float("-inf"))
        if grid is None:
            return m
        # rolled position r holds clip coordinate (r + s) mod P: real iff that is inside the grid
        real = [(torch.arange(p) + s) % p < n for p, s, n in zip(size_dhw, shift_size, grid)]
        real = (real[0][:, None, None] & real[1][None, :, None] & real[2][None, None, :])
        wt, wh, ww = window_size
        real = real.view(size_dhw[0] // wt, wt, size_dhw[1] // wh, wh, size_dhw[2] // ww, ww)
        real = real.permute(0, 2, 4, 1, 3, 5).reshape(m.shape[0], -1)  # torchvision's window order
        return m.masked_fill(real[:, :, None] & ~real[:, None, :], float("-inf"))

    tv_swin._compute_attention_mask_3d = mask
    try:
        yield
    finally:
        tv_swin._compute_attention_mask_3d = official


def check_window() -> None:
    print("window: vattn ShiftedWindowBlock.attend vs torchvision ShiftedWindowAttention3d (float64)")
    window = (2, 3, 3)

    for label, grid, shifted in [("(a) grid 4x6x6, window 2x3x3, no shift", Grid(4, 6, 6), False),
                                 ("(b) grid 4x6x6, window 2x3x3, shift 1x1x1", Grid(4, 6, 6), True)]:
        ours, theirs = window_pair(window, shifted)
        row(label, maxdiff(*run_window(ours, theirs, grid)), "equal (rounding)")

    ours, theirs = window_pair(window, True)
    with torch.no_grad():  # logits spread by hundreds: -100 no longer excludes the other region
        ours.attn.qkv.weight[:2 * DIM] *= 12
        theirs.qkv.weight.copy_(ours.attn.qkv.weight)
    row("(b') as (b), q and k weights x12 (logits x144)", maxdiff(*run_window(ours, theirs, Grid(4, 6, 6))),
        "torchvision's -100 mask leaks; vattn's -inf does not")
    with torchvision_mask_like_vattn():
        row("    same, torchvision's mask -inf instead of -100", maxdiff(*run_window(ours, theirs, Grid(4, 6, 6))),
            "equal (rounding at logits x144)")

    for label, shifted in [("(c) grid 3x5x7 (padded to 4x6x9), no shift", False),
                           ("(c') grid 3x5x7 (padded to 4x6x9), shift 1x1x1", True)]:
        grid = Grid(3, 5, 7)
        ours, theirs = window_pair(window, shifted)
        a, b = run_window(ours, theirs, grid)
        border = padded_window_tokens(grid, window, ours.shift)
        row(label, maxdiff(a, b), "padded tokens are torchvision's keys, never vattn's")
        row(f"    tokens of windows without padding ({int((~border).sum())}/{grid.patches})",
            maxdiff(a[:, ~border], b[:, ~border]), "equal")
        row(f"    tokens of windows with padding ({int(border.sum())}/{grid.patches})",
            maxdiff(a[:, border], b[:, border]), "all of the difference")
        if shifted:  # torchvision builds a mask only when shifting
            with torchvision_mask_like_vattn(grid):
                row("    same, torchvision's mask also excluding padded keys", maxdiff(*run_window(ours, theirs, grid)),
                    "equal")

    ours, theirs = window_pair(window, True)
    row("(d) grid 1x6x6: window clipped to 1x3x3 (time), shift 0x1x1",
        maxdiff(*run_window(ours, theirs, Grid(1, 6, 6))), "equal: index[:N, :N] right for the leading axis")

    grid = Grid(4, 2, 6)
    ours, theirs = window_pair(window, True)
    row("(e) grid 4x2x6: window clipped to 2x2x3 (rows), shift 1x0x1",
        maxdiff(*run_window(ours, theirs, grid)), "torchvision's clipped bias reads other pairs' offsets")
    with torch.no_grad():
        ours.attn.relative_position_bias_table.zero_()
        theirs.relative_position_bias_table.zero_()
    row("    same, bias tables zero", maxdiff(*run_window(ours, theirs, grid)), "equal: only the bias differs")
    size = (2, 2, 3)
    full = theirs.relative_position_index  # [18, 18] over the full 2x3x3 window
    inside = torch.tensor([t * 9 + h * 3 + w for t in range(2) for h in range(2) for w in range(3)])
    own = full[inside][:, inside].flatten()
    ours_index = relative_index(window, size, torch.device("cpu"))
    print(f"    vattn index == full-window index restricted to the clipped window's tokens: "
          f"{torch.equal(ours_index, own)}; == torchvision's index[:12, :12]: "
          f"{torch.equal(ours_index, full[:12, :12].flatten())}")


# ------------------------------------------------------------------------------------ pooled

def pooled_pair(built: Grid | None, kernel, stride, pool_q: bool = False, seed: int = 0):
    """vattn's PoolingAttention and torchvision's MultiscaleAttention at the matching setting, same weights.

    ``built`` is the grid the tables are sized for (vattn's ``rel_pos_grid``, torchvision's
    ``input_size``); ``None`` leaves vattn's default.
    """
    torch.manual_seed(seed)
    sized = {} if built is None else {"rel_pos_grid": tuple(built)}
    block = PooledAttention(BlockArgs(DIM, HEADS), kv_stride=tuple(stride), kernel=tuple(kernel), pool_q=pool_q,
                            **sized)
    built = built or pooled_module.DEFAULT_GRID
    ours = block.attn.eval().to(DTYPE)
    theirs = MultiscaleAttention(
        input_size=list(built), embed_dim=DIM, output_dim=DIM, num_heads=HEADS,
        kernel_q=list(kernel) if pool_q else [1, 1, 1], kernel_kv=list(kernel),
        stride_q=[1, 1, 1], stride_kv=list(stride),
        residual_pool=True, residual_with_cls_embed=False, rel_pos_embed=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    ).eval().to(DTYPE)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            unit = name.startswith("norm_") and name.endswith("weight")
            p.copy_(torch.randn_like(p) * (0.3 if name.startswith(("rel_pos", "pool")) else 0.2) + unit)
        copy_pooled_weights(ours, theirs)
    return ours, theirs


def copy_pooled_weights(ours, theirs) -> None:
    theirs.qkv.load_state_dict(ours.qkv.state_dict())
    theirs.project[0].load_state_dict(ours.proj.state_dict())
    for name in ("q", "k", "v"):
        pool = getattr(theirs, f"pool_{name}")
        if pool is None:  # torchvision pools nothing at kernel 1, stride 1 (no pool_q without pool_q)
            continue
        pool.pool.weight.copy_(getattr(ours, f"pool_{name}").weight)
        pool.norm_act[0].load_state_dict(getattr(ours, f"norm_{name}").state_dict())
    for axis in "thw":
        mine, theirs_table = getattr(ours, f"rel_pos_{axis}"), getattr(theirs, f"rel_pos_{axis}")
        if mine.shape == theirs_table.shape:
            theirs_table.copy_(mine)
        else:  # non-square grid: torchvision's table has another length; give it vattn's
            setattr(theirs, f"rel_pos_{axis}", nn.Parameter(mine.detach().clone()))


def run_pooled(ours, theirs, grid: Grid, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1 + grid.patches, DIM, generator=gen, dtype=DTYPE)
    with torch.no_grad():
        a = ours(x, grid)
        b, thw = theirs(x, tuple(grid))
    assert tuple(thw) == tuple(grid)
    return a, b


def torchvision_rows(n_q: int, n_k: int) -> torch.Tensor:
    """torchvision's ``_add_rel_pos`` offsets along one axis (its rewrite of the official formula)."""
    q_ratio, k_ratio = max(n_k / n_q, 1.0), max(n_q / n_k, 1.0)
    return (torch.arange(n_q)[:, None] * q_ratio - (torch.arange(n_k)[None, :] + (1.0 - n_k)) * k_ratio).long()


def check_pooled() -> None:
    print("pooled: vattn PoolingAttention vs torchvision MultiscaleAttention (float64, CLS first)")
    cases = [
        ("(a) grid 2x8x8, kernel 3x3x3, kv stride 1x2x2", Grid(2, 8, 8), Grid(2, 8, 8), (3, 3, 3), (1, 2, 2), False),
        ("(b) as (a) with pool_q (torchvision kernel_q 3x3x3)", Grid(2, 8, 8), Grid(2, 8, 8), (3, 3, 3), (1, 2, 2), True),
        ("(c) grid 3x7x7, kv stride 2x2x2 (not divisible)", Grid(3, 7, 7), Grid(3, 7, 7), (3, 3, 3), (2, 2, 2), False),
        ("(c') grid 3x5x5, kernel 1x3x5, kv stride 1x2x3", Grid(3, 5, 5), Grid(3, 5, 5), (1, 3, 5), (1, 2, 3), False),
        ("(d) tables for 2x6x6, run 3x8x8 (tables interpolated)", Grid(2, 6, 6), Grid(3, 8, 8), (3, 3, 3), (1, 2, 2),
         False),
        ("(d') default tables (8x14x14), run 2x8x8", None, Grid(2, 8, 8), (3, 3, 3), (1, 2, 2), False),
    ]
    for label, built, grid, kernel, stride, pool_q in cases:
        ours, theirs = pooled_pair(built, kernel, stride, pool_q)
        row(label, maxdiff(*run_pooled(ours, theirs, grid)), "equal (rounding)")

    ours, theirs = pooled_pair(Grid(3, 8, 8), (3, 3, 3), (1, 2, 2))
    budget = pooled_module.MASK_BUDGET
    pooled_module.MASK_BUDGET = 1  # one frame of queries per SDPA call
    try:
        row("(d'') grid 3x8x8, queries chunked one frame per call", maxdiff(*run_pooled(ours, theirs, Grid(3, 8, 8))),
            "equal (rounding)")
    finally:
        pooled_module.MASK_BUDGET = budget

    grid = Grid(1, 16, 16)
    ours, theirs = pooled_pair(grid, (3, 3, 3), (1, 3, 3))
    rows_differ = int((pooled_module.rel_index(16, 6) != torchvision_rows(16, 6)).sum())
    row("(e) grid 1x16x16, kv stride 1x3x3 (16 queries, 6 keys/axis)", maxdiff(*run_pooled(ours, theirs, grid)),
        f"torchvision's offset arithmetic: {rows_differ}/96 offsets per axis differ")
    official = pooled_module.rel_index
    pooled_module.rel_index = torchvision_rows
    try:
        row("    same, vattn given torchvision's offset rows", maxdiff(*run_pooled(ours, theirs, grid)), "equal")
    finally:
        pooled_module.rel_index = official

    grid = Grid(2, 4, 6)
    ours, theirs = pooled_pair(grid, (3, 3, 3), (1, 2, 2))
    lengths = [tuple(getattr(m, f"rel_pos_{a}").shape[0] for a in "thw") for m in (ours, MultiscaleAttention(
        list(grid), DIM, DIM, HEADS, [1, 1, 1], [3, 3, 3], [1, 1, 1], [1, 2, 2], True, False, True))]
    row("(f) grid 2x4x6 (non-square), vattn's tables in torchvision", maxdiff(*run_pooled(ours, theirs, grid)),
        f"equal; table lengths t,h,w: vattn {lengths[0]}, torchvision {lengths[1]}")

    grid = Grid(2, 4, 4)
    ours, theirs = pooled_pair(grid, (1, 1, 1), (1, 1, 1))
    with torch.no_grad():
        ours.pool_k.weight.fill_(1.0)
        ours.pool_v.weight.fill_(1.0)
    row("(g) kernel 1, stride 1, vattn's convolutions = identity", maxdiff(*run_pooled(ours, theirs, grid)),
        f"torchvision pools nothing (pool_k {theirs.pool_k}); vattn still applies norm_k/norm_v")


def main() -> None:
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}; dim {DIM}, heads {HEADS}, batch 2")
    print(f"  {'case':<58} {'max|diff|':>9}  explanation")
    check_window()
    check_pooled()


if __name__ == "__main__":
    main()
