"""Does the built-in benchmark say what it should? Linear probes on the loader's clips.

Two logistic-regression probes on pooled pixels of the built-in sets (as the loader gives
them, test-time views), trained on ``train`` and scored on ``val``:

- ``order-aware``: features keep the frame axis (pixels pooled to 8x8 per frame), so the
  probe can weigh early frames against late ones;
- ``order-blind``: the same features averaged over frames, the most a model that cannot relate
  frames (space-only attention) can see about time.

On ``motion`` the order-aware probe should be near 100% (the task is learnable from the
decoded clips; direction is even linear in the pixels) and the order-blind one at chance on
direction within each reversal pair (50%). It prints accuracy at the reversal pair (axis) and
at the direction within the right pair. (On ``appearance`` a linear probe is weak either way:
shape at a random position needs non-linear features; a tiny ViT learns it.)

    python benchmarks/synth_probe.py                 # default builtin set, in a temporary cache
    python benchmarks/synth_probe.py --data builtin:appearance
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vattn_cli.data import VideoClipDataset, resolve_data  # noqa: E402


def features(spec, frames: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ds = VideoClipDataset(spec.items, frames=frames, size=size, train=False)
    clips = torch.stack([ds[i]["video"][0] for i in range(len(ds))])  # [N, 3, T, S, S]
    pooled = torch.nn.functional.adaptive_avg_pool3d(clips, (frames, 8, 8))
    return pooled, torch.tensor([item.label for item in spec.items])


def probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, classes: int) -> torch.Tensor:
    torch.manual_seed(0)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    model = torch.nn.Linear(train_x.shape[1], classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(400):
        loss = torch.nn.functional.cross_entropy(model((train_x - mean) / std), train_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model((val_x - mean) / std).argmax(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="builtin:motion", help="comma-separated --data values")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as cache:
        for data in args.data.split(","):
            train = resolve_data(data, split="train", cache_dir=cache)
            val = resolve_data(data, split="val", cache_dir=cache)
            (tx, ty), (vx, vy) = features(train, args.frames, args.size), features(val, args.frames, args.size)
            for name, (a, b) in {"order-aware": (tx.flatten(1), vx.flatten(1)),
                                 "order-blind": (tx.mean(2).flatten(1), vx.mean(2).flatten(1))}.items():
                pred = probe(a, ty, b, train.num_classes)
                line = f"{data:20s} {name:12s} val top-1 {(pred == vy).float().mean():.3f}"
                pairs = train.meta.get("reversal_pairs")
                if pairs:
                    pair_of = {k: i for i, pair in enumerate(pairs) for k in pair}
                    same_pair = torch.tensor([pair_of[int(p)] == pair_of[int(y)] for p, y in zip(pred, vy)])
                    direction = (pred == vy)[same_pair].float().mean()
                    line += f"   pair {same_pair.float().mean():.3f}   direction within pair {direction:.3f}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
