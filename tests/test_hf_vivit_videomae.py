"""Parity with Hugging Face's ViViT and VideoMAE: same weights, same clip, same logits.

Randomly initialised HF models at a small odd setting (6 frames, tubelet 2, 48 px, patch 16, 3
heads of 16, 2 layers: a 3 x 3 x 3 token grid) are saved to a folder, once by ``save_pretrained``
(safetensors, the Hub's names) and once as a ``pytorch_model.bin`` of the live model's
``state_dict()`` (transformers 5's names), and loaded with ``load_checkpoint``. Every HF
parameter is perturbed first, so LayerNorms, the zero-initialised CLS token and position table
and every bias take part: a swapped or dropped tensor changes the logits.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from vattn_cli.errors import UsageError
from vattn_cli.zoo import load_checkpoint
from vattn_cli.zoo.registry import create_model_from_config

transformers = pytest.importorskip("transformers")
transformers.utils.logging.disable_progress_bar()

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fake_data_cli import run_cli  # noqa: E402

FRAMES, TUBELET, SIZE, PATCH, DIM, HEADS, DEPTH, CLASSES = 6, 2, 48, 16, 48, 3, 2, 5
TOL = 1e-4
KINDS = ("vivit", "videomae")


def make_hf(kind: str, frames: int = FRAMES, **config):
    """A randomly initialised HF model of ``kind``, every parameter perturbed (seeded)."""
    common = dict(num_frames=frames, image_size=SIZE, hidden_size=DIM, num_attention_heads=HEADS,
                  num_hidden_layers=DEPTH, intermediate_size=2 * DIM, num_labels=CLASSES)
    torch.manual_seed(0)
    if kind == "vivit":
        hf = transformers.VivitForVideoClassification(
            transformers.VivitConfig(tubelet_size=[TUBELET, PATCH, PATCH], **common, **config))
    else:
        hf = transformers.VideoMAEForVideoClassification(
            transformers.VideoMAEConfig(tubelet_size=TUBELET, patch_size=PATCH, **common, **config))
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return hf.eval()


@torch.no_grad()
def hf_logits(hf, video: torch.Tensor) -> torch.Tensor:
    return hf(pixel_values=video.transpose(1, 2)).logits  # HF takes [B, T, C, H, W]


def save(hf, folder: Path, fmt: str) -> Path:
    """``folder`` holding ``hf``: ``save_pretrained`` (safetensors) or a live ``state_dict()`` .bin."""
    hf.save_pretrained(folder)
    if fmt == "bin":
        (folder / "model.safetensors").unlink()
        torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    return folder


def max_diff(model, hf, video: torch.Tensor) -> float:
    with torch.no_grad():
        ours = model(video)
    ref = hf_logits(hf, video)
    assert ours.shape == ref.shape
    return (ours - ref).abs().max().item()


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("kind", KINDS)
def test_hf_folder_loads_with_same_logits(kind: str, fmt: str, tmp_path: Path) -> None:
    hf = make_hf(kind)
    folder = save(hf, tmp_path / kind, fmt)
    if fmt == "bin":  # the live layout really is another one (transformers 5 renamed ViViT's modules)
        keys = set(torch.load(folder / "pytorch_model.bin", weights_only=True))
        assert any(".layers.0.attention.q_proj." in k for k in keys) if kind == "vivit" else any(
            k.endswith("attention.attention.query.bias") for k in keys)
    model = load_checkpoint(folder)
    cfg = model.config
    assert not model.training
    assert (cfg.scheme, cfg.dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio) == ("joint", DIM, DEPTH, HEADS, 2.0)
    setting = (cfg.frames, cfg.tubelet, cfg.img_size, cfg.patch, cfg.num_classes)
    assert setting == (FRAMES, TUBELET, SIZE, PATCH, CLASSES)
    if kind == "vivit":
        assert (cfg.pos_embed, cfg.pool, cfg.mlp_act, cfg.norm_eps) == ("joint", "auto", "gelu_tanh", 1e-6)
        assert model.pos_embed.shape == (1, 1 + (FRAMES // TUBELET) * (SIZE // PATCH) ** 2, DIM)
        assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf.parameters())
    else:
        assert (cfg.pos_embed, cfg.pool, cfg.mlp_act, cfg.norm_eps, cfg.fc_norm_eps) == (
            "sincos", "mean", "gelu", 1e-12, 1e-5)
        assert model.cls_token is None and model.pos_embed is None and model.norm is None
        # qv_bias: vattn's fused qkv carries a zero key bias where HF has none
        assert torch.equal(model.blocks[0].attn.qkv.bias[DIM:2 * DIM], torch.zeros(DIM))
        assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf.parameters()) + DEPTH * DIM
    video = torch.randn(2, 3, FRAMES, SIZE, SIZE)
    assert max_diff(model, hf, video) < TOL


def test_the_activation_matters(tmp_path: Path) -> None:
    """ViViT's gelu_fast is not cosmetic: exact GELU in its place moves the logits far beyond the
    float noise of the right mapping; a config that says ``gelu`` maps to exact GELU."""
    hf = make_hf("vivit")
    folder = save(hf, tmp_path / "vivit", "safetensors")
    good = load_checkpoint(folder)
    wrong = create_model_from_config({**good.config.to_dict(), "mlp_act": "gelu"})
    wrong.load_state_dict(good.state_dict())
    video = torch.randn(1, 3, FRAMES, SIZE, SIZE)
    right, off = max_diff(good, hf, video), max_diff(wrong.eval(), hf, video)
    assert right < 1e-6 and off > 100 * right, (right, off)
    exact = make_hf("vivit", hidden_act="gelu")
    loaded = load_checkpoint(save(exact, tmp_path / "exact", "safetensors"))
    assert loaded.config.mlp_act == "gelu" and max_diff(loaded, exact, video) < TOL


def test_videomae_without_biases(tmp_path: Path) -> None:
    hf = make_hf("videomae", qv_bias=False)
    model = load_checkpoint(save(hf, tmp_path / "m", "safetensors"))
    assert model.config.qkv_bias is False and model.blocks[0].attn.qkv.bias is None
    assert max_diff(model, hf, torch.randn(1, 3, FRAMES, SIZE, SIZE)) < TOL


def test_other_frame_counts(tmp_path: Path) -> None:
    """VideoMAE's sine-cosine table is recomputed for the clip: vattn at 4 frames equals HF built at
    4 frames with the same weights. ViViT's joint table is resized nearest over time."""
    hf = make_hf("videomae")
    folder = save(hf, tmp_path / "m", "safetensors")
    hf4 = make_hf("videomae", frames=4)
    hf4.load_state_dict(hf.state_dict())
    video = torch.randn(1, 3, 4, SIZE, SIZE)
    assert max_diff(load_checkpoint(folder, frames=4), hf4, video) < TOL
    assert max_diff(load_checkpoint(folder), hf4, video) < TOL  # on the fly
    vivit = load_checkpoint(save(make_hf("vivit"), tmp_path / "v", "safetensors"), frames=12)
    assert vivit.pos_embed.shape[1] == 1 + 6 * 9 and vivit(torch.randn(1, 3, 12, SIZE, SIZE)).shape == (1, CLASSES)
    with pytest.raises(UsageError, match="multiple of 2"):
        load_checkpoint(folder, frames=5)


