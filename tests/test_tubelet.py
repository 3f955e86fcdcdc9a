"""Tubelet embedding (ViViT) and the joint / sincos position embeddings of the shared backbone.

Fast: tiny models on 32-pixel clips. Tubelet 1 stays the per-frame model bit for bit; a tubelet
of 2 halves the temporal grid for every registered scheme; a frame count the tubelet does not
divide is one usage line (exit 2) found before torch loads.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from torch import nn

from vattn_cli import measure
from vattn_cli.errors import UsageError
from vattn_cli.zoo import create_model, list_schemes
from vattn_cli.zoo.catalog import validate_setting
from vattn_cli.zoo.layers import inflate_patch_embed_, inflate_patch_weight, resize_embeddings_, sincos_table
from vattn_cli.zoo.registry import create_model_from_config, token_count

TINY = dict(size="tiny", img_size=32, patch=8, num_classes=5)


def _video(frames: int = 4, side: int = 32, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, frames, side, side, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------- tubelet 1 unchanged


@pytest.mark.parametrize("scheme, params", [("divided", 1152773), ("space", 820997), ("joint", 821509)])
def test_tubelet_1_is_the_per_frame_model(scheme: str, params: int) -> None:
    """Same names, shapes, counts (as before tubelets existed) and logits as the default model."""
    torch.manual_seed(0)
    default = create_model(scheme, frames=4, **TINY).eval()
    torch.manual_seed(0)
    explicit = create_model(scheme, frames=4, tubelet=1, **TINY).eval()
    assert isinstance(default.patch_embed.proj, nn.Conv2d)
    assert tuple(default.patch_embed.proj.weight.shape) == (128, 3, 8, 8)
    assert sum(p.numel() for p in default.parameters()) == params  # the count before tubelets existed
    a, b = default.state_dict(), explicit.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert "sincos_embed" not in a
    with torch.no_grad():
        assert torch.equal(default(_video()), explicit(_video()))
    assert default.config.tubelet == 1 and default.grid(_video()).t == 4


def test_old_config_without_tubelet_loads_as_1() -> None:
    model = create_model("divided", frames=4, **TINY)
    config = model.config.to_dict()
    config.pop("tubelet"), config.pop("tubelet_init")
    again = create_model_from_config(config)
    assert again.config.tubelet == 1 and isinstance(again.patch_embed.proj, nn.Conv2d)


def test_tubelet_1_flops_unchanged() -> None:
    one = measure.count_model_flops(create_model("divided", frames=4, **TINY).config)
    explicit = measure.count_model_flops(create_model("divided", frames=4, tubelet=1, **TINY).config)
    assert one.total == explicit.total


# ----------------------------------------------------------------------------- tubelet 2


def test_tubelet_2_grid_tokens_and_conv() -> None:
    model = create_model("divided", frames=8, tubelet=2, **TINY).eval()
    conv = model.patch_embed.proj
    assert isinstance(conv, nn.Conv3d)
    assert conv.kernel_size == (2, 8, 8) and conv.stride == (2, 8, 8)
    assert "patch_embed.proj.weight" in model.state_dict()
    assert tuple(model.time_embed.shape) == (1, 4, 128)
    grid = model.grid(_video(8))
    assert (grid.t, grid.h, grid.w) == (4, 4, 4)
    tokens, _ = model.embed(_video(8))
    assert tokens.shape[1] == 4 * 16 + 1 == token_count("divided", 8, 32, 8, 2)
    assert token_count("space", 8, 32, 8, 2) == 65 and token_count("divided", 8, 32, 8) == 129
    assert model(_video(8)).shape == (1, 5)
    assert model(_video(4, 48)).shape == (1, 5)  # other frames and size: embeddings resized
    with pytest.raises(ValueError, match="multiple of the tubelet"):
        model(_video(5))


def test_tubelet_flops_count_the_3d_conv() -> None:
    """The 3D conv's FLOPs are counted: same MACs per pixel as 2D, half the tokens after it."""
    one = measure.count_model_flops(create_model("joint", frames=4, **TINY).config)
    two = measure.count_model_flops(create_model("joint", frames=4, tubelet=2, **TINY).config)

    def embed(count) -> int:
        return count.by_module["patch_embed.proj"]

    # the patch embedding: 3*8*8 (x tubelet 2) MACs per output, 128 channels, 64 (32) tokens
    assert embed(one) == 3 * 8 * 8 * 128 * 64
    assert embed(two) == 3 * 2 * 8 * 8 * 128 * 32
    assert 0 < two.total < one.total


