"""FLOP counts: fused attention counted like explicit matmuls, our models against independent
references (fvcore on the Hugging Face TimeSformer, which writes attention as explicit matmuls),
the one-block shortcut against full traces, and the published TimeSformer figures."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vattn_cli.measure.flops import ATTN, breakdown_frame, count_flops, count_model_flops, einsum_macs
from vattn_cli.zoo import create_model, list_schemes
from vattn_cli.zoo.layers import Attention

HF_TYPES = {"divided": "divided_space_time", "space": "space_only", "joint": "joint_space_time"}


class ExplicitAttention(Attention):
    """The same attention as :class:`Attention`, written with explicit matmuls."""

    def forward(self, x, attn_mask=None):
        q, k, v = self.qkv_heads(x)
        attn = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        out = attn.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).flatten(2))


class EinsumAttention(Attention):
    def forward(self, x, attn_mask=None):
        q, k, v = self.qkv_heads(x)
        attn = torch.einsum("bhnd,bhmd->bhnm", q, k) * q.shape[-1] ** -0.5
        out = torch.einsum("bhnm,bhmd->bhnd", attn.softmax(-1), v)
        return self.proj(out.transpose(1, 2).flatten(2))


def test_sdpa_counts_exactly_like_explicit_matmuls() -> None:
    x = torch.randn(2, 50, 64)
    fused, explicit, einsum = Attention(64, 4), ExplicitAttention(64, 4), EinsumAttention(64, 4)
    fused_count = count_flops(fused, (x,))
    qk_av = 2 * (2 * 4 * 50 * 50 * 16)  # batch * heads * n * n * head_dim, twice
    assert fused_count.attn == qk_av  # fails if SDPA counts zero
    assert count_flops(explicit, (x,)).total == fused_count.total
    assert count_flops(einsum, (x,)).total == fused_count.total
    assert count_flops(explicit, (x,)).attn == count_flops(einsum, (x,)).attn == qk_av
    # And the reason the handle exists: fvcore alone misses the attention products.
    assert count_flops(fused, (x,), extra_handles=False).total == fused_count.total - qk_av


def test_fused_sdpa_variants_and_masks_count_the_same() -> None:
    q = torch.randn(1, 2, 10, 8)
    k = torch.randn(1, 2, 12, 8)
    v = torch.randn(1, 2, 12, 6)

    class Causal(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    assert count_flops(Causal(), (q, k, v)).attn == 2 * 10 * 12 * (8 + 6)


def test_general_matmul_einsum_and_grouped_conv3d() -> None:
    class Ops(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv3d(8, 16, kernel_size=(3, 3, 3), padding=1, groups=4)
            self.w = nn.Parameter(torch.randn(16, 5))

        def forward(self, x, a, b):
            y = self.conv(x)  # [1, 16, 4, 6, 6]
            z = torch.einsum("bc...,cd->bd...", y, self.w)  # ellipsis, with a weight
            return z.sum() + (a @ b).sum()  # broadcast batch dims

    x, a, b = torch.randn(1, 8, 4, 6, 6), torch.randn(3, 1, 7, 5), torch.randn(4, 5, 2)
    count = count_flops(Ops(), (x, a, b))
    conv = 1 * (16 * 2 * 27) * (4 * 6 * 6)  # out channels x in/groups x kernel, per output position
    einsum = 16 * 5 * 4 * 6 * 6
    matmul = 3 * 4 * 7 * 5 * 2
    assert count.total == conv + einsum + matmul
    assert count.attn == matmul  # activation x activation; the einsum uses a weight
    assert einsum_macs("ij,jk,kl->il", [[4, 5], [5, 6], [6, 7]]) == min(4 * 5 * 6 + 4 * 6 * 7, 5 * 6 * 7 + 4 * 5 * 7)


@pytest.mark.parametrize("scheme", list_schemes())
def test_one_block_shortcut_equals_full_trace(scheme: str) -> None:
    # Every registered scheme, including ones added later: the depth-scaled count is exact.
    model = create_model(scheme, size="tiny", frames=4, img_size=64, depth=3, num_classes=10)
    full = count_flops(model, (torch.randn(1, 3, 4, 64, 64),))
    short = count_model_flops(model)
    assert short.total == full.total and short.attn == full.attn
    assert short.total > 0 and 0 < short.attn < short.total
    assert sum(short.by_module.values()) == short.total


def _hf(scheme: str, frames: int, img: int, dim: int, depth: int, heads: int):
    from transformers import TimesformerConfig, TimesformerForVideoClassification

    config = TimesformerConfig(
        image_size=img, patch_size=16, num_frames=frames, hidden_size=dim, num_hidden_layers=depth,
        num_attention_heads=heads, intermediate_size=4 * dim, attention_type=HF_TYPES[scheme], num_labels=400,
        qkv_bias=True, layer_norm_eps=1e-6,
    )
    return TimesformerForVideoClassification(config).eval()


def _hf_count(scheme: str, frames: int, img: int, dim: int, depth: int, heads: int, per_block: bool = False):
    """fvcore with its default handles on the HF implementation (explicit matmuls).

    ``per_block``: trace one layer and scale by depth (HF's layers are identical too), so a base
    width reference costs 1/12 of a forward pass.
    """
    model = _hf(scheme, frames, img, dim, 1 if per_block else depth, heads)
    video = torch.randn(1, frames, 3, img, img)
    ref = count_flops(model, (video,), extra_handles=False)
    ours_on_hf = count_flops(model, (video,))  # our handles: the matmuls between activations
    if not per_block:
        return ref.total, ours_on_hf.attn
    block = "timesformer.encoder.layer.0"
    block_total = sum(n for name, n in ref.by_module.items() if name.startswith(block))
    block_attn = sum(n for name, n in ours_on_hf.attn_by_module.items() if name.startswith(block))
    return ref.total + (depth - 1) * block_total, ours_on_hf.attn + (depth - 1) * block_attn


@pytest.mark.parametrize(
    "scheme, frames, img",
    [("divided", 8, 224), ("space", 8, 224), ("joint", 8, 224), ("divided", 16, 224), ("joint", 16, 112)],
)
def test_matches_fvcore_on_huggingface_timesformer_reduced(scheme: str, frames: int, img: int) -> None:
    # Same formula as base (every term is linear in depth, polynomial in width and tokens), at a
    # width and depth that trace in a fraction of a second.
    dim, depth, heads = 96, 2, 2
    ref_total, ref_attn = _hf_count(scheme, frames, img, dim, depth, heads)
    ours = count_model_flops(create_model(scheme, size="base", frames=frames, img_size=img,
                                          dim=dim, depth=depth, num_heads=heads))
    assert ours.attn == ref_attn
    assert ours.total == pytest.approx(ref_total, rel=5e-3)
    if scheme != "space":  # HF's space_only runs its final norm/head per frame: a few 1e-5 more
        assert ours.total == ref_total


# Published per-view GFLOPs (one multiply-add = one FLOP), base, 224x224, 400 classes, from the
# MMAction2 model zoo (configs/recognition/timesformer/README.md, "1 clip x 3 crop" rows):
# TimeSformer divST 196G, jointST 180G, spaceOnly 141G.
MMACTION2_GFLOPS = {"divided": 196.0, "joint": 180.0, "space": 141.0}


def _base_config(scheme: str, frames: int):
    with torch.device("meta"):  # the config is all the count needs; no 100M-parameter init
        return create_model(scheme, size="base", frames=frames, img_size=224).config


@pytest.mark.parametrize("scheme, frames", [("divided", 8), ("space", 8), ("joint", 8), ("divided", 16)])
def test_base_matches_huggingface_timesformer_and_mmaction2(scheme: str, frames: int) -> None:
    ref_total, ref_attn = _hf_count(scheme, frames, 224, 768, 12, 12, per_block=True)
    ours = count_model_flops(_base_config(scheme, frames))
    assert ours.attn == ref_attn
    assert ours.total == pytest.approx(ref_total, rel=5e-3)
    if frames == 8:
        assert ours.gflops == pytest.approx(MMACTION2_GFLOPS[scheme], rel=0.01)


def test_breakdown_adds_up_and_names_the_parts() -> None:
    count = count_model_flops(create_model("divided", size="tiny", frames=4, img_size=64))
    frame = breakdown_frame(count)
    parts = frame[frame["module"] == "(all)"].set_index("part")
    assert set(parts.index) == {"embed", "attention", "mlp", "head"}
    assert math.isclose(parts["gflops"].sum(), count.gflops, rel_tol=1e-9)
    assert math.isclose(parts.loc["attention", "attn_gflops"], count.attn_gflops, rel_tol=1e-9)
    assert ATTN not in count.unsupported


# -- one counter: a scheme's flop_handles reach vattn profile, and zoo --check counts the same ------

CUSTOM_OP_SCHEMES = '''
import math
import torch
from torch import nn
from vattn_cli.zoo import SoftmaxBlock


class Mix(torch.autograd.Function):  # opaque to fvcore: traces as prim::PythonOp.Mix
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g @ w.T, (x.transpose(-1, -2) @ g).sum(0)


def mix_flops(inputs, outputs):
    x, w = (i.type().sizes() for i in inputs)
    return math.prod(x) * w[-1]


class Plain(SoftmaxBlock):
    def attend(self, x, grid):
        return self.attn(x)


class Mixed(Plain):
    flop_handles = {"prim::PythonOp.Mix": mix_flops}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.w = nn.Parameter(torch.eye(self.dim))

    def attend(self, x, grid):
        return Mix.apply(self.attn(x), self.w)
'''


@pytest.fixture
def custom_op_schemes(tmp_path, monkeypatch):
    """A user's scheme module (``flop_mix_schemes``) on the path, this process's and the workers'
    (PYTHONPATH); returns ``cli(capsys, *args)``, the CSV ``vattn ARGS`` prints. Registry restored after."""
    import io
    import os
    import sys

    import pandas as pd

    from vattn_cli.cli import main
    from vattn_cli.zoo.registry import refresh_external, unregister_scheme

    (tmp_path / "flop_mix_schemes.py").write_text(CUSTOM_OP_SCHEMES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p))
    before = set(list_schemes())

    def cli(capsys, *args: str) -> pd.DataFrame:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        out = capsys.readouterr()
        assert exited.value.code == 0, out.err
        return pd.read_csv(io.StringIO(out.out))

    yield cli
    for name in set(list_schemes()) - before:
        unregister_scheme(name)
    sys.modules.pop("flop_mix_schemes", None)
    monkeypatch.undo()
    refresh_external()


def _block_flops(scheme: str, frames: int, img: int) -> int:
    """``count_flops`` on one block of ``scheme`` at a clip setting (tiny width), as the check does."""
    from vattn_cli.measure.conformance import _AtGrid
    from vattn_cli.zoo.conformance import layout_tokens
    from vattn_cli.zoo.scheme import Grid

    model = create_model(scheme, size="tiny", depth=1, frames=frames, img_size=img, num_classes=5)
    grid = Grid(frames, img // 16, img // 16)
    x = torch.randn(1, layout_tokens(grid, type(model.blocks[0]).cls_token), model.config.dim)
    return count_flops(_AtGrid(model.blocks[0].eval(), grid), (x,)).total


def test_profile_and_zoo_check_count_a_scheme_custom_op(custom_op_schemes, capsys) -> None:
    mixed, plain = "flop_mix_schemes:Mixed", "flop_mix_schemes:Plain"
    rows = custom_op_schemes(capsys, "profile", "--scheme", f"{mixed},{plain}", "--model", "tiny", "--frames", "4",
                             "--size", "64", "--measure", "params,flops", "--csv", "-", "--quiet").set_index("scheme")
    model = create_model(mixed, size="tiny", frames=4, img_size=64)
    tokens, dim, depth = 4 * 4 * 4 + 1, model.config.dim, model.config.depth
    shared = count_model_flops(model)
    # The opaque x @ w is counted (N x D x D multiply-adds per block), not zero, in vattn profile
    # (a worker process: the handle travels with the scheme's class), as the shared counter counts it.
    assert rows.loc[mixed, "gflops"] * 1e9 == pytest.approx(shared.total, abs=1)
    assert (rows.loc[mixed, "gflops"] - rows.loc[plain, "gflops"]) * 1e9 == pytest.approx(depth * tokens * dim * dim, abs=1)
    assert not [op for op in shared.unsupported if "Mix" in op]
    # Profile's per-block share is count_flops on one block at the same setting ...
    per_block = sum(n for name, n in shared.by_module.items() if name.startswith("blocks.*")) // depth
    assert per_block == _block_flops(mixed, 4, 64)
    # ... and zoo --check's flops detail is count_flops on one block at the check's setting.
    checks = custom_op_schemes(capsys, "zoo", "--check", mixed, "--csv", "-", "--quiet").set_index("check")
    assert checks.loc["flops", "status"] == "pass"
    detail = checks.loc["flops", "detail"]
    exact = _block_flops(mixed, 4, 112)
    assert f"({exact} multiply-adds" in detail and detail.startswith(f"{exact / 1e6:.1f} MFLOPs per block")


def test_count_flops_registers_the_model_scheme_handles(custom_op_schemes) -> None:
    import flop_mix_schemes

    from vattn_cli.measure.flops import scheme_flop_handles

    model = create_model("flop_mix_schemes:Mixed", size="tiny", frames=2, img_size=32, depth=2)
    assert scheme_flop_handles(model) == {"prim::PythonOp.Mix": flop_mix_schemes.mix_flops}
    video = torch.randn(1, 3, 2, 32, 32)
    with_handle, fvcore_only = count_flops(model, (video,)), count_flops(model, (video,), extra_handles=False)
    assert "prim::PythonOp.Mix" not in with_handle.unsupported
    assert fvcore_only.unsupported.get("prim::PythonOp.Mix") == 2  # one per block, without the handle
    tokens, dim = 2 * 2 * 2 + 1, model.config.dim
    plain = count_flops(create_model("flop_mix_schemes:Plain", size="tiny", frames=2, img_size=32, depth=2), (video,))
    assert with_handle.total - plain.total == 2 * tokens * dim * dim
