"""RSA and StructSA against naive references written from their definitions.

The references loop over grid positions and window offsets in Python, skip neighbours outside
the grid (the "clipped" window; the weights of the remaining offsets are used unchanged) and
use no convolution, so they check the layers' convolution/einsum/SDPA formulation, its border
handling and its token orders independently. They run in float64 from the fp32 layers' weights.
"""

from __future__ import annotations

import math
from itertools import product

import pytest
import torch
import torch.nn.functional as F
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from vattn_cli.errors import UsageError
from vattn_cli.zoo import create_model, token_count
from vattn_cli.zoo.info import count_params
from vattn_cli.zoo.scheme import BlockArgs, Grid
from vattn_cli.zoo.schemes.joint import JointAttention
from vattn_cli.zoo.schemes.rsa import NORM_EPS, RSABlock
from vattn_cli.zoo.schemes.structsa import StructSABlock

# ---------------------------------------------------------------------------- helpers


def window_offsets(window):
    """(kernel index, offset from the centre) for every slot of a ``(t, h, w)`` window."""
    for idx in product(*(range(k) for k in window)):
        yield idx, tuple(i - k // 2 for i, k in zip(idx, window))


def neighbours(pos, window, grid):
    """(kernel index, flat token index) of the in-grid neighbours of ``pos``: the clipped window."""
    for idx, off in window_offsets(window):
        t, y, x = (p + o for p, o in zip(pos, off))
        if 0 <= t < grid.t and 0 <= y < grid.h and 0 <= x < grid.w:
            yield idx, (t * grid.h + y) * grid.w + x


def positions(grid, stride=(1, 1, 1)):
    return list(product(range(0, grid.t, stride[0]), range(0, grid.h, stride[1]), range(0, grid.w, stride[2])))


def randomise_(module: nn.Module) -> None:
    """Unit-scale random weights, so outputs are O(1) and a 1e-5 tolerance means something."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))


def l2(z):
    return z / z.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)


def rsa_reference(layer, x, grid):
    """RSA from its definition (module docstring of ``rsa.py``), position by position."""
    w = {n: p.detach().double() for n, p in layer.named_parameters()}
    x = x.double()
    b, n, _ = x.shape
    h, dk, dv, dd = layer.heads, layer.dk, layer.dv, layer.dd
    qkv = x @ w["qkv.weight"].T + w["qkv.bias"]
    q = l2(qkv[..., : h * dk].reshape(b, n, h, dk))
    k = l2(qkv[..., h * dk : h * dk + dk])
    v = l2(qkv[..., h * dk + dk :])
    rel = w["key_conv.weight"].reshape(dk, dd, *layer.window)  # H[c, d, offset]
    hv = w["context_conv.weight"][:, 0]  # Hv[d, offset]
    g = w["relation_conv.weight"][:, 0]  # G[e, offset]
    out = torch.zeros(b, n, h, dv, dtype=torch.float64)
    for bi in range(b):
        for p, pos in enumerate(positions(grid)):
            nbrs = list(neighbours(pos, layer.window, grid))
            kappa = q[bi, p] @ w["query_basis"]  # basic kernel [h, dd]
            for idx, j in nbrs:  # relational kernel: projected Hadamard query-key correlations
                kappa = kappa + (q[bi, p] * k[bi, j]) @ rel[(slice(None), slice(None)) + idx]
            vn = torch.stack([v[bi, j] for _, j in nbrs])  # [M', dv]
            gram = vn @ vn.T  # value-value self-correlation [M', M']
            g_m = torch.stack([g[(slice(None),) + idx] for idx, _ in nbrs])  # [M', e]
            hv_m = torch.stack([hv[(slice(None),) + idx] for idx, _ in nbrs])  # [M', dd]
            slots = vn @ w["context_mix"] + gram @ g_m  # [M', e]: values + relational context
            context = slots.T @ hv_m  # [e, dd]
            out[bi, p] = kappa @ context.T
    return out.reshape(b, n, h * dv) @ w["proj.weight"].T + w["proj.bias"]


def structsa_reference(layer, x, grid):
    """StructSA from its definition: convolved correlation maps, one softmax over (n, d)."""
    w = {n: p.detach().double() for n, p in layer.named_parameters()}
    x = x.double()
    b, n, c = x.shape
    h, d = layer.num_heads, layer.patterns
    hd = c // h
    q, k, v = (x @ w["qkv.weight"].T + w["qkv.bias"]).reshape(b, n, 3, h, hd).unbind(2)

    def per_channel(kernels):  # [h, hd, D, *window]: the kernel each channel sees
        if layer.share == "head":
            return kernels[:, None].expand(h, hd, *kernels.shape[1:])
        return kernels.reshape(h, hd, *kernels.shape[1:])

    uk, uv = per_channel(w["key_patterns"]), per_channel(w["value_patterns"])
    keys = positions(grid, layer.kv_stride)
    out = torch.zeros(b, n, h, hd, dtype=torch.float64)
    for bi, head in product(range(b), range(h)):
        logits = torch.zeros(n, len(keys), d, dtype=torch.float64)
        values = torch.zeros(len(keys), d, hd, dtype=torch.float64)
        for kn, pos in enumerate(keys):
            for idx, j in neighbours(pos, layer.window, grid):
                corr = q[bi, :, head] * k[bi, j, head]  # channel-wise correlation, every query
                logits[:, kn] += corr @ uk[(head, slice(None), slice(None)) + idx]
                values[kn] += uv[(head, slice(None), slice(None)) + idx].T * v[bi, j, head]
        attn = torch.softmax(logits.reshape(n, -1) / math.sqrt(hd), dim=-1)  # joint over (n, d)
        out[bi, :, head] = attn @ values.reshape(-1, hd)
    return out.reshape(b, n, c) @ w["proj.weight"].T + w["proj.bias"]


def assert_matches(layer, reference, grid, dim, batch=2):
    x = torch.randn(batch, grid.patches, dim)
    with torch.no_grad():
        got = layer(x, grid)
    want = reference(layer, x, grid)
    assert want.abs().mean() > 0.05  # outputs of unit scale: the tolerance is meaningful
    assert (got.double() - want).abs().max().item() < 1e-5


# ---------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize(
    "grid, window",
    [(Grid(3, 4, 5), (3, 3, 3)), (Grid(3, 4, 5), (3, 5, 3)), (Grid(2, 3, 4), (5, 7, 7))],
    ids=["3x3x3", "3x5x3", "default-5x7x7-larger-than-grid"],
)
def test_rsa_equals_naive_reference_including_borders(grid, window) -> None:
    layer = RSABlock(BlockArgs(16, 2), window=window).attn
    randomise_(layer)
    assert_matches(layer, rsa_reference, grid, 16)


@pytest.mark.parametrize(
    "share, patterns, window, stride",
    [
        ("head", 4, 3, 1),
        ("channel", 3, 3, 1),
        ("head", 2, (3, 1, 3), (1, 2, 2)),  # the "-S" variant; 5 columns, stride 2: ragged edge
        ("channel", 2, 3, (2, 2, 3)),
    ],
)
def test_structsa_equals_naive_reference_including_borders(share, patterns, window, stride) -> None:
    grid = Grid(3, 4, 5)
    layer = StructSABlock(BlockArgs(16, 2), patterns=patterns, window=window, kv_stride=stride, share=share).attn
    randomise_(layer)
    assert_matches(layer, structsa_reference, grid, 16)


def test_structsa_with_one_identity_pattern_is_joint_attention() -> None:
    grid = Grid(3, 4, 4)
    joint = JointAttention(BlockArgs(32, 4)).eval()
    randomise_(joint)
    struct = StructSABlock(BlockArgs(32, 4), patterns=1).eval()
    missing, unexpected = struct.load_state_dict(joint.state_dict(), strict=False)
    assert set(missing) == {"attn.key_patterns", "attn.value_patterns"} and not unexpected
    with torch.no_grad():
        for kernels in (struct.attn.key_patterns, struct.attn.value_patterns):
            kernels.zero_()
            kernels[:, :, 1, 1, 1] = 1.0  # delta at the centre: structured key = key
    x = torch.randn(2, grid.patches, 32)
    with torch.no_grad():
        diff = (struct(x, grid) - joint(x, grid)).abs().max().item()
        assert diff < 1e-5
        struct.attn.key_patterns[:, :, 1, 1, 2] = 0.5  # and a real pattern is not joint attention
        assert (struct(x, grid) - joint(x, grid)).abs().max().item() > 1e-3


@pytest.mark.parametrize("grid", [Grid(2, 3, 4), Grid(4, 4, 4), Grid(3, 5, 2), Grid(7, 2, 3)])
@pytest.mark.parametrize("scheme", ["rsa", "structsa"])
def test_training_matrix_form_equals_reference_and_convolution_gradients(scheme, grid, monkeypatch) -> None:
    """With autograd on, small grids take _grid.window_matrix; outputs must still match the naive
    reference, and every gradient the convolution path's."""
    import vattn_cli.zoo.schemes._grid as grid_module

    block = RSABlock(BlockArgs(16, 2)) if scheme == "rsa" else StructSABlock(BlockArgs(16, 2), patterns=3)
    layer = block.attn
    randomise_(layer)
    reference = rsa_reference if scheme == "rsa" else structsa_reference
    x = torch.randn(2, grid.patches, 16)
    taken = []
    real = grid_module.window_matrix
    monkeypatch.setattr(f"vattn_cli.zoo.schemes.{scheme}.window_matrix", lambda *a: taken.append(1) or real(*a))

    def grads(x):
        x = x.clone().requires_grad_()
        layer.zero_grad()
        out = layer(x, grid)
        out.square().sum().backward()
        return out.detach(), [x.grad] + [p.grad.clone() for p in layer.parameters()]

    if scheme == "rsa":  # the key convolution trains through frames_conv
        real_frames = grid_module.frames_conv
        monkeypatch.setattr("vattn_cli.zoo.schemes.rsa.frames_conv", lambda *a: taken.append(2) or real_frames(*a))
    out, matrix_grads = grads(x)
    if scheme == "structsa":
        assert 1 in taken
    elif grid.t > layer.window[0]:  # more frames than the window: values through frames_conv too
        assert taken == [2, 2]
    else:
        assert sorted(taken) == [1, 1, 2]  # keys through frames_conv, each value conv as a matrix
    assert (out.double() - reference(layer, x, grid)).abs().max().item() < 1e-5
    monkeypatch.setattr(grid_module, "MATRIX_TOKENS", 0)
    taken.clear()
    _, conv_grads = grads(x)
    assert not taken
    for got, want in zip(matrix_grads, conv_grads):
        assert (got - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())


@pytest.mark.parametrize(("grid", "window", "kernels"), [((8, 4, 4), (5, 7, 7), 3), ((3, 5, 2), (3, 3, 5), 2), ((6, 2, 3), (5, 3, 3), 1)])
def test_frames_conv_equals_the_grouped_convolution_both_ways(grid, window, kernels) -> None:
    from vattn_cli.zoo.schemes._grid import frames_conv

    channels = 4
    x = torch.randn(3, channels, *grid, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(channels * kernels, 1, *window, dtype=torch.float64, requires_grad=True)
    conv = F.conv3d(x, weight, padding=tuple(k // 2 for k in window), groups=channels)
    want = conv.reshape(3, channels, kernels, -1).permute(1, 0, 3, 2).reshape(channels, -1, kernels)  # [C, (B T H W), R]
    got = frames_conv(x, weight, grid)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-12
    upstream = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, (x, weight), upstream), torch.autograd.grad(want, (x, weight), upstream)):
        assert (a - b).abs().max().item() < 1e-10


def test_structsa_training_takes_the_fused_attention_kernel() -> None:
    """Strided keys sent SDPA to its math path (``_safe_softmax``), 1.24x slower per step."""
    from torch.profiler import ProfilerActivity, profile

    block = StructSABlock(BlockArgs(16, 2), patterns=3)
    x, grid = torch.randn(2, Grid(4, 4, 4).patches, 16, requires_grad=True), Grid(4, 4, 4)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        block.attn(x, grid).sum().backward()
    ops = {event.key for event in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops
    assert "aten::_safe_softmax" not in ops and "aten::_scaled_dot_product_attention_math" not in ops


# ---------------------------------------------------------------------------- memory shape


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_rsa_materialises_no_window_fold_copy_of_the_channels() -> None:
    grid, dim, heads = Grid(4, 6, 6), 32, 2
    layer = RSABlock(BlockArgs(dim, heads)).attn  # default 5x7x7 window: M = 245
    dk = dim // heads
    x = torch.randn(1, grid.patches, dim)
    with torch.no_grad(), LargestTensor() as probe:
        layer(x, grid)
    # Per token the largest intermediates are dk*dd (H's output) numbers; an unfold of the
    # window would be M*dk, 15x more here.
    assert probe.numel <= grid.patches * dk * dk
    assert probe.numel < grid.patches * 245 * dk / 8


# ---------------------------------------------------------------------------- FLOPs


def sdpa_flops(inputs, outputs) -> int:
    """Multiply-adds of softmax(QK^T)V as the explicit matmuls: QK^T plus AV."""
    q, k, v = (get_shape(t) for t in inputs[:3])
    return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


class _BlockAt(nn.Module):
    def __init__(self, block: nn.Module, grid: Grid) -> None:
        super().__init__()
        self.block, self.grid = block, grid

    def forward(self, x):
        return self.block(x, self.grid)


# Ops fvcore leaves uncounted here that carry no multiply-adds of the layers: elementwise
# arithmetic (adds of residuals and biases, scalar shape arithmetic from tracing), activation,
# and the L2 normalisation's norm/clamp/divide (O(C) per token, like LayerNorm's share).
ELEMENTWISE = {
    "aten::add", "aten::mul", "aten::mul_", "aten::gelu", "aten::linalg_vector_norm",
    "aten::clamp_min", "aten::expand_as", "aten::div",
}


def rsa_macs(n, dim, heads, m):
    dk = dv = dd = dim // heads
    per_token = (
        dim * (heads * dk + dk + dv)  # qkv
        + dk * dd * m + dv * dd * m + dv * dv * m  # H, Hv, G over the window
        + heads * dk * dd + dv * dv * dd + heads * dd * dv  # kernel, context, output einsums
        + heads * dv * dim  # proj
    )
    return n * per_token


def structsa_macs(n, n_kv, dim, heads, patterns, m):
    return n * 4 * dim * dim + 2 * n_kv * dim * patterns * m + n * n_kv * patterns * 2 * dim


@pytest.mark.parametrize("scheme", ["rsa", "structsa"])
def test_fvcore_counts_every_multiply_add(scheme) -> None:
    grid, dim, heads = Grid(2, 5, 4), 64, 4
    if scheme == "rsa":
        block, expected = RSABlock(BlockArgs(dim, heads)), rsa_macs(grid.patches, dim, heads, 245)
    else:
        block = StructSABlock(BlockArgs(dim, heads), patterns=3, kv_stride=2)
        n_kv = 2 * 3 * 2  # ceil(5/2) x ceil(4/2) per frame
        expected = structsa_macs(grid.patches, n_kv, dim, heads, 3, 27)
    flops = FlopCountAnalysis(_BlockAt(block.eval(), grid), (torch.randn(1, grid.patches, dim),))
    flops.set_op_handle("aten::scaled_dot_product_attention", sdpa_flops)
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    attn = flops.by_module()["block.attn"]
    assert set(flops.unsupported_ops()) <= ELEMENTWISE, flops.unsupported_ops()
    assert attn == expected


# ---------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("scheme", ["rsa", "structsa"])
@pytest.mark.parametrize("size", ["tiny", pytest.param("base", marks=pytest.mark.slow)])
def test_forward_backward(scheme, size) -> None:
    model = create_model(scheme, size=size, frames=2, img_size=32, num_classes=5)
    video = torch.randn(2, 3, 2, 32, 32)
    logits = model(video)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    logits.square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    attn = {n: g for n, g in grads.items() if n.startswith("blocks.1.attn.")}
    assert all(g.abs().sum() > 0 for g in attn.values()), [n for n, g in attn.items() if g.abs().sum() == 0]


@pytest.mark.parametrize("scheme", ["rsa", "structsa"])
def test_registered_mean_pooled_and_counted(scheme) -> None:
    assert token_count(scheme, 8, 224, 16) == 8 * 196  # no CLS token
    model = create_model(scheme, size="tiny", frames=4, img_size=64, num_classes=3)
    assert model.cls_token is None
    assert count_params(scheme, size="base") > 0  # builds on the meta device


@pytest.mark.parametrize(
    "scheme, options, match",
    [
        ("rsa", {"window": (4, 7, 7)}, "odd"),
        ("rsa", {"heads": 5}, "heads"),
        ("structsa", {"patterns": 0}, "patterns"),
        ("structsa", {"share": "pixel"}, "accepted: head, channel"),
        ("structsa", {"kv_stride": 0}, "positive"),
        ("structsa", {"window": (3, 3)}, "three integers"),
    ],
)
def test_bad_options_are_usage_errors(scheme, options, match) -> None:
    with pytest.raises(UsageError, match=match):
        create_model(scheme, size="tiny", frames=2, img_size=32, **options)
