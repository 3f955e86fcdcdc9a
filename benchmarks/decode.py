"""Is the video loader fast enough to feed the tiny model on 2 CPU cores?

Measures, at tiny-model settings (default 8 frames of 64 pixels, batch 16):

1. ``loader``: clips/s of ``make_loader`` over real mp4 files (decord decode + sampling +
   transforms + collate), for 0, 1 and 2 workers; one full pass, worker start-up included
   (workers are not persistent, so every epoch pays it);
2. ``train (memory)``: clips/s of the training step alone (forward, backward, AdamW) of
   ``create_model(scheme, size="tiny")`` on a batch already in memory;
3. ``train (loader, wN)``: clips/s of the same training fed by the loader with N workers,
   i.e. what an epoch really costs.

The loader is not the bottleneck when (1) is well above (2) and (3) is close to (2).

    python benchmarks/decode.py                       # synthesises a temporary motion set
    python benchmarks/decode.py --data DIR/train.csv --workers 0,2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vattn_cli.data import VideoClipDataset, make_loader, resolve_data  # noqa: E402
from vattn_cli.data.synth import SynthConfig, synthesize  # noqa: E402
from vattn_cli.zoo import create_model  # noqa: E402


def loader_rate(dataset: VideoClipDataset, batch: int, workers: int) -> float:
    loader = make_loader(dataset, batch_size=batch, shuffle=True, workers=workers, seed=0)
    start, clips = time.perf_counter(), 0
    for b in loader:
        clips += b["video"].shape[0]
    return clips / (time.perf_counter() - start)


def train_rate(model: torch.nn.Module, batches, warmup: int = 2) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    clips, start = 0, None
    for step, (video, label) in enumerate(batches):
        if step == warmup:
            start, clips = time.perf_counter(), 0
        loss = torch.nn.functional.cross_entropy(model(video), label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        clips += video.shape[0]
    return clips / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="a video list (default: synthesise a temporary motion set)")
    ap.add_argument("--clips", type=int, default=96, help="clips to synthesise (default 96)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--scheme", default="divided")
    ap.add_argument("--steps", type=int, default=6, help="timed training steps on in-memory batches")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads of the main process")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    workers = [int(w) for w in args.workers.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            spec = resolve_data(args.data)
        else:
            cfg = SynthConfig(train=args.clips, val=1, frames=args.frames, size=args.size)
            synthesize("motion", Path(tmp) / "motion", cfg)
            spec = resolve_data(str(Path(tmp) / "motion"))
        dataset = VideoClipDataset(spec.items, frames=args.frames, size=args.size, train=True, seed=0)
        print(f"{len(dataset)} clips from {spec.name}, {args.frames}x{args.size}, batch {args.batch}, "
              f"torch threads {torch.get_num_threads()}, scheme {args.scheme} (tiny)")

        rows = []
        for w in workers:
            rows.append((f"loader, {w} workers", loader_rate(dataset, args.batch, w)))

        torch.manual_seed(0)
        model = create_model(args.scheme, size="tiny", frames=args.frames, img_size=args.size,
                             num_classes=spec.num_classes)
        video = torch.randn(args.batch, 3, args.frames, args.size, args.size)
        label = torch.randint(0, spec.num_classes, (args.batch,))
        memory = train_rate(model, [(video, label)] * (args.steps + 2))
        rows.append(("train step, batch in memory", memory))
        for w in workers:
            loader = make_loader(dataset, batch_size=args.batch, shuffle=True, workers=w, seed=0, drop_last=True)
            start, clips = time.perf_counter(), 0
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            for b in loader:
                loss = torch.nn.functional.cross_entropy(model(b["video"]), b["label"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                clips += b["video"].shape[0]
            rows.append((f"train fed by loader, {w} workers", clips / (time.perf_counter() - start)))

    print(f"{'what':36s} {'clips/s':>9s} {'x train step':>13s}")
    for name, rate in rows:
        print(f"{name:36s} {rate:9.1f} {rate / memory:13.2f}")


if __name__ == "__main__":
    main()
