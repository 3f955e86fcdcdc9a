"""Timing noise of ``vattn profile`` and the command's overhead.

Runs the same ``vattn profile`` command N times (each a fresh process, as a user or CI would) and
reports, per run: the median latency, IQR/median (noise within a run), the command's whole wall
time and the time spent in timed runs. Across runs: the spread of the medians (noise between
runs), and overhead = wall time - timed time (interpreter and torch start-up, the worker process,
FLOP counting, model building, warm-up).

Run: python benchmarks/profile_noise.py [--runs 5] [-- extra profile flags]
Default setting: divided, tiny, 8x224, batch 1, --repeats auto.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["--scheme", "divided", "--model", "tiny", "--frames", "8", "--size", "224"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("flags", nargs="*", help="profile flags (after --) replacing the default setting")
    args = parser.parse_args()
    flags = args.flags or DEFAULT
    command = [sys.executable, "-m", "vattn_cli", "profile", *flags, "--csv", "-", "--quiet"]
    print("command:", " ".join(command[1:]))
    rows = []
    for i in range(args.runs):
        start = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
        wall = time.perf_counter() - start
        row = pd.read_csv(io.StringIO(out.stdout)).iloc[0]
        rows.append({"run": i + 1, "median_ms": row["latency_ms"], "iqr_ms": row["latency_iqr_ms"],
                     "iqr_over_median": row["latency_iqr_ms"] / row["latency_ms"], "repeats": row["repeats"],
                     "timed_s": row["timed_s"], "worker_s": row["wall_s"], "wall_s": wall,
                     "overhead_s": wall - row["timed_s"],
                     "timed_share": row["timed_s"] / wall})
    frame = pd.DataFrame(rows)
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    medians = frame["median_ms"]
    print(f"within-run noise  IQR/median: median {frame['iqr_over_median'].median():.3f}, "
          f"max {frame['iqr_over_median'].max():.3f}")
    print(f"between-run noise of the median: stdev/mean {statistics.stdev(medians) / medians.mean():.3f}, "
          f"(max-min)/median {(medians.max() - medians.min()) / medians.median():.3f}")
    print(f"overhead: median {frame['overhead_s'].median():.1f} s per command; timed runs are "
          f"{frame['timed_share'].median():.0%} of the wall time")


if __name__ == "__main__":
    main()