def _one_line(fn) -> str:
    with pytest.raises(UsageError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unmappable_folders_are_one_line(tmp_path: Path) -> None:
    folder = save(make_hf("videomae"), tmp_path / "m", "safetensors")
    config = json.loads((folder / "config.json").read_text())

    def with_config(**changes) -> Path:
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
        return folder

    message = _one_line(lambda: load_checkpoint(with_config(use_mean_pooling=False)))
    assert "use_mean_pooling false" in message and "accepted: use_mean_pooling true" in message
    message = _one_line(lambda: load_checkpoint(with_config(hidden_act="relu")))
    assert "hidden_act 'relu' is not supported; accepted: gelu, gelu_fast" in message
    message = _one_line(lambda: load_checkpoint(with_config(architectures=["VideoMAEForPreTraining"])))
    assert "VideoMAEForPreTraining" in message and "maps VideoMAEForVideoClassification" in message
    message = _one_line(lambda: load_checkpoint(with_config(model_type="xclip")))
    assert "'xclip' model, which vattn cannot map; supported model types: timesformer, vivit, videomae" in message


def test_cli_eval_and_init_from_hf_folders(tmp_path: Path, capsys) -> None:
    vivit = save(make_hf("vivit"), tmp_path / "vivit", "safetensors")
    code = run_cli(["eval", "--ckpt", str(vivit), "--data", "random:5", "--views", "1x1", "--batch", "4",
                    "--csv", "-"])
    out = capsys.readouterr()
    assert code == 0, out.err
    header, row = out.out.splitlines()[:2]
    values = dict(zip(header.split(","), row.split(",")))
    assert (values["scheme"], values["frames"], values["size"], values["tubelet"]) == ("joint", "6", "48", "2")
    assert values["tokens"] == str(1 + 27)  # CLS + 3 x 3 x 3

    videomae = save(make_hf("videomae"), tmp_path / "videomae", "bin")
    code = run_cli(["train", "--init", str(videomae), "--data", "random:3", "--epochs", "1", "--batch", "4",
                    "--workers", "0", "--lr", "1e-12", "--out", str(tmp_path / "ft"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    tuned = load_checkpoint(tmp_path / "ft" / "last.pt")
    code = run_cli(["eval", "--ckpt", str(tmp_path / "ft" / "last.pt"), "--data", "random:3", "--views", "1x1",
                    "--csv", "-"])
    out = capsys.readouterr()
    assert code == 0, out.err
    header, row = out.out.splitlines()[:2]
    assert dict(zip(header.split(","), row.split(",")))["tokens"] == "27"  # VideoMAE: no CLS token
    assert (tuned.config.pool, tuned.config.pos_embed, tuned.config.num_classes) == ("mean", "sincos", 3)
    source = load_checkpoint(videomae)
    assert torch.allclose(tuned.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight, atol=1e-8)

    bad = tmp_path / "bad"
    shutil.copytree(vivit, bad)
    (bad / "config.json").write_text(json.dumps({**json.loads((vivit / "config.json").read_text()),
                                                 "model_type": "xclip"}))
    capsys.readouterr()
    code = run_cli(["eval", "--ckpt", str(bad), "--data", "random:5"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "supported model types: timesformer, vivit, videomae" in lines[0]


# --------------------------------------------------------------------------- the backbone options the mapping needs


def test_loaded_models_round_trip_through_vattn_checkpoints(tmp_path: Path) -> None:
    """pool, fc_norm_eps and mlp_act live in the saved config: a vattn checkpoint of a loaded
    ViViT/VideoMAE model rebuilds it exactly."""
    from vattn_cli.zoo.checkpoints import save_checkpoint

    video = torch.randn(1, 3, FRAMES, SIZE, SIZE)
    for kind in KINDS:
        model = load_checkpoint(save(make_hf(kind), tmp_path / kind, "safetensors"))
        again = load_checkpoint(save_checkpoint(tmp_path / f"{kind}.pt", model))
        assert again.config == model.config
        with torch.no_grad():
            assert torch.equal(again(video), model(video))


def test_configs_saved_before_the_options_still_load() -> None:
    """A config dict without ``mlp_act``/``pool``/``fc_norm_eps`` (every checkpoint written before
    them) builds today's model: exact GELU, the scheme's own pooling, the final norm."""
    model = create_model_from_config({"scheme": "joint", "dim": 32, "depth": 1, "num_heads": 2, "frames": 2,
                                      "img_size": 16, "patch": 8, "num_classes": 3})
    assert (model.config.mlp_act, model.config.pool) == ("gelu", "auto")
    assert model.fc_norm is None and model.norm is not None and model.cls_token is not None
    assert model.blocks[0].mlp.act.approximate == "none"
    assert "fc_norm.weight" not in model.state_dict()


def test_mean_pool_needs_a_scheme_that_runs_without_cls() -> None:
    from vattn_cli.zoo import create_model

    tiny = dict(size="tiny", frames=2, img_size=32, patch=16, num_classes=3)
    for scheme in ("divided", "space"):
        with pytest.raises(ValueError, match="pool 'mean' needs a scheme that runs without a CLS token"):
            create_model(scheme, pool="mean", **tiny)
    video = torch.randn(1, 3, 2, 32, 32)
    for scheme in ("joint", "factorised_dot"):
        model = create_model(scheme, pool="mean", **tiny).eval()
        assert model.cls_token is None and model.norm is None
        with torch.no_grad():
            x, grid = model.embed(video)
            assert x.shape[1] == grid.patches  # no CLS token in the layout
            for block in model.blocks:
                x = block(x, grid)
            assert torch.allclose(model(video), model.head(model.fc_norm(x.mean(1))))
    with pytest.raises(ValueError, match="pool must be one of"):
        create_model("joint", pool="max", **tiny)
    with pytest.raises(ValueError, match="mlp_act must be one of"):
        create_model("joint", mlp_act="relu", **tiny)
    tanh = create_model("joint", mlp_act="gelu_tanh", **tiny)
    assert all(block.mlp.act.approximate == "tanh" for block in tanh.blocks)
