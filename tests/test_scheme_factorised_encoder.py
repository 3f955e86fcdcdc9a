"""ViViT model 2's factorised encoder (scheme ``factorised_encoder``).

The model is checked against a naive float64 reference written from the paper and Scenic's
``SpaceTimeViViT``, sharing nothing with the implementation: explicit loops over the time indices
run a plain ViT encoder on each (patch embedding as a loop over patches, CLS token and spatial
position table, written-out pre-norm blocks with a per-head softmax), collect each time index's
CLS token, and run a plain temporal transformer over them (its own CLS token and position table,
the same written-out blocks, final norm, the CLS token into the head).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from vattn_cli.errors import UsageError
from vattn_cli.measure.flops import count_model_flops
from vattn_cli.testing import check_scheme
from vattn_cli.zoo import Grid, SchemeBlock, SoftmaxBlock, create_model, create_model_from_config, get_scheme
from vattn_cli.zoo.catalog import register_scheme, unregister_scheme
from vattn_cli.zoo.checkpoints import load_checkpoint, save_checkpoint
from vattn_cli.zoo.info import count_params

SCHEME = "factorised_encoder"
DIM, HEADS, PATCH, CLASSES = 32, 2, 8, 5
HEAD_DIM = DIM // HEADS


def build(frames: int, side: int, temporal_depth: int = 2, depth: int = 2, tubelet: int = 1,
          scheme: str = SCHEME, seed: int = 0) -> nn.Module:
    """A small float64 model with every parameter random (norms, CLS tokens and tables included)."""
    torch.manual_seed(seed)
    options = {"temporal_depth": temporal_depth} if scheme == SCHEME else {}
    extra = {"tubelet": tubelet} if tubelet != 1 else {}
    model = create_model(scheme, size="tiny", dim=DIM, depth=depth, num_heads=HEADS, frames=frames,
                         img_size=side * PATCH, patch=PATCH, num_classes=CLASSES, **options, **extra)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_weight = "norm" in name and name.endswith("weight")
            p.copy_(torch.randn_like(p) * 0.2 + is_norm_weight)
    return model.double().eval()


# ------------------------------------------------------------------ the reference (the spec)

def layer_norm(z: Tensor, p: dict, prefix: str, eps: float = 1e-6) -> Tensor:
    mean = z.mean(-1, keepdim=True)
    var = ((z - mean) ** 2).mean(-1, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps) * p[prefix + "weight"] + p[prefix + "bias"]


def linear(z: Tensor, p: dict, prefix: str) -> Tensor:
    return z @ p[prefix + "weight"].T + p[prefix + "bias"]


def attention(z: Tensor, p: dict, prefix: str) -> Tensor:
    """Multi-head softmax attention of ``z`` ``[n, D]`` over all its tokens, head by head."""
    qkv = linear(z, p, prefix + "qkv.")
    q, k, v = qkv[:, :DIM], qkv[:, DIM:2 * DIM], qkv[:, 2 * DIM:]
    out = torch.zeros_like(q)
    for m in range(HEADS):
        c = slice(m * HEAD_DIM, (m + 1) * HEAD_DIM)
        scores = q[:, c] @ k[:, c].T / math.sqrt(HEAD_DIM)
        weights = torch.exp(scores - scores.amax(-1, keepdim=True))
        out[:, c] = (weights / weights.sum(-1, keepdim=True)) @ v[:, c]
    return linear(out, p, prefix + "proj.")


def vit_block(z: Tensor, p: dict, prefix: str) -> Tensor:
    z = z + attention(layer_norm(z, p, prefix + "norm1."), p, prefix + "attn.")
    hidden = linear(layer_norm(z, p, prefix + "norm2."), p, prefix + "mlp.fc1.")
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
    return z + linear(hidden, p, prefix + "mlp.fc2.")


def nearest(source: int, target: int) -> list[int]:
    """Nearest-neighbour source index of each target slot (as ``F.interpolate(mode="nearest")``)."""
    return [min(int(math.floor(i * source / target)), source - 1) for i in range(target)]


def vit_encoder(p: dict, frames: Tensor, built_side: int, depth: int) -> Tensor:
    """A plain ViT encoder on one time index: ``frames`` ``[C, k, H, W]`` (``k`` frames per tubelet),
    one token per patch, CLS first; the tokens after the last block (no final norm)."""
    weight = p["patch_embed.proj.weight"]
    if weight.ndim == 4:  # per-frame patches: [D, C, P, P]
        weight = weight.unsqueeze(2)
    h, w = frames.shape[-2] // PATCH, frames.shape[-1] // PATCH
    pos = p["pos_embed"][0]
    rows, cols = nearest(built_side, h), nearest(built_side, w)
    tokens = [p["cls_token"][0, 0] + pos[0]]
    for i in range(h):
        for j in range(w):
            patch = frames[:, :, i * PATCH:(i + 1) * PATCH, j * PATCH:(j + 1) * PATCH]
            embedded = (weight * patch).sum(dim=(1, 2, 3, 4)) + p["patch_embed.proj.bias"]
            tokens.append(embedded + pos[1 + rows[i] * built_side + cols[j]])
    z = torch.stack(tokens)
    for layer in range(depth):
        z = vit_block(z, p, f"blocks.{layer}.")
    return z


def vit(p: dict, image: Tensor, built_side: int, depth: int) -> Tensor:
    """A plain ViT classifying one image ``[C, H, W]``: encoder, final norm, CLS token, head."""
    z = vit_encoder(p, image.unsqueeze(1), built_side, depth)
    return linear(layer_norm(z[0], p, "norm."), p, "head.")


def reference(model: nn.Module, video: Tensor) -> Tensor:
    """ViViT model 2 on ``video`` ``[B, C, T, H, W]``, loop by loop."""
    config = model.config
    p = {k: v.double() for k, v in model.state_dict().items()}
    built_side, built_t, k = config.img_size // config.patch, config.time_tokens, config.tubelet
    temporal_depth = config.scheme_options.get("temporal_depth", 4)
    logits = []
    for clip in video.double():
        cls_tokens = []
        for t in range(clip.shape[1] // k):  # the spatial encoder, one time index at a time
            cls_tokens.append(vit_encoder(p, clip[:, t * k:(t + 1) * k], built_side, config.depth)[0])
        table = p["second_stage.pos_embed"][0]
        slots = nearest(built_t, len(cls_tokens))
        z = [p["second_stage.cls_token"][0, 0] + table[0]]
        for t, token in enumerate(cls_tokens):
            z.append(layer_norm(token, p, "second_stage.spatial_norm.") + table[1 + slots[t]])
        z = torch.stack(z)
        for layer in range(temporal_depth):  # the temporal encoder
            z = vit_block(z, p, f"second_stage.blocks.{layer}.")
        logits.append(linear(layer_norm(z[0], p, "norm."), p, "head."))
    return torch.stack(logits)


# ------------------------------------------------------------------------ against the reference

CASES = [  # built (frames, side, tubelet), the clip run (frames, h, w), temporal_depth
    ((3, 2, 1), (3, 2, 2), 2),
    ((2, 2, 1), (4, 3, 2), 1),  # resized on the fly: twice the frames, a non-square grid
    ((4, 2, 2), (4, 2, 2), 2),  # tubelets: 2 time indices
    ((1, 3, 1), (1, 3, 3), 3),
]


@pytest.mark.parametrize("built, clip, temporal_depth", CASES, ids=str)
def test_model_equals_naive_reference(built: tuple, clip: tuple, temporal_depth: int) -> None:
    frames, side, tubelet = built
    model = build(frames, side, temporal_depth, tubelet=tubelet)
    video = torch.randn(2, 3, clip[0], clip[1] * PATCH, clip[2] * PATCH, dtype=torch.float64)
    with torch.no_grad():
        got = model(video)
    assert got.shape == (2, CLASSES)
    assert (got - reference(model, video)).abs().max().item() < 1e-5


def test_no_temporal_encoder_on_one_frame_is_a_vit_on_that_frame() -> None:
    model = build(1, 3, temporal_depth=0)
    assert model.second_stage is None
    video = torch.randn(2, 3, 1, 3 * PATCH, 3 * PATCH, dtype=torch.float64)
    p = {k: v.double() for k, v in model.state_dict().items()}
    with torch.no_grad():
        got = model(video)
    expected = torch.stack([vit(p, clip[:, 0], 3, model.config.depth) for clip in video])
    assert (got - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("frames", [1, 3])
def test_no_temporal_encoder_is_space(frames: int) -> None:
    """``temporal_depth=0``: the frames' CLS tokens averaged, then norm and head: TimeSformer's space-only."""
    model = build(frames, 2, temporal_depth=0)
    space = build(frames, 2, scheme="space", seed=1)
    space.load_state_dict(model.state_dict())
    video = torch.randn(2, 3, frames, 2 * PATCH, 2 * PATCH, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(video), space(video), rtol=0, atol=1e-10)


def test_frame_order_reaches_the_temporal_encoder_only() -> None:
    video = torch.randn(1, 3, 4, 2 * PATCH, 2 * PATCH, dtype=torch.float64)
    reversed_video = video.flip(2)
    with torch.no_grad():
        with_temporal = build(4, 2, temporal_depth=2)
        assert (with_temporal(video) - with_temporal(reversed_video)).abs().max().item() > 1e-3
        without = build(4, 2, temporal_depth=0)
        torch.testing.assert_close(without(video), without(reversed_video))


# ------------------------------------------------------------------------- model and options

def test_layout_and_options() -> None:
    cls = get_scheme(SCHEME)
    assert cls.cls_token == "per_frame" and not cls.uses_time_embed
    model = create_model(SCHEME, size="tiny", frames=4, img_size=32)
    assert model.config.scheme_options == {} and len(model.second_stage.blocks) == 4  # the default L_t
    assert model.time_embed is None and model.second_stage.pos_embed.shape == (1, 1 + 4, 128)
    assert create_model(SCHEME, size="tiny", frames=4, img_size=32, tubelet=2).second_stage.pos_embed.shape[1] == 3


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2", None])
def test_bad_temporal_depth_is_one_clear_usage_error(bad: object) -> None:
    with pytest.raises(UsageError, match=r"invalid temporal_depth .* for factorised_encoder; expected an integer >= 0"):
        create_model(SCHEME, size="tiny", frames=2, img_size=32, temporal_depth=bad)
    config = create_model(SCHEME, size="tiny", frames=2, img_size=32).config.to_dict()
    config["scheme_options"] = {"temporal_depth": bad}  # a checkpoint's config
    with pytest.raises(UsageError, match="invalid temporal_depth"):
        create_model_from_config(config)


def test_parameters_are_spaces_plus_the_temporal_encoder() -> None:
    kw = {"size": "tiny", "frames": 4, "img_size": 64}
    d = 128
    block = 4 * d + 3 * d * d + 3 * d + d * d + d + 2 * (4 * d * d) + 4 * d + d  # 2 norms, qkv, proj, mlp
    temporal = 2 * d + d + (1 + 4) * d + 3 * block  # spatial_norm, CLS, table, 3 blocks
    assert count_params(SCHEME, temporal_depth=3, **kw) == count_params("space", **kw) + temporal
    assert count_params(SCHEME, temporal_depth=0, **kw) == count_params("space", **kw)


def test_flops_count_the_temporal_encoder_once() -> None:
    frames, side, lt, d = 6, 4, 3, 128
    model = create_model(SCHEME, size="tiny", frames=frames, img_size=side * 16, temporal_depth=lt)
    space = create_model("space", size="tiny", frames=frames, img_size=side * 16)
    fe, sp = count_model_flops(model), count_model_flops(space)
    n = 1 + frames
    block = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * 4 * d + 2 * 5 * n * d  # fvcore: LN 5/elem
    stage = sum(v for k, v in fe.by_module.items() if k.startswith("second_stage"))
    assert stage == lt * block + 5 * frames * d  # + the spatial encoder's final norm
    assert fe.attn - sp.attn == lt * 2 * n * n * d
    # the rest is space's, but the final norm sees the 1 + T temporal tokens, not 1 + h*w
    assert fe.total - sp.total == stage + 5 * n * d - 5 * (1 + side * side) * d
    assert {"second_stage.blocks.*.attn.qkv", "second_stage.blocks.*.mlp.fc1"} <= set(fe.by_module)
    train = count_model_flops(model, mode="train")
    assert train.total > 2 * fe.total and train.attn > fe.attn


def test_checkpoint_round_trip_and_other_frame_counts(tmp_path) -> None:
    model = build(4, 2, temporal_depth=2).float()
    path = save_checkpoint(tmp_path / "fe.pt", model)
    raw = torch.load(path, weights_only=True)
    assert {"second_stage.cls_token", "second_stage.pos_embed", "second_stage.spatial_norm.weight",
            "second_stage.blocks.1.mlp.fc2.bias"} <= set(raw["model"])
    assert raw["config"]["scheme_options"] == {"temporal_depth": 2}
    loaded = load_checkpoint(path)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    video = torch.randn(2, 3, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), model(video), rtol=0, atol=0)
        for frames in (2, 6):  # moved to another frame count: the temporal table resized like the others
            moved = load_checkpoint(path, frames=frames)
            assert moved.second_stage.pos_embed.shape[1] == 1 + frames
            clip = torch.randn(1, 3, frames, 16, 16)
            torch.testing.assert_close(moved(clip), model(clip), rtol=1e-5, atol=1e-5)


def test_training_from_scratch_draws_the_temporal_table_like_the_others() -> None:
    """The engine's from-scratch init (std 1 tables) must reach the temporal encoder's table: left at
    std 0.02 beside unit-norm CLS tokens, the model is blind to frame order and the built-in motion
    task stays at chance (measured: 25% top-1, 50% pair accuracy after the 6 default epochs)."""
    from vattn_cli.engine.train import init_from_scratch_

    torch.manual_seed(0)
    model = create_model(SCHEME, size="tiny", frames=8, img_size=32, patch=8)
    assert model.second_stage.pos_embed.std().item() < 0.05
    init_from_scratch_(model, 1.0)
    for table in (model.pos_embed, model.second_stage.pos_embed):
        assert 0.6 < table.std().item() < 1.0  # N(0, 1) truncated at 2 std: std 0.88


def test_conforms() -> None:
    results = check_scheme(SCHEME)
    assert "second stage" in next(r.detail for r in results if r.check == "flops")


# ---------------------------------------------------------------- the hook for external schemes

class MeanThenLinear(nn.Module):
    """A toy second stage: the frames' mean patch token, a learned CLS, one linear map."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.proj = nn.Linear(dim, dim)
        self.reset_calls = 0

    def reset_parameters(self) -> None:
        self.reset_calls += 1
        nn.init.ones_(self.cls)

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        pooled = self.proj(x.mean(1, keepdim=True))
        return torch.cat([self.cls.expand(x.shape[0], -1, -1) + pooled, pooled], dim=1)


