"""Quickstart: build every registered scheme, run a clip through it, resize on the fly.

Run: python examples/quickstart.py
Uses the library directly (no CLI): the same calls the commands make.
"""

from __future__ import annotations

import torch

from vattn_cli.zoo import create_model, list_schemes, token_count
from vattn_cli.zoo.info import count_params


def main() -> None:
    torch.manual_seed(0)
    clip = torch.randn(1, 3, 8, 64, 64)  # [B, C, T, H, W]
    print(f"{'scheme':<14}{'params (base)':>16}{'tokens (tiny 8x64)':>20}  logits")
    for scheme in list_schemes():
        model = create_model(scheme, size="tiny", frames=8, img_size=64, num_classes=10).eval()
        with torch.no_grad():
            logits = model(clip)
        base_params = count_params(scheme, size="base")  # counted on the meta device: instant
        tokens = token_count(scheme, 8, 64, 16)
        print(f"{scheme:<14}{base_params / 1e6:>15.1f}M{tokens:>20}  {tuple(logits.shape)}")

    # A model built for 8 frames at 64 px also runs 16 frames at 96 px: its position
    # embeddings are resized (nearest, as the official TimeSformer code does).
    model = create_model("divided", size="tiny", frames=8, img_size=64, num_classes=10).eval()
    with torch.no_grad():
        print("divided at 16x96:", tuple(model(torch.randn(1, 3, 16, 96, 96)).shape))


if __name__ == "__main__":
    main()
