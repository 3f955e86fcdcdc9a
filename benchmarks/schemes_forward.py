"""Forward time and peak memory of registered schemes, each in a fresh subprocess.

Why subprocesses: peak RSS (``ru_maxrss``) only ever grows within a process, so each scheme's
peak is measured in its own fresh interpreter, as the growth from its RSS after importing torch
and vattn (the baseline) to its peak over building the model and running the forwards. Timing
runs in the same child; ``--rounds`` interleaves the schemes several times and keeps each one's
best median, which tames the noise of a shared machine. Times are also given relative to
``--baseline`` (``divided`` by default), the figure to quote on noisy machines.

Examples:
    python benchmarks/schemes_forward.py --schemes divided,local_global,axial --repeats 3
    python benchmarks/schemes_forward.py --schemes local_global,axial --frames 96 \\
        --warmup 0 --repeats 1 --limit-gb 8
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _max_rss_mb() -> float:
    """This process's peak resident set so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> dict:
    """Runs in the child: build one model, time its forwards, report peak memory."""
    import torch

    from vattn_cli.zoo import create_model, token_count

    torch.set_num_threads(args.threads)
    base_mb = _max_rss_mb()
    model = create_model(args.worker, size=args.size, frames=args.frames, img_size=args.img_size,
                         patch=args.patch, num_classes=args.num_classes).eval()
    video = torch.randn(args.batch, 3, args.frames, args.img_size, args.img_size)
    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.repeats):
            start = time.perf_counter()
            model(video)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    peak_mb = _max_rss_mb()
    return {
        "scheme": args.worker, "size": args.size, "frames": args.frames, "img_size": args.img_size,
        "tokens": token_count(args.worker, args.frames, args.img_size, args.patch), "batch": args.batch,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "forward_ms": 1e3 * statistics.median(times), "base_rss_mb": base_mb, "peak_rss_mb": peak_mb,
        "peak_mem_mb": peak_mb - base_mb, "status": "ok",
    }


def run_child(scheme: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", scheme]
    for flag in ("size", "frames", "img_size", "patch", "num_classes", "batch", "warmup", "repeats", "threads"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return {"scheme": scheme, "status": f"error: {reason}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemes", default="all", help="comma-separated registered schemes, or 'all'")
    parser.add_argument("--size", default="base")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--num-classes", type=int, default=400)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved sweeps; best median kept")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baseline", default="divided", help="scheme the times are divided by")
    parser.add_argument("--limit-gb", type=float, default=None,
                        help="fail (exit 1) if a scheme's peak memory exceeds this many GB")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the rows as JSON here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        print(json.dumps(worker(args)))
        return 0

    from vattn_cli.zoo import list_schemes

    schemes = list_schemes() if args.schemes == "all" else [s.strip() for s in args.schemes.split(",") if s.strip()]
    unknown = [s for s in schemes if s not in list_schemes()]
    if unknown:
        parser.error(f"unknown scheme(s) {', '.join(unknown)}; accepted: {', '.join(list_schemes())}")
    best: dict[str, dict] = {}
    for _ in range(args.rounds):
        for scheme in schemes:
            row = run_child(scheme, args)
            print(f"# {scheme}: {row.get('forward_ms', float('nan')):.0f} ms, {row['status']}", file=sys.stderr)
            kept = best.get(scheme)
            if kept is None or (row["status"] == "ok" and
                                (kept["status"] != "ok" or row["forward_ms"] < kept["forward_ms"])):
                best[scheme] = row
    rows = [best[s] for s in schemes]
    ref = best.get(args.baseline, {}).get("forward_ms")
    failed = False
    for row in rows:
        if row["status"] != "ok":
            failed = True
            continue
        if ref:
            row["vs_baseline"] = row["forward_ms"] / ref
        if args.limit_gb is not None:
            row["within_limit"] = row["peak_mem_mb"] <= args.limit_gb * 1024
            failed |= not row["within_limit"]

    import pandas as pd

    frame = pd.DataFrame(rows)
    print(f"{args.size}, {args.frames}x{args.img_size}, patch {args.patch}, batch {args.batch}, "
          f"{args.threads} threads, fp32 CPU, {args.repeats} repeats x {args.rounds} rounds; "
          f"peak_mem_mb = peak RSS - RSS after imports (fresh process per scheme)")
    print(frame.drop(columns=["size", "frames", "img_size"], errors="ignore").to_string(index=False, float_format="%.2f"))
    if args.json_path:
        Path(args.json_path).write_text(frame.to_json(orient="records", indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
