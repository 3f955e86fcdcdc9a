"""Training FLOPs: forward + backward counted with FlopCounterMode (fvcore's convention, one
multiply-add = one FLOP), checked against hand counts, against explicit matmuls where torch's
formulas are missing (CPU flash attention) or wrong (grouped convolution backward), and through
``vattn profile --mode train``."""

from __future__ import annotations

import io
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vattn_cli import measure
from vattn_cli.measure.conformance import _AtGrid, carries_work
from vattn_cli.measure.flops import TRAIN_FORMULAS, count_flops, count_model_flops, count_train_flops
from vattn_cli.zoo import SoftmaxBlock, create_model, list_schemes
from vattn_cli.zoo.layers import Attention
from vattn_cli.zoo.scheme import Grid


class Fused(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


class Explicit(nn.Module):
    def forward(self, q, k, v):
        return ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(-1) @ v


class EinsumForm(nn.Module):
    def forward(self, q, k, v):
        a = torch.einsum("bhnd,bhmd->bhnm", q, k).softmax(-1)
        return torch.einsum("bhnm,bhmd->bhnd", a, v)


def _qkv(b=1, h=2, n=16, m=16, d=8, e=8):
    return tuple(torch.randn(*shape, requires_grad=True) for shape in ((b, h, n, d), (b, h, m, d), (b, h, m, e)))


def test_cpu_flash_attention_is_counted_like_explicit_matmuls() -> None:
    q, k, v = _qkv()
    # Forward Q.K^T and A.V, backward twice that (dA, dV, dQ, dK): 3 x 2 x b h n m d.
    expected = 3 * 2 * 2 * 16 * 16 * 8
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # the kernel F.sdpa picks on CPU when grads are needed
        with FlopCounterMode(display=False, custom_mapping=TRAIN_FORMULAS) as counter:
            Fused()(q, k, v).sum().backward()
        ran = {str(op) for op in counter.get_flop_counts()["Global"]}
        fused = count_train_flops(Fused(), (q, k, v))
    assert {"aten._scaled_dot_product_flash_attention_for_cpu",
            "aten._scaled_dot_product_flash_attention_for_cpu_backward"} <= ran  # the CPU flash path ran
    assert counter.get_total_flops() == 2 * expected  # FlopCounterMode's units: 2 per multiply-add
    assert fused.total == fused.attn == expected  # not zero
    assert count_train_flops(Explicit(), (q, k, v)).total == expected
    assert count_train_flops(EinsumForm(), (q, k, v)).attn == expected
    with sdpa_kernel(SDPBackend.MATH):  # the reference kernel: explicit matmuls inside
        assert count_train_flops(Fused(), (q, k, v)).attn == expected


def test_fused_attention_with_other_shapes_counts_like_explicit() -> None:
    q, k, v = _qkv(n=10, m=12, d=8, e=6)  # cross-attention, value width != key width
    expected = 3 * 2 * 10 * 12 * (8 + 6)
    assert count_train_flops(Fused(), (q, k, v)).attn == expected == count_train_flops(Explicit(), (q, k, v)).attn


def test_grouped_conv_backward_counts_groups() -> None:
    # torch's conv_backward formula ignores groups in the weight gradient (a depthwise conv's
    # weight gradient would count `channels` times over); ours repeats the forward's products.
    conv = nn.Conv3d(8, 16, kernel_size=3, padding=1, groups=4)
    x = torch.randn(1, 8, 4, 6, 6)
    forward = count_flops(conv, (x,)).total
    assert forward == 16 * 2 * 27 * (4 * 6 * 6)
    assert count_train_flops(conv, (x,)).total == 2 * forward  # weight gradient only: the input needs none
    assert count_train_flops(conv, (x.requires_grad_(),)).total == 3 * forward
    depthwise = nn.Conv2d(32, 32, kernel_size=3, padding=1, groups=32)
    y = torch.randn(1, 32, 8, 8, requires_grad=True)
    assert count_train_flops(depthwise, (y,)).total == 3 * count_flops(depthwise, (y,)).total


def test_products_with_weights_are_not_attention() -> None:
    class Ops(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(6, 5))

        def forward(self, a, b):
            seen = a @ self.w.t().contiguous().t()  # a weight seen through re-views is a weight
            seen = torch.einsum("bnk,km->bnm", seen, self.w.T)
            return seen @ b  # two activations: attention

    a, b = torch.randn(2, 3, 6, requires_grad=True), torch.randn(2, 6, 4, requires_grad=True)
    count = count_train_flops(Ops(), (a, b))
    weights = 3 * (2 * 3 * 6 * 5 + 2 * 3 * 5 * 6)  # forward, input grad, weight grad
    assert count.attn == 3 * 2 * 3 * 6 * 4
    assert count.total == weights + count.attn
    assert count_flops(Ops(), (a, b)).attn * 3 == count.attn  # fvcore's split, forward + backward


def _hand_count(model: nn.Module, video: torch.Tensor) -> tuple[int, int]:
    """Forward + backward multiply-adds from the architecture, read off one forward pass.

    Each ``nn.Linear``: forward MACs x 3 (forward, input gradient, weight gradient; every linear's
    input needs a gradient, since the embedding has parameters). The patch-embedding convolution:
    x 2 (the video needs no gradient). Each ``Attention``: Q.K^T and A.V, ``2 x B' x n^2 x D``
    MACs over its folded batch, x 3 (backward: dA, dV, dQ, dK). Norms, softmax, GELU and
    additions count zero under FlopCounterMode, which has formulas for products only.
    """
    linear = conv = attention = 0

    def on_linear(module, args, out):
        nonlocal linear
        linear += args[0].numel() // module.in_features * module.in_features * module.out_features

    def on_conv(module, args, out):
        nonlocal conv
        conv += out.numel() * math.prod(module.weight.shape[1:])

    def on_attention(module, args):
        nonlocal attention
        batch, n, dim = args[0].shape
        attention += 2 * batch * n * n * dim

    hooks = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            hooks.append(module.register_forward_hook(on_linear))
        elif isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(on_conv))
        elif isinstance(module, Attention):
            hooks.append(module.register_forward_pre_hook(on_attention))
    with torch.no_grad():
        model(video)
    for hook in hooks:
        hook.remove()
    return 3 * linear + 2 * conv + 3 * attention, 3 * attention


