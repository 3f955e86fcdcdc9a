"""Start-up time of the ``vattn`` command: help, version and usage errors, which import no torch.

Runs each invocation N times (a fresh process each, as a shell or CI would) and prints the median
and fastest wall time, the exit code, and the heavy modules (torch, pandas, matplotlib) that the
invocation imported (from ``python -X importtime``; "none" is the point).

Measured on the 2-core CI machine, median of 10: ``vattn --help`` 2.05 s and ``vattn profile
--frames 0`` 2.03 s before the CLI imported torch and pandas lazily; see CHANGELOG for after.

Run: python benchmarks/startup.py [--runs 10] [--python]  (--python: ``python -m vattn_cli``
instead of the ``vattn`` console script)
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time

INVOCATIONS = [
    ["--help"],
    ["profile", "--frames", "0"],
    ["--version"],
    ["profile", "--help"],
    ["zoo", "--help"],
    ["ablate", "tokens", "--help"],
    ["ablate", "schemes", "--help"],
    ["train", "--help"],
    ["eval", "--help"],
    ["data", "synth", "--help"],
    ["profile", "--scheme", "bogus"],
    ["profile", "--scheme", "divided", "--dtype", "fp64"],
    ["zoo", "--model", "huge"],
]
HEAVY = ("torch", "pandas", "matplotlib")


def heavy_imports(args: list[str]) -> list[str]:
    """The heavy top-level modules ``vattn ARGS`` imports."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "vattn_cli", *args], capture_output=True, text=True)
    found = {m.group(1) for m in re.finditer(r"\|\s+(\w+)$", out.stderr, re.MULTILINE)}
    return [name for name in HEAVY if name in found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--python", action="store_true", help="time python -m vattn_cli, not the console script")
    args = parser.parse_args()
    script = shutil.which("vattn")
    prefix = [sys.executable, "-m", "vattn_cli"] if args.python or script is None else [script]
    print(f"{'invocation':<46} {'median':>8} {'min':>8}  rc  heavy imports")
    for invocation in INVOCATIONS:
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            done = subprocess.run([*prefix, *invocation], capture_output=True)
            times.append(time.perf_counter() - start)
        label = "vattn " + " ".join(invocation)
        heavy = ", ".join(heavy_imports(invocation)) or "none"
        print(f"{label:<46} {statistics.median(times):7.3f}s {min(times):7.3f}s  {done.returncode:>2}  {heavy}")


if __name__ == "__main__":
    main()
