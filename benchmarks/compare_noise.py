"""How noisy is the ``vattn compare`` gate on this machine, and how small a slowdown does it catch?

Profiles the same 6 settings (tiny model; schemes space, joint, divided; 8x64 and 8x96: one
``vattn profile`` command with ``--samples``, a fresh process each time) on a "baseline" and a
"current" side, ``--rounds`` times each, alternating (A B A B ...) so that a change in the machine's
speed hits both sides alike; ``--pairs`` times over. Then, per pair:

- **honest reruns**: compares the two sides with the default rules; how many of the comparisons
  fail (target 0), and which metric failed;
- **injected slowdowns**: makes the current side's step 1.05 ... 1.30 times slower (its wall-clock
  and CPU times, IQR and samples scaled, throughput divided; the reference workload's time left as
  it was, as when the code and not the machine got slower) and counts the comparisons that fail
  and the rows flagged; the smallest factor caught in every comparison is the gate's resolution
  (target 1.15 or less);
- both with one run a side (the first round: a plain "two runs" comparison) and with every round
  (each side a folder of rounds: compare judges each run, takes the median run, pools the
  samples, and needs every current run past every baseline run), at each ``--alphas`` level, on each clock: ``ref`` (the default, ``--clock auto``:
  CPU time in units of the reference workload profile times beside each step), ``cpu`` (CPU
  time alone) and ``wall`` (the wall clock, with the U test, and with IQR bands alone).

Run:  python benchmarks/compare_noise.py [--pairs 10] [--rounds 3] [--out runs/compare_noise] [--reuse]
      [-- profile flags, default: --threads 1 --no-isolate --measure params,flops,latency]
``--reuse`` analyses the CSVs already in ``--out`` without profiling again (``--fail-on`` and
``--factors`` re-judge them under other rules); an interrupted run resumes where it stopped.
Each profile command takes 20 s on a quiet 2-core machine and about a minute on a loaded one
(60 commands for 10 pairs x 3 rounds, as examples/ci/compare.sh runs them: 20 to 60 minutes); the default flags skip the worker
processes, so memory is not measured (pass ``-- --threads 1`` alone to measure it too).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vattn_cli.report.compare import (
    CPU_SAMPLES_COLUMN,
    DEFAULT_ALPHA,
    SAMPLES_COLUMN,
    Results,
    compare,
    parse_rules,
    parse_samples,
    read_results,
)

BASE = ["--model", "tiny", "--scheme", "space,joint,divided", "--frames", "8", "--size", "64,96", "--samples",
        "--quiet"]
DEFAULT_FLAGS = ["--threads", "1", "--no-isolate", "--measure", "params,flops,latency"]
FACTORS = (1.05, 1.10, 1.15, 1.20, 1.30)


def profile_run(path: Path, extra: list[str]) -> float:
    """One profile command's CSV at ``path``; returns the seconds it took."""
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    command = [sys.executable, "-m", "vattn_cli", "profile", *BASE, *extra, "--csv", str(path)]
    subprocess.run(command, cwd=ROOT, check=True)
    return time.perf_counter() - start


def slowed(results: Results, factor: float) -> Results:
    """The same rows, the step ``factor`` slower: its wall-clock and CPU times (samples, median,
    IQR, quartiles) times ``factor``, throughput divided by it; the reference workload's time
    (``ref_cpu_ms``) unchanged, as it is when the code, not the machine, got slower."""
    frame = results.frame.copy()
    for col in ("latency_ms", "latency_iqr_ms", "latency_q1_ms", "latency_q3_ms", "cpu_ms"):
        if col in frame.columns:
            frame[col] = frame[col] * factor
    if "throughput" in frame.columns:
        frame["throughput"] = frame["throughput"] / factor
    for col in (SAMPLES_COLUMN, CPU_SAMPLES_COLUMN):
        if col in frame.columns:
            frame[col] = [None if (s := parse_samples(v)) is None else [x * factor for x in s] for v in frame[col]]
    return Results(results.path, frame, results.folder)


def without_samples(results: Results) -> Results:
    return Results(results.path, results.frame.drop(columns=[SAMPLES_COLUMN, CPU_SAMPLES_COLUMN], errors="ignore"),
                   results.folder)


def comparisons(pairs, prep, factor, alpha, fail_on=None, clock="auto"):
    rules = parse_rules(fail_on)
    return [compare(prep(a), slowed(prep(b), factor) if factor != 1 else prep(b), rules, alpha, clock)
            for a, b in pairs]


def as_space(results: Results, scheme: str) -> Results:
    """The rows of ``scheme`` labelled ``space``: measured timings of a step that does more work."""
    frame = results.frame[results.frame["scheme"] == scheme].assign(scheme="space")
    return Results(results.path, frame.reset_index(drop=True), results.folder)