@pytest.mark.parametrize("scheme", list_schemes())
def test_every_scheme_runs_at_tubelet_2(scheme: str) -> None:
    model = create_model(scheme, frames=4, tubelet=2, depth=2, **TINY).eval()
    with torch.no_grad():
        out = model(_video(4))
    assert out.shape == (1, 5) and torch.isfinite(out).all()
    assert model.grid(_video(4)).t == 2


def test_frames_not_divisible_is_one_usage_line() -> None:
    message = "invalid --frames 5 for --tubelet 2; expected a multiple of 2"
    with pytest.raises(UsageError, match=message):
        validate_setting("divided", "tiny", 5, 32, 8, 2)
    with pytest.raises(UsageError, match=message):
        create_model("divided", frames=5, tubelet=2, **TINY)
    with pytest.raises(UsageError, match=message):
        measure.expand(schemes=["divided"], models=["tiny"], frames=[5], sizes=[32], patches=[8], tubelets=[2])
    with pytest.raises(UsageError, match="invalid --tubelet 0"):
        validate_setting("divided", "tiny", 4, 32, 8, 0)


_RUN = """
import contextlib, io, json, sys
from vattn_cli.cli import main
results = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code
    results.append({"code": code, "err": err.getvalue(), "torch": "torch" in sys.modules})
print(json.dumps(results))
"""