@pytest.mark.parametrize("scheme", ["divided", "joint", "space"])
def test_train_flops_of_tiny_models_match_a_hand_count(scheme: str) -> None:
    model = create_model(scheme, size="tiny", frames=8, img_size=64, patch=16)
    train, forward = count_model_flops(model, mode="train"), count_model_flops(model)
    assert 2.5 * forward.total < train.total < 3.5 * forward.total
    assert train.attn == 3 * forward.attn  # products of two activations, both needing a gradient
    total, attn = _hand_count(model, torch.randn(1, 3, 8, 64, 64))
    assert (train.total, train.attn) == (total, attn)  # exact: no residual
    if scheme == "joint":  # the same, written out: N tokens, width D, L blocks, 400 classes
        n, d, depth = 8 * 4 * 4 + 1, model.config.dim, model.config.depth
        blocks = depth * (3 * 12 * n * d * d + 3 * 2 * n * n * d)  # qkv, proj, fc1, fc2; Q.K^T, A.V
        embed, head = 2 * (8 * 16) * d * (3 * 16 * 16), 3 * d * 400
        assert train.total == blocks + embed + head
        # What train/forward misses of 3: the forward's LayerNorms (fvcore: 5 per element; two
        # per block and the final one, each on all N tokens), and the conv's input gradient.
        norms = 5 * d * n * (2 * depth + 1)
        assert train.total == 3 * (forward.total - norms) - embed // 2


@pytest.mark.parametrize("scheme", list_schemes())
def test_one_block_train_count_equals_full_model(scheme: str) -> None:
    model = create_model(scheme, size="tiny", frames=4, img_size=64, depth=3, num_classes=10)
    full = count_train_flops(model, (torch.randn(1, 3, 4, 64, 64),))
    short = count_model_flops(model, mode="train")
    assert (short.total, short.attn) == (full.total, full.attn)
    assert 0 < short.attn < short.total
    assert not [op for op in short.unsupported if carries_work(op)]  # no op with work left uncounted


def test_custom_autograd_function_costs_what_its_backward_computes() -> None:
    class Mix(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return x @ w

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            return g @ w.T, (x.transpose(-1, -2) @ g).sum(0)

    class Plain(SoftmaxBlock):
        def attend(self, x, grid):
            return self.attn(x)

    class Mixed(Plain):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.w = nn.Parameter(torch.eye(self.dim))

        def attend(self, x, grid):
            return Mix.apply(self.attn(x), self.w)

    grid, dim = Grid(2, 2, 2), 32
    x = torch.randn(1, 9, dim, requires_grad=True)
    plain, mixed = (count_train_flops(_AtGrid(cls(dim, 2), grid), (x,)) for cls in (Plain, Mixed))
    assert mixed.total - plain.total == 3 * 9 * dim * dim  # no fvcore handle needed: the aten ops are seen


def test_profile_train_rows_carry_forward_plus_backward(capsys) -> None:
    from vattn_cli.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["profile", "--scheme", "divided", "--model", "tiny", "--frames", "4", "--size", "64", "--mode", "infer,train",
              "--measure", "params,flops", "--no-isolate", "--csv", "-", "--quiet"])
    out = capsys.readouterr()
    assert exited.value.code == 0, out.err
    rows = pd.read_csv(io.StringIO(out.out)).set_index("mode")
    config = create_model("divided", size="tiny", frames=4, img_size=64).config
    train, forward = count_model_flops(config, mode="train"), count_model_flops(config)
    # The train row comes after the infer row of the same geometry: it must not reuse its count.
    assert rows.loc["train", "gflops"] == pytest.approx(train.gflops, rel=1e-12)
    assert rows.loc["train", "attn_gflops"] == pytest.approx(train.attn_gflops, rel=1e-12)
    assert rows.loc["infer", "gflops"] == pytest.approx(forward.gflops, rel=1e-12)
    assert 2.5 < rows.loc["train", "gflops"] / rows.loc["infer", "gflops"] < 3.0
    # MFU of a train row: its gflops already hold the backward, so one pass.
    assert measure.run.mfu(300.0, 2.0, "train", 1.0, includes_backward=True) == pytest.approx(1.2)
