"""Parity with an outside implementation: Hugging Face's TimeSformer, same weights, same clip.

Every HF parameter is perturbed away from its initial value first, so LayerNorms, the time
embedding and the temporal projection (zero or identity at init) all take part: a swapped or
dropped tensor in the name mapping changes the logits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from vattn_cli.zoo import load_checkpoint
from vattn_cli.zoo.checkpoints import export_pyth, read_checkpoint

transformers = pytest.importorskip("transformers")
transformers.utils.logging.disable_progress_bar()

ATTENTION = {"divided": "divided_space_time", "space": "space_only", "joint": "joint_space_time"}
FRAMES, SIZE, PATCH, CLASSES = 3, 32, 8, 5
TOL = 1e-4


def make_hf(scheme: str, folder: Path):
    """A randomly initialised HF TimeSformer at a small config, saved to ``folder``."""
    config = transformers.TimesformerConfig(
        image_size=SIZE, patch_size=PATCH, num_frames=FRAMES, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=128, num_labels=CLASSES, attention_type=ATTENTION[scheme],
    )
    hf = transformers.TimesformerForVideoClassification(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(folder)
    return hf


@torch.no_grad()
def hf_logits(hf, video: torch.Tensor) -> torch.Tensor:
    """HF's logits for our ``[B, C, T, H, W]`` clip (HF takes ``[B, T, C, H, W]``).

    For ``space_only`` HF classifies every frame; the official model averages the encoder's
    tokens over frames, then applies the final LayerNorm, takes CLS and the head. That is
    computed here from HF's own encoder output.
    """
    b, _, t = video.shape[:3]
    pixels = video.transpose(1, 2)
    if hf.config.attention_type != "space_only":
        return hf(pixel_values=pixels).logits
    body = hf.timesformer
    tokens = body.encoder(body.embeddings(pixels)).last_hidden_state  # [B*T, 1+N, D]
    tokens = tokens.reshape(b, t, *tokens.shape[1:]).mean(1)
    return hf.classifier(body.layernorm(tokens)[:, 0])


@pytest.fixture(params=list(ATTENTION))
def hf_model(request, tmp_path):
    scheme = request.param
    folder = tmp_path / f"hf-{scheme}"
    return scheme, make_hf(scheme, folder), folder


def test_hf_folder_loads_with_same_logits(hf_model) -> None:
    scheme, hf, folder = hf_model
    model = load_checkpoint(folder)
    cfg = model.config
    assert (cfg.scheme, cfg.dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio) == (scheme, 64, 2, 4, 2.0)
    assert (cfg.frames, cfg.img_size, cfg.patch, cfg.num_classes) == (FRAMES, SIZE, PATCH, CLASSES)
    assert not model.training
    video = torch.randn(2, 3, FRAMES, SIZE, SIZE)
    with torch.no_grad():
        ours = model(video)
    ref = hf_logits(hf, video)
    assert ours.shape == ref.shape == (2, CLASSES)
    assert (ours - ref).abs().max().item() < TOL


def test_official_pyth_layout_loads_with_same_logits(hf_model, tmp_path) -> None:
    scheme, hf, folder = hf_model
    model = load_checkpoint(folder)
    video = torch.randn(1, 3, FRAMES, SIZE, SIZE)
    ref = hf_logits(hf, video)
    for with_cfg in (True, False):
        path = export_pyth(model, tmp_path / f"{scheme}-{with_cfg}.pyth", with_cfg=with_cfg)
        raw = read_checkpoint(path)
        assert all(k.startswith("model.") for k in raw["model_state"])
        if with_cfg:
            assert yaml.safe_load(raw["cfg"])["TIMESFORMER"]["ATTENTION_TYPE"] == ATTENTION[scheme]
        # The official code's width is ViT's (heads of 64); this small model has heads of 16.
        loaded = load_checkpoint(path, num_heads=4)
        assert loaded.config.scheme == scheme and loaded.config.num_classes == CLASSES
        if scheme != "space" or with_cfg:  # a space model's frames come from cfg only
            assert loaded.config.frames == FRAMES
        with torch.no_grad():
            ours = loaded(video)
        assert (ours - ref).abs().max().item() < TOL
        assert torch.equal(ours, model(video).detach())


@pytest.mark.parametrize("frames, size", [(5, 48), (2, 24)])
def test_other_frames_and_sizes_match_hf_interpolation(hf_model, frames: int, size: int) -> None:
    """Resized embeddings (at load time, and on the fly) equal HF's nearest interpolation."""
    scheme, hf, folder = hf_model
    if scheme == "divided":
        # HF's divided layer reshapes by config.num_frames/image_size rather than by the clip;
        # its embeddings already interpolate, so point the layer at the clip's setting.
        hf.config.num_frames, hf.config.image_size = frames, size
    video = torch.randn(1, 3, frames, size, size)
    ref = hf_logits(hf, video)

    resized = load_checkpoint(folder, frames=frames, img_size=size)
    assert (resized.config.frames, resized.config.img_size) == (frames, size)
    assert resized.pos_embed.shape[1] == 1 + (size // PATCH) ** 2
    if scheme != "space":
        assert resized.time_embed.shape[1] == frames
    on_the_fly = load_checkpoint(folder)
    with torch.no_grad():
        assert (resized(video) - ref).abs().max().item() < TOL
        assert (on_the_fly(video) - ref).abs().max().item() < TOL


def test_hf_pytorch_model_bin_and_fresh_head(tmp_path) -> None:
    hf = make_hf("joint", tmp_path / "st")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    torch.save(hf.state_dict(), bin_dir / "pytorch_model.bin")
    video = torch.randn(1, 3, FRAMES, SIZE, SIZE)
    with torch.no_grad():
        assert (load_checkpoint(bin_dir)(video) - hf_logits(hf, video)).abs().max().item() < TOL
        fresh = load_checkpoint(bin_dir, num_classes=11)
        assert fresh(video).shape == (1, 11) and fresh.config.num_classes == 11
        # Everything but the head is the file's.
        assert torch.equal(fresh.pos_embed, load_checkpoint(bin_dir).pos_embed)
