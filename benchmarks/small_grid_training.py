"""Training step time of rsa and structsa with and without the small-grid matrix forms, interleaved
so all see the same machine: ``conv`` convolves everywhere; ``matrix`` takes
``vattn_cli.zoo.schemes._grid.window_matrix`` for the single-channel window convolutions only;
``frames`` (what training runs) also takes ``_grid.frames_conv`` for rsa's key convolution.

The setting is README's main job: tiny model, 32 px in 8 px patches (4 x 4 grids), batch 8,
one thread (what each of ``--jobs 2``'s runs gets on a 2-core machine), AdamW steps.

    PYTHONPATH=. python benchmarks/small_grid_training.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vattn_cli.zoo.schemes._grid as grid_module  # noqa: E402
from vattn_cli.zoo import create_model  # noqa: E402


MODES = {"conv": (0, 0), "matrix": (256, 0), "frames": (256, 2**24)}  # MATRIX_TOKENS, FRAMES_MATRIX_NUMBERS


def step_ms(scheme: str, frames: int, mode: str, steps: int) -> float:
    grid_module.MATRIX_TOKENS, grid_module.FRAMES_MATRIX_NUMBERS = MODES[mode]
    torch.manual_seed(0)
    model = create_model(scheme, size="tiny", frames=frames, img_size=32, patch=8, num_classes=8)
    opt = torch.optim.AdamW(model.parameters(), 5e-4)
    video, label = torch.randn(8, 3, frames, 32, 32), torch.randint(0, 8, (8,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(video), label)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemes", default="rsa,structsa")
    parser.add_argument("--frames", default="4,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'scheme':10s} {'frames':>6s}" + "".join(f" {mode + ' ms':>10s}" for mode in MODES) + "  conv/frames matrix/frames")
    for scheme in args.schemes.split(","):
        for frames in map(int, args.frames.split(",")):
            times: dict[str, list[float]] = {mode: [] for mode in MODES}
            for _ in range(args.rounds):
                for mode in MODES:
                    times[mode].append(step_ms(scheme, frames, mode, args.steps))
            ms = {mode: statistics.median(values) for mode, values in times.items()}
            print(f"{scheme:10s} {frames:6d}" + "".join(f" {ms[mode]:10.1f}" for mode in MODES)
                  + f"  {ms['conv'] / ms['frames']:10.2f}x {ms['matrix'] / ms['frames']:11.2f}x", flush=True)


if __name__ == "__main__":
    main()
