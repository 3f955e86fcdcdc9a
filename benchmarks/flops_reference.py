"""Our FLOP counts against independent references, and what counting costs.

References:
* fvcore with its default handles on the Hugging Face TimeSformer (attention as explicit
  matmuls), full depth, randomly initialised (nothing downloaded);
* MMAction2 model zoo, per view ("1 clip x 3 crop" rows of configs/recognition/timesformer/
  README.md): divST 196G, jointST 180G, spaceOnly 141G at 8x224;
* the TimeSformer paper (Bertasius et al., ICML 2021), Table 5, inference TFLOPs for 3 views
  (1 clip x 3 spatial crops): TimeSformer 0.59, TimeSformer-HR 5.11, TimeSformer-L 7.14.

Run: python benchmarks/flops_reference.py [--no-hf] [--forward]
``--forward`` also times one forward pass of the 96-frame model to compare with the count's
cost (minutes on a small CPU).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vattn_cli.measure.flops import count_flops, count_model_flops  # noqa: E402
from vattn_cli.zoo import create_model  # noqa: E402

HF_TYPES = {"divided": "divided_space_time", "space": "space_only", "joint": "joint_space_time"}
# (scheme, frames, img, published per-view GFLOPs, source)
CASES = [
    ("divided", 8, 224, 196.0, "MMAction2 divST"),
    ("joint", 8, 224, 180.0, "MMAction2 jointST"),
    ("space", 8, 224, 141.0, "MMAction2 spaceOnly"),
    ("divided", 8, 224, 590.0 / 3, "paper T5 TimeSformer 0.59T/3"),
    ("divided", 16, 224, None, ""),
    ("divided", 16, 448, 5110.0 / 3, "paper T5 TimeSformer-HR 5.11T/3"),
    ("divided", 96, 224, 7140.0 / 3, "paper T5 TimeSformer-L 7.14T/3"),
]


def hf_total(scheme: str, frames: int, img: int) -> tuple[int, float]:
    from transformers import TimesformerConfig, TimesformerForVideoClassification

    config = TimesformerConfig(image_size=img, patch_size=16, num_frames=frames, attention_type=HF_TYPES[scheme],
                               num_labels=400)
    model = TimesformerForVideoClassification(config).eval()
    start = time.perf_counter()
    total = count_flops(model, (torch.randn(1, frames, 3, img, img),), extra_handles=False).total
    return total, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-hf", action="store_true", help="skip the full-depth HF traces (slow)")
    parser.add_argument("--forward", action="store_true", help="time one forward pass at 96x224")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(f"{'setting':<18} {'ours GF':>10} {'attn GF':>9} {'count s':>8} {'HF GF':>10} {'vs HF':>9} "
          f"{'HF s':>6} {'published':>10} {'vs pub':>8}  source")
    done: dict[tuple, tuple] = {}
    for scheme, frames, img, published, source in CASES:
        key = (scheme, frames, img)
        if key not in done:
            with torch.device("meta"):
                config = create_model(scheme, size="base", frames=frames, img_size=img).config
            start = time.perf_counter()
            ours = count_model_flops(config)
            took = time.perf_counter() - start
            hf = hf_total(scheme, frames, img) if not args.no_hf and frames * img <= 16 * 224 else None
            done[key] = (ours, took, hf)
        ours, took, hf = done[key]
        hf_text = f"{hf[0] / 1e9:10.3f} {ours.total / hf[0] - 1:+9.2e} {hf[1]:6.1f}" if hf else f"{'-':>10} {'-':>9} {'-':>6}"
        pub = f"{published:10.1f} {ours.gflops / published - 1:+8.2%}" if published else f"{'-':>10} {'-':>8}"
        print(f"{scheme} {frames}x{img:<10} {ours.gflops:10.3f} {ours.attn_gflops:9.3f} {took:8.1f} {hf_text} {pub}  {source}")
    if args.forward:
        model = create_model("timesformer-l").eval()
        video = torch.randn(1, 3, 96, 224, 224)
        start = time.perf_counter()
        with torch.inference_mode():
            model(video)
        print(f"one forward pass at 96x224: {time.perf_counter() - start:.1f} s "
              f"(counting took {done[('divided', 96, 224)][1]:.1f} s)")


if __name__ == "__main__":
    main()