def test_frames_not_divisible_cli_exit_2_without_torch(tmp_path) -> None:
    cases = [
        ["profile", "--scheme", "divided", "--model", "tiny", "--frames", "4,5", "--tubelet", "2"],
        ["zoo", "--frames", "5", "--tubelet", "2"],
        ["ablate", "tokens", "--out", str(tmp_path / "tok"), "--model", "tiny", "--frames", "5", "--tubelet", "2"],
        ["ablate", "schemes", "--out", str(tmp_path / "sch"), "--frames", "5", "--tubelet", "2"],
        ["train", "--data", "builtin:motion", "--scheme", "divided", "--frames", "5", "--tubelet", "2",
         "--out", str(tmp_path / "run")],
    ]
    done = subprocess.run([sys.executable, "-c", _RUN, json.dumps(cases)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for args, result in zip(cases, json.loads(done.stdout)):
        lines = [line for line in result["err"].splitlines() if line.strip()]
        assert result["code"] == 2, (args, result)
        assert lines == ["vattn: error: invalid --frames 5 for --tubelet 2; expected a multiple of 2"], (args, result)
        assert not result["torch"], args
    assert not any((tmp_path / name).exists() for name in ("tok", "sch", "run"))


# ----------------------------------------------------------------------------- conv initialisation


def test_inflation_rules() -> None:
    weight = torch.randn(6, 3, 4, 4)
    central = inflate_patch_weight(weight, 3, "central")
    assert central.shape == (6, 3, 3, 4, 4)
    assert torch.equal(central[:, :, 1], weight)
    assert not central[:, :, 0].any() and not central[:, :, 2].any()
    repeat = inflate_patch_weight(weight, 2, "repeat")
    assert torch.allclose(repeat[:, :, 0], weight / 2) and torch.allclose(repeat[:, :, 1], weight / 2)
    assert torch.equal(inflate_patch_weight(weight, 4, "central")[:, :, 2], weight)  # even tubelet: index t // 2
    with pytest.raises(ValueError):
        inflate_patch_weight(weight, 2, "bogus")
    state = {"patch_embed.proj.weight": weight, "patch_embed.proj.bias": torch.zeros(6)}
    inflate_patch_embed_(state, 2, "repeat")
    assert state["patch_embed.proj.weight"].shape == (6, 3, 2, 4, 4)


@pytest.mark.parametrize("rule", ["central", "repeat"])
def test_per_frame_weights_load_into_a_tubelet_model(rule: str) -> None:
    """A 2D patch embedding loaded into a tubelet model is inflated by its rule: with ``repeat``,
    a clip of identical frames embeds as the image; with ``central``, the middle frame does."""
    per_frame = create_model("divided", frames=4, **TINY).eval()
    tubelet = create_model("divided", frames=4, tubelet=2, tubelet_init=rule, **TINY).eval()
    state = dict(per_frame.state_dict())
    resize_embeddings_(state, 2, (4, 4))  # the time embedding: frames / tubelet entries
    tubelet.load_state_dict(state)
    assert state["patch_embed.proj.weight"].ndim == 4  # the caller's dict is not changed
    frame = torch.randn(1, 3, 1, 32, 32)
    still = frame.expand(1, 3, 2, 32, 32)
    with torch.no_grad():
        two_d = per_frame.patch_embed(frame)[:, 0]
        if rule == "repeat":
            got = tubelet.patch_embed(still)[:, 0]
        else:
            clip = torch.cat([torch.randn_like(frame), frame], dim=2)  # central slice of 2 is index 1
            got = tubelet.patch_embed(clip)[:, 0]
    assert torch.allclose(got, two_d, atol=1e-5)


def test_load_checkpoint_inflates_to_a_tubelet(tmp_path) -> None:
    from vattn_cli.zoo import load_checkpoint

    model = create_model("divided", frames=4, **TINY)
    path = tmp_path / "m.pt"
    torch.save({"model": model.state_dict(), "config": model.config.to_dict()}, path)
    got = load_checkpoint(path, tubelet=2, tubelet_init="repeat")
    assert got.config.tubelet == 2 and got.config.tubelet_init == "repeat"
    assert got.patch_embed.proj.weight.shape == (128, 3, 2, 8, 8)
    assert torch.allclose(got.patch_embed.proj.weight[:, :, 0], model.patch_embed.proj.weight / 2)
    assert got.time_embed.shape == (1, 2, 128)
    with pytest.raises(UsageError, match="multiple of 2"):
        load_checkpoint(path, tubelet=2, frames=5)
    # and a tubelet checkpoint round-trips as one
    torch.save({"model": got.state_dict(), "config": got.config.to_dict()}, path)
    again = load_checkpoint(path, frames=8)
    assert again.config.tubelet == 2 and again.time_embed.shape == (1, 4, 128)


# ----------------------------------------------------------------------------- position embeddings


def test_sincos_matches_hf_videomae() -> None:
    videomae = pytest.importorskip("transformers.models.videomae.modeling_videomae")
    for n, dim in [(32, 128), (1568, 768), (7, 10)]:
        ours = sincos_table(n, dim)
        theirs = videomae.get_sinusoid_encoding_table(n, dim)
        assert ours.shape == theirs.shape == (1, n, dim) and ours.dtype == theirs.dtype
        assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)


def test_sincos_embedding_is_a_fixed_buffer_for_the_clips_count() -> None:
    model = create_model("joint", frames=4, tubelet=2, pos_embed="sincos", **TINY).eval()
    assert model.pos_embed is None and model.time_embed is None
    assert "sincos_embed" not in model.state_dict() and all("sincos" not in n for n, _ in model.named_parameters())
    assert torch.equal(model.sincos_embed, sincos_table(2 * 16, 128))
    video = _video(4)
    with torch.no_grad():
        patches = model.patch_embed(video).flatten(1, 3)
        tokens, _ = model.embed(video)
    cls = model.cls_token is not None
    assert torch.allclose(tokens[:, int(cls):], patches + sincos_table(32, 128), atol=1e-6)
    with torch.no_grad():  # another clip: the table for its own count, nothing resized
        tokens, _ = model.embed(_video(8, 48))
        patches = model.patch_embed(_video(8, 48)).flatten(1, 3)
    assert torch.allclose(tokens[:, int(cls):], patches + sincos_table(4 * 36, 128), atol=1e-6)


def test_joint_embedding_table_and_resize() -> None:
    model = create_model("joint", frames=4, tubelet=2, pos_embed="joint", **TINY).eval()
    assert model.time_embed is None
    assert tuple(model.pos_embed.shape) == (1, 1 + 2 * 16, 128)  # CLS + T' x h x w
    with torch.no_grad():
        patches = model.patch_embed(_video(4)).flatten(1, 3)
        tokens, _ = model.embed(_video(4))
    assert torch.allclose(tokens[:, 1:], patches + model.pos_embed[:, 1:], atol=1e-6)
    assert torch.allclose(tokens[:, :1], model.cls_token + model.pos_embed[:, :1])
    assert model(_video(8, 64)).shape == (1, 5)  # 4 x 8 x 8 grid: resized on the fly

    # resize_embeddings_: nearest over (t, h, w), CLS slot kept
    table = torch.arange(1 + 2 * 2 * 2, dtype=torch.float32).reshape(1, -1, 1)
    state = {"pos_embed": table.clone()}
    resize_embeddings_(state, 4, (4, 4), joint_source=(2, 2, 2))
    got = state["pos_embed"]
    assert got.shape == (1, 1 + 4 * 4 * 4, 1) and got[0, 0, 0] == 0
    grid = got[0, 1:, 0].reshape(4, 4, 4)
    expected = table[0, 1:, 0].reshape(2, 2, 2).repeat_interleave(2, 0).repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert torch.equal(grid, expected)


def test_joint_checkpoint_loads_at_another_setting(tmp_path) -> None:
    from vattn_cli.zoo import load_checkpoint

    model = create_model("divided", frames=4, pos_embed="joint", **TINY)
    path = tmp_path / "j.pt"
    torch.save({"model": model.state_dict(), "config": model.config.to_dict()}, path)
    got = load_checkpoint(path, frames=8, img_size=64)
    assert tuple(got.pos_embed.shape) == (1, 1 + 8 * 64, 128)
    assert got(_video(8, 64)).shape == (1, 5)


@pytest.mark.parametrize("pos_embed", ["joint", "sincos"])
def test_every_new_pos_embed_trains_a_step(pos_embed: str) -> None:
    model = create_model("divided", frames=4, tubelet=2, pos_embed=pos_embed, **TINY)
    loss = model(_video(4, batch=2)).logsumexp(-1).mean()
    loss.backward()
    assert model.patch_embed.proj.weight.grad is not None


# ----------------------------------------------------------------------------- rows and the CLI


def test_settings_and_rows_carry_tubelet() -> None:
    settings = measure.expand(schemes=["divided"], models=["tiny"], frames=[4], sizes=[32], patches=[8],
                              tubelets=[1, 2])
    assert [s.tubelet for s in settings] == [1, 2]
    assert settings[0].key() != settings[1].key()
    assert [s.tokens for s in settings] == [65, 33]
    rows = [s.row_base() for s in settings]
    assert [r["tubelet"] for r in rows] == [1, 2]
    assert measure.row_key({**rows[1], "size": 32}) == settings[1].key()
    old_row = {k: v for k, v in rows[0].items() if k != "tubelet"}  # a file from before the column
    assert measure.row_key(old_row) == settings[0].key()
    assert "tubelet" in measure.ROW_COLUMNS


def _vattn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vattn_cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_zoo_and_profile_at_tubelet_2() -> None:
    zoo = _vattn("zoo", "--model", "tiny", "--frames", "4", "--img-size", "32", "--patch", "8", "--tubelet", "2",
                 "--scheme", "divided", "--csv", "-")
    assert zoo.returncode == 0, zoo.stderr
    row = pd.read_csv(io.StringIO(zoo.stdout)).iloc[0]
    assert row["tubelet"] == 2 and row["tokens"] == 33

    out = _vattn("profile", "--scheme", "divided", "--model", "tiny", "--frames", "4", "--size", "32", "--patch", "8",
                 "--tubelet", "1,2", "--measure", "params,flops", "--no-isolate", "--csv", "-")
    assert out.returncode == 0, out.stderr
    frame = pd.read_csv(io.StringIO(out.stdout))
    assert list(frame.columns[: len(measure.ROW_COLUMNS)]) == measure.ROW_COLUMNS
    assert frame["tubelet"].tolist() == [1, 2] and frame["tokens"].tolist() == [65, 33]
    assert (frame["status"] == "ok").all()
    assert frame["gflops"].iloc[1] < frame["gflops"].iloc[0]
    assert frame["params_m"].iloc[1] > frame["params_m"].iloc[0]  # the 3D kernel is twice the 2D one


def test_tokens_resume_treats_tubelets_apart_and_reads_old_files(tmp_path) -> None:
    from vattn_cli.ablate import tokens as study

    options = measure.RunOptions(warmup=0, repeats=1)
    plan1 = study.plan(["space"], frames=[2], sizes=[32], model="tiny", patch=16)
    study.run(plan1, tmp_path, ["params"], options, isolate=False)
    plan2 = study.plan(["space"], frames=[2], sizes=[32], model="tiny", patch=16, tubelet=2)
    result = study.run(plan2, tmp_path, ["params"], options, resume=True, isolate=False)
    assert result.measured == 1 and result.skipped == 0
    lines = (tmp_path / study.CSV_NAME).read_text().splitlines()
    header = lines[0].split(",")
    assert len(lines) == 3 and header.index("tubelet") == header.index("status") + 1

    # a file from before the tubelet column resumes as tubelet 1
    old = tmp_path / "old"
    old.mkdir()
    frame = pd.read_csv(tmp_path / study.CSV_NAME).iloc[:1].drop(columns=["tubelet"])
    frame.to_csv(old / study.CSV_NAME, index=False)
    again = study.run(plan1, old, ["params"], options, resume=True, isolate=False)
    assert again.skipped == 1 and again.measured == 0
    assert again.frame["tubelet"].tolist() == [1]
    with pytest.raises(UsageError, match="before the tubelet column"):
        study.run(plan2, old, ["params"], options, resume=True, isolate=False)


def test_train_init_of_a_per_frame_checkpoint_into_a_tubelet_model(tmp_path) -> None:
    from vattn_cli.engine.config import TUBELET_INITS, TrainConfig
    from vattn_cli.engine.train import _init_model
    from vattn_cli.zoo import layers

    assert TUBELET_INITS == layers.TUBELET_INITS  # the torch-free copy the CLI checks against
    model = create_model("divided", frames=4, **TINY)
    path = tmp_path / "m.pt"
    torch.save({"model": model.state_dict(), "config": model.config.to_dict()}, path)
    config = TrainConfig(out_dir=str(tmp_path / "run"), init=str(path), frames=4, tubelet=2, tubelet_init="repeat")
    config.validate()
    got = _init_model(config)
    assert got.config.tubelet == 2 and got.patch_embed.proj.weight.shape == (128, 3, 2, 8, 8)
    assert torch.allclose(got.patch_embed.proj.weight[:, :, 1], model.patch_embed.proj.weight / 2)
    central = _init_model(TrainConfig(out_dir=str(tmp_path / "run2"), init=str(path), frames=4, tubelet=2))
    assert torch.equal(central.patch_embed.proj.weight[:, :, 1], model.patch_embed.proj.weight)
    assert not central.patch_embed.proj.weight[:, :, 0].any()
    with pytest.raises(UsageError, match="--tubelet-init"):
        TrainConfig(out_dir="x", tubelet=2, tubelet_init="middle").validate()
    with pytest.raises(UsageError, match="invalid --frames 5 for --tubelet 2"):
        TrainConfig(out_dir="x", frames=5, tubelet=2).validate()
