"""Forward time of vattn's backbone against Hugging Face's TimeSformer: same weights, same clip.

For each scheme a randomly initialised HF ``TimesformerForVideoClassification`` (base, 8x224,
400 classes by default) is saved to a temporary folder and loaded with
``vattn_cli.zoo.load_checkpoint``; both then classify the same clip in fp32 on the CPU. The two
models are timed alternately (so drift on a shared machine hits both alike) after warm-up;
the table gives the medians, their ratio and the largest logit difference as a sanity check.

    python benchmarks/forward_vs_hf.py                      # all three schemes, 5 repeats
    python benchmarks/forward_vs_hf.py --schemes joint --repeats 3

``hf_over_ours`` above 1 means vattn is faster. For ``space`` HF classifies each frame; the
difference is taken against the official frame-averaged head computed from HF's encoder.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from vattn_cli.zoo import load_checkpoint

ATTENTION = {"divided": "divided_space_time", "space": "space_only", "joint": "joint_space_time"}


def build_hf(scheme: str, frames: int, size: int):
    from transformers import TimesformerConfig, TimesformerForVideoClassification

    config = TimesformerConfig(num_frames=frames, image_size=size, num_labels=400, attention_type=ATTENTION[scheme])
    return TimesformerForVideoClassification(config).eval()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def compare(scheme: str, frames: int, size: int, batch: int, warmup: int, repeats: int) -> dict:
    hf = build_hf(scheme, frames, size)
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        ours = load_checkpoint(folder)
    video = torch.randn(batch, 3, frames, size, size)
    pixels = video.transpose(1, 2).contiguous()  # HF takes [B, T, C, H, W]

    captured = {}
    hook = hf.timesformer.encoder.register_forward_hook(lambda m, i, o: captured.update(tokens=o[0]))
    with torch.inference_mode():
        ours_logits, hf_logits = ours(video), hf(pixel_values=pixels).logits
        hook.remove()
        if scheme == "space":  # official head: average the frames' tokens, then norm, CLS, head
            tokens = captured["tokens"].reshape(batch, frames, *captured["tokens"].shape[1:]).mean(1)
            hf_logits = hf.classifier(hf.timesformer.layernorm(tokens)[:, 0])
        diff = (ours_logits - hf_logits).abs().max().item()
        for _ in range(max(0, warmup - 1)):
            ours(video), hf(pixel_values=pixels)
        ours_ms, hf_ms = [], []
        for r in range(repeats):
            runs = [(ours_ms, lambda: ours(video)), (hf_ms, lambda: hf(pixel_values=pixels))]
            for sink, fn in runs if r % 2 == 0 else runs[::-1]:
                sink.append(timed(fn))
    ours_med, hf_med = statistics.median(ours_ms), statistics.median(hf_ms)
    return {
        "scheme": scheme, "frames": frames, "size": size, "batch": batch,
        "ours_ms": ours_med, "hf_ms": hf_med, "hf_over_ours": hf_med / ours_med, "max_abs_diff": diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schemes", default="divided,space,joint", help="comma-separated (divided,space,joint)")
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards of each model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards first (>= 1)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 CPU, "
          f"median of {args.repeats} after {args.warmup} warm-up", flush=True)
    header = f"{'scheme':<8} {'frames':>6} {'size':>5} {'ours_ms':>10} {'hf_ms':>10} {'hf_over_ours':>13} {'max_abs_diff':>13}"
    print(header, flush=True)
    for scheme in [s.strip() for s in args.schemes.split(",") if s.strip()]:
        if scheme not in ATTENTION:
            parser.error(f"invalid scheme {scheme!r}; accepted: {', '.join(ATTENTION)}")
        row = compare(scheme, args.frames, args.size, args.batch, args.warmup, args.repeats)
        print(f"{row['scheme']:<8} {row['frames']:>6} {row['size']:>5} {row['ours_ms']:>10.1f} {row['hf_ms']:>10.1f} "
              f"{row['hf_over_ours']:>13.3f} {row['max_abs_diff']:>13.2e}", flush=True)


if __name__ == "__main__":
    main()
