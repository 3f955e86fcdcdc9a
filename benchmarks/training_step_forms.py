"""Training step time of README's main job models with and without each of the cheaper forms that
training takes, interleaved in one process so both sides see the same machine (this VM's speed
drifts by 10-40% between processes, far more than within one).

Forms (``--forms``; each compares the form as shipped against what it replaced):

- ``adamw``: AdamW's fused kernel against torch's default foreach implementation;
- ``qkv``: ``Attention.qkv_heads`` splitting q, k, v with ``unbind`` against three selects (each
  select's backward zero-fills a whole-size gradient);
- ``trajectory``: trajectory attention's N x N score matrix for small training grids against its
  chunked per-key-frame kernel calls (``_grid.MATRIX_TOKENS = 0``);
- ``rsa-values``: rsa's two value convolutions as one ``frames_conv`` on clips of more frames than
  the window spans against the whole-grid window matrices.

The setting is README's main job: tiny model, 32 px in 8 px patches (4 x 4 grids), batch 8, one
thread (what each of ``--jobs 2``'s runs gets on a 2-core machine), AdamW 5e-4.

    PYTHONPATH=. python benchmarks/training_step_forms.py --rounds 6
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vattn_cli.engine.optim import param_groups  # noqa: E402
from vattn_cli.zoo import create_model, layers  # noqa: E402
import vattn_cli.zoo.schemes._grid as grid_module  # noqa: E402
from vattn_cli.zoo.schemes import rsa  # noqa: E402

#: form -> the schemes it is measured on (each at every --frames)
FORMS = {
    "adamw": ["joint"],
    "qkv": ["joint", "divided", "axial"],
    "trajectory": ["trajectory"],
    "rsa-values": ["rsa"],
}


def _select_qkv(self, x):  # what Attention.qkv_heads did before
    qkv = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
    return qkv[0], qkv[1], qkv[2]


@contextmanager
def replaced(obj: object, name: str, value: object) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


_FITS = rsa.frames_conv_fits


def _no_value_frames(weight, grid) -> bool:
    # rsa asks frames_conv_fits for its key convolution (dk * dd = 1024 kernels in the tiny model)
    # and for its two value convolutions together (dd + dv = 64); refuse only the latter
    return False if weight.shape[0] < 128 else _FITS(weight, grid)


def old_side(form: str):
    """A context manager that puts back what ``form`` replaced (the optimizer is chosen apart)."""
    if form == "qkv":
        return replaced(layers.Attention, "qkv_heads", _select_qkv)
    if form == "trajectory":
        return replaced(grid_module, "MATRIX_TOKENS", 0)
    if form == "rsa-values":
        return replaced(rsa, "frames_conv_fits", _no_value_frames)
    return nullcontext()  # adamw: nothing to put back in the model


def compare(form: str, scheme: str, frames: int, rounds: int, steps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = create_model(scheme, size="tiny", frames=frames, img_size=32, patch=8, num_classes=8)
    # adamw compares the optimizers; every other form runs with the fused one on both sides
    optimizers = {side: torch.optim.AdamW(param_groups(model, 0.05), 5e-4,
                                          fused=None if (form == "adamw" and side == "old") else True)
                  for side in ("old", "new")}
    video, label = torch.randn(8, 3, frames, 32, 32), torch.randint(0, 8, (8,))
    times: dict[str, list[float]] = {"old": [], "new": []}

    def run(side: str) -> float:
        optimizer = optimizers[side]
        started = time.perf_counter()
        for _ in range(steps):
            loss = F.cross_entropy(model(video), label)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - started) / steps * 1e3

    for r in range(rounds + 1):  # round 0 warms both sides up
        for side in ("old", "new"):
            with old_side(form) if side == "old" else nullcontext():
                ms = run(side)
            if r:
                times[side].append(ms)
    return statistics.median(times["old"]), statistics.median(times["new"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--frames", default="4,8")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'form':11s} {'scheme':12s} {'frames':>6s} {'old ms':>8s} {'new ms':>8s}  old/new")
    for form in args.forms.split(","):
        for scheme in FORMS[form]:
            for frames in map(int, args.frames.split(",")):
                old, new = compare(form, scheme, frames, args.rounds, args.steps)
                print(f"{form:11s} {scheme:12s} {frames:6d} {old:8.1f} {new:8.1f}  {old / new:6.2f}x", flush=True)


if __name__ == "__main__":
    main()