def real_work(pairs, fail_on) -> None:
    """Real, measured extra work instead of scaled timings: the current side's joint (or divided)
    rows relabelled as space, judged against the baseline's space rows (costs off: only timing)."""
    rules = parse_rules(",".join(filter(None, [fail_on, "gflops:off,params_m:off"])))
    print("\nreal extra work (measured): the current side's rows of a bigger scheme as 'space', against "
          "the baseline's space rows; latency rows flagged (of 2 sizes x pairs):")
    for scheme in ("joint", "divided"):
        comps = [compare(as_space(a, "space"), as_space(b, scheme), rules, DEFAULT_ALPHA) for a, b in pairs]
        ratio = pd.concat([c.frame.loc[c.frame["metric"] == "latency_ms", "change_pct"] for c in comps]).astype(float)
        flagged = sum(int((c.regressions["metric"] == "latency_ms").sum()) for c in comps)
        print(f"  space -> {scheme}: judged change median {ratio.median():+.1f}% (min {ratio.min():+.1f}%, "
              f"max {ratio.max():+.1f}%); comparisons failing {sum(c.failed for c in comps)}/{len(comps)}, "
              f"rows flagged {flagged}/{2 * len(comps)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "runs" / "compare_noise"))
    parser.add_argument("--reuse", action="store_true", help="analyse the runs already in --out")
    parser.add_argument("--alphas", default=f"{DEFAULT_ALPHA:g},0.05")
    parser.add_argument("--fail-on", default=None, help="rules instead of the defaults, e.g. latency_ms:+25%%")
    parser.add_argument("--factors", default=",".join(f"{f:g}" for f in FACTORS), help="injected slowdowns")
    parser.add_argument("flags", nargs="*", help=f"profile flags (after --), default: {' '.join(DEFAULT_FLAGS)}")
    args = parser.parse_args()
    extra = args.flags or DEFAULT_FLAGS
    factors = [float(f) for f in args.factors.split(",")]
    out = Path(args.out)
    first, every = [], []
    for i in range(args.pairs):
        sides = {side: out / f"pair{i:02d}" / side for side in ("baseline", "current")}
        if not args.reuse:
            took = 0.0
            for r in range(args.rounds):
                for side in ("baseline", "current"):
                    if not (sides[side] / f"round{r}.csv").exists():  # an interrupted benchmark resumes
                        took += profile_run(sides[side] / f"round{r}.csv", extra)
            print(f"pair {i + 1}/{args.pairs}: {args.rounds} rounds a side in {took:.0f} s", file=sys.stderr,
                  flush=True)
        first.append(tuple(read_results(sides[s] / "round0.csv") for s in ("baseline", "current")))
        every.append(tuple(read_results(sides[s]) for s in ("baseline", "current")))
    rounds = len(every[0][0].frame) // len(first[0][0].frame)
    print(f"{len(first)} pairs, 6 settings (tiny; space, joint, divided; 8x64, 8x96), {rounds} rounds a side "
          f"(alternating); profile {' '.join(BASE + extra)}")
    repeats = pd.concat([a.frame["repeats"] for a, _ in every])
    print(f"repeats per setting: {int(repeats.min())} to {int(repeats.max())}; median latency "
          f"{pd.concat([a.frame['latency_ms'] for a, _ in every]).median():.1f} ms")
    for name, pairs in (("1 run a side", first), (f"{rounds} runs a side", every)):
        for clock in ("ref", "cpu", "wall"):
            drift = pd.concat([c.frame.loc[c.frame["metric"] == "latency_ms", "change_pct"].abs().astype(float)
                               for c in comparisons(pairs, lambda r: r, 1, DEFAULT_ALPHA, clock=clock)])
            print(f"honest latency_ms change per setting, {name}, {clock} clock: median {drift.median():.1f}%, "
                  f"90th percentile {drift.quantile(0.9):.1f}%, max {drift.max():.1f}% (of {len(drift)})")
    table = []
    variants = (("ref", "U test", lambda r: r), ("cpu", "U test", lambda r: r), ("wall", "U test", lambda r: r),
                ("wall", "IQR bands", without_samples))
    for name, pairs in (("1 run", first), (f"{rounds} runs", every)):
        for alpha in [float(x) for x in args.alphas.split(",")]:
            for clock, evidence, prep in variants:
                honest = comparisons(pairs, prep, 1, alpha, args.fail_on, clock)
                failed = [c for c in honest if c.failed]
                metrics = sorted({m for c in failed for m in c.regressions["metric"]})
                flagged = sum(int((c.regressions["metric"] == "latency_ms").sum()) for c in honest)
                row = {"side": name, "alpha": alpha, "clock": clock, "evidence": evidence,
                       "honest fails": f"{len(failed)}/{len(pairs)} ({flagged}/{6 * len(pairs)})"
                       + (f" {', '.join(metrics)}" if metrics else "")}
                all_fail = all_rows = None
                for factor in factors:
                    comps = comparisons(pairs, prep, factor, alpha, args.fail_on, clock)
                    flagged = sum(int((c.regressions["metric"] == "latency_ms").sum()) for c in comps)
                    fails = sum(c.failed for c in comps)
                    row[f"x{factor:.2f}"] = f"{fails}/{len(pairs)} ({flagged}/{6 * len(pairs)})"
                    if all_fail is None and fails == len(pairs):
                        all_fail = factor
                    if all_rows is None and flagged == 6 * len(pairs):
                        all_rows = factor
                row["all fail from"] = f"x{all_fail:.2f}" if all_fail else "-"
                row["all rows from"] = f"x{all_rows:.2f}" if all_rows else "-"
                table.append(row)
    print(f"\nrules: {', '.join(r.text() for r in parse_rules(args.fail_on).values())}")
    print("comparisons that fail (of pairs); in brackets, latency rows flagged (of 6 settings x pairs); "
          "clock ref is the default (--clock auto):")
    print(pd.DataFrame(table).to_string(index=False))
    real_work(every, args.fail_on)


if __name__ == "__main__":
    main()