@pytest.fixture
def staged_scheme():
    @register_scheme("test_staged")
    class Staged(SoftmaxBlock):
        cls_token = "none"
        description = "joint blocks, then a toy second stage"

        def attend(self, x: Tensor, grid: Grid) -> Tensor:
            return self.attn(x)

        @classmethod
        def build_second_stage(cls, args, grid, options):
            return MeanThenLinear(args.dim)

    yield "test_staged"
    unregister_scheme("test_staged")


def test_any_scheme_may_declare_a_second_stage(staged_scheme: str) -> None:
    assert SchemeBlock.build_second_stage.__func__ is not get_scheme(staged_scheme).build_second_stage.__func__
    model = create_model(staged_scheme, size="tiny", frames=2, img_size=32, num_classes=3).eval()
    assert model.second_stage.reset_calls == 1 and bool((model.second_stage.cls == 1).all())
    video = torch.randn(1, 3, 2, 32, 32)
    with torch.no_grad():
        x, grid = model.embed(video)
        for block in model.blocks:
            x = block(x, grid)
        expected = model.head(model.norm(model.second_stage(x, grid))[:, 0])
        torch.testing.assert_close(model(video), expected)
    count = count_model_flops(model)
    assert count.by_module["second_stage.proj"] == 128 * 128
    check_scheme(staged_scheme)
