"""Training FLOPs (``--mode train`` rows) against the forward count, and against raw FlopCounterMode.

For every scheme: the forward count (fvcore, what ``--mode infer`` rows report), the counted
forward + backward (``count_model_flops(mode="train")``), their ratio (3 would be "backward =
twice the forward"; less, because the patch embedding's input needs no gradient and LayerNorm,
which fvcore counts at 5 per element in the forward, has no formula in FlopCounterMode), the
attention ratio (3 where both operands of every attention product need a gradient), and what
FlopCounterMode gives without our formulas: on torch 2.13's CPU build it counts CPU flash
attention as zero and a grouped convolution's weight gradient ``groups`` times over.

Run: python benchmarks/train_flops.py [--model tiny] [--frames 8] [--size 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vattn_cli.measure.flops import count_model_flops  # noqa: E402
from vattn_cli.zoo import create_model, list_schemes  # noqa: E402


def raw_flop_counter(model: torch.nn.Module, frames: int, size: int) -> int:
    """Plain FlopCounterMode on the full model, halved to multiply-adds."""
    model.train()
    video = torch.randn(1, 3, frames, size, size)
    with FlopCounterMode(display=False) as counter:
        model(video).sum().backward()
    return counter.get_total_flops() // 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    print(f"{args.model} {args.frames}x{args.size}, per clip, multiply-adds (GFLOPs)")
    print(f"{'scheme':14s} {'forward':>9s} {'train':>9s} {'ratio':>6s} {'attn ratio':>10s} {'raw FCM':>9s} {'count s':>7s}")
    for scheme in list_schemes():
        model = create_model(scheme, size=args.model, frames=args.frames, img_size=args.size)
        forward = count_model_flops(model)
        start = time.perf_counter()
        train = count_model_flops(model, mode="train")
        seconds = time.perf_counter() - start
        raw = raw_flop_counter(model, args.frames, args.size)
        print(f"{scheme:14s} {forward.gflops:9.4f} {train.gflops:9.4f} {train.total / forward.total:6.3f} "
              f"{train.attn / forward.attn:10.3f} {raw / 1e9:9.4f} {seconds:7.2f}")


if __name__ == "__main__":
    main()
