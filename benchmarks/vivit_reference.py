"""ViViT-B and VideoMAE-B: vattn's parameter and FLOP counts against Hugging Face's models.

For each model a randomly initialised Hugging Face model at its default config (nothing is
downloaded) is saved to a temporary folder and loaded with ``vattn_cli.zoo.load_checkpoint``,
which maps it onto vattn's ``joint`` scheme. The table compares:

* parameters: vattn's model against HF's (VideoMAE's attention has no key bias; vattn's fused
  ``qkv`` holds a zero one, ``dim`` parameters a block more);
* GFLOPs: vattn's counter (``count_model_flops``, the one-block twin ``vattn profile`` uses)
  against fvcore with its default handles tracing HF's whole model with eager attention
  (``attn_implementation="eager"``), so fvcore sees the attention matmuls;
* ``max |dlogit|``: the largest logit difference on one random clip (``--no-forward`` skips it).

Settings: ViViT-B ``google/vivit-b-16x2-kinetics400``'s (HF ``VivitConfig()`` defaults: 32 frames,
tubelet 2, 224 px, patch 16, 400 classes here) and VideoMAE-B's (``VideoMAEConfig()``: 16
frames, tubelet 2, 224 px, patch 16, 400 classes).

Run: python benchmarks/vivit_reference.py [--models vivit,videomae] [--no-forward]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vattn_cli.measure.flops import count_flops, count_model_flops  # noqa: E402
from vattn_cli.zoo import load_checkpoint  # noqa: E402


def build_hf(kind: str):
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if kind == "vivit":
        config = transformers.VivitConfig(num_labels=400, attn_implementation="eager")
        model = transformers.VivitForVideoClassification(config)
    else:
        config = transformers.VideoMAEConfig(num_labels=400, attn_implementation="eager")
        model = transformers.VideoMAEForVideoClassification(config)
    assert model.config._attn_implementation == "eager"
    return model.eval()


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vivit,videomae", help="comma-separated: vivit, videomae")
    parser.add_argument("--no-forward", action="store_true", help="skip the logit comparison (two forward passes)")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    torch.manual_seed(0)
    print(f"{'model':<10} {'setting':<14} {'HF params':>11} {'ours':>11} {'diff':>6} {'fvcore HF GF':>13} "
          f"{'ours GF':>10} {'attn GF':>9} {'vs HF':>9} {'fvcore s':>9} {'ours s':>7} {'max |dlogit|':>13}")
    for kind in args.models.split(","):
        hf = build_hf(kind)
        with tempfile.TemporaryDirectory() as folder:
            hf.save_pretrained(folder)
            ours = load_checkpoint(folder)
        cfg = ours.config
        video = torch.randn(1, 3, cfg.frames, cfg.img_size, cfg.img_size)
        pixels = video.transpose(1, 2).contiguous()  # HF takes [B, T, C, H, W]
        start = time.perf_counter()
        ref = count_flops(hf, (pixels,), extra_handles=False).total
        ref_s = time.perf_counter() - start
        start = time.perf_counter()
        count = count_model_flops(cfg)
        ours_s = time.perf_counter() - start
        diff = "-"
        if not args.no_forward:
            with torch.inference_mode():
                diff = f"{(ours(video) - hf(pixel_values=pixels).logits).abs().max().item():13.2e}"
        setting = f"{cfg.frames}x{cfg.img_size} t{cfg.tubelet}"
        print(f"{kind:<10} {setting:<14} {params(hf):>11,} {params(ours):>11,} {params(ours) - params(hf):>+6} "
              f"{ref / 1e9:13.3f} {count.gflops:10.3f} {count.attn_gflops:9.3f} {count.total / ref - 1:+9.2e} "
              f"{ref_s:9.1f} {ours_s:7.1f} {diff:>13}")
        del hf, ours


if __name__ == "__main__":
    main()
