"""Fault injection: SIGKILL and SIGINT a small `ablate tokens` sweep at many points drawn across its
run (start-up, measuring, row writes, plotting), `--resume` it, and check the rows equal an
uninterrupted run's, each exactly once, with no temporary file, lock or worker folder left.

The same for a tiny `ablate schemes` study (its rows, accuracy and training loss included) and
for `train` (in-memory random clips, tests/_fake_data_cli.py): killed at points drawn across the
run, resumed, its final rows, or weights and metrics, must equal an uninterrupted run's.

Each test prints the count of kill points tried and of those that lost or duplicated anything (target 0).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from vattn_cli.cli import main
from vattn_cli.measure import isolate

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
SWEEP = ["ablate", "tokens", "--schemes", "joint,space", "--model", "tiny", "--frames", "2,4", "--sizes", "32",
         "--measure", "params,flops,latency", "--warmup", "0", "--repeats", "2", "-q"]
#: Columns that must match an uninterrupted run exactly (timing differs from run to run).
EXACT = ["scheme", "model", "frames", "size", "patch", "tokens", "batch", "mode", "dtype", "params_m", "gflops",
         "attn_gflops", "status"]
KEY = ["scheme", "frames", "size"]
#: Kill points per sweep; CI runs 4 (about a minute on 2 quiet cores), VATTN_FAULT_POINTS=12 for a longer hunt.
POINTS = int(os.environ.get("VATTN_FAULT_POINTS", 4))


def _start(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vattn_cli", *SWEEP, *extra, "--out", str(out)], env=ENV, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _rows(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "tokens.csv")


def _problems(out: Path, expected: pd.DataFrame) -> list[str]:
    rows = _rows(out)
    found = []
    if rows.duplicated(KEY).any():
        found.append(f"duplicated rows: {rows[rows.duplicated(KEY)][KEY].values.tolist()}")
    got = rows[EXACT].sort_values(KEY).reset_index(drop=True)
    want = expected[EXACT].sort_values(KEY).reset_index(drop=True)
    if len(got) != len(want) or not got.equals(want):
        found.append(f"rows differ: {len(got)} rows against {len(want)}")
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name == ".lock"]
    if leftovers:
        found.append(f"left behind: {leftovers}")
    return found


def _worker_folders_of(pids: list[int]) -> list[str]:
    """Worker folders still there of the (killed) sweeps this test started."""
    root = Path(tempfile.gettempdir())
    return [folder.name for pid in pids for folder in root.glob(f"vattn-worker-{pid}-*")]


def _kill_and_wait(proc: subprocess.Popen, delay: float, sig: signal.Signals) -> tuple[bool, str]:
    """Send ``sig`` after ``delay`` unless the process ended first; whether it landed, and stderr."""
    time.sleep(delay)
    landed = proc.poll() is None
    if landed:
        proc.send_signal(sig)
    return landed, proc.communicate(timeout=300)[1]


def _ctrl_c_problems(where: str, sig: signal.Signals, code: int, err: str) -> list[str]:
    """A SIGINT that landed must give exit 130 and the one "interrupted" line (or a clean finish)."""
    if sig != signal.SIGINT or code in (0, -signal.SIGINT):
        return []
    lines = [line for line in err.splitlines() if line.strip()]
    if code != 130 or len(lines) != 1 or not lines[0].startswith("vattn: interrupted"):
        return [f"{where}: exit {code}, stderr {err!r}"]
    return []


def _leftovers(where: str, out: Path) -> list[str]:
    found = [str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith(".tmp") or p.name == ".lock"]
    return [f"{where}: left behind {found}"] if found else []


def _conclude(what: str, tried: int, drawn: int, failures: list[str]) -> None:
    print(f"\nfault injection ({what}): {tried} kill points tried (of {drawn} drawn), {len(failures)} lost or "
          "duplicated anything")
    assert tried >= drawn // 2, f"only {tried} kills landed before the {what} run ended"
    assert not failures, failures


@pytest.mark.slow
def test_kills_at_many_points_then_resume_lose_and_duplicate_nothing(tmp_path, capsys) -> None:
    started = time.monotonic()
    reference = _start(tmp_path / "ref", "--no-isolate")
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    duration = time.monotonic() - started
    expected = _rows(tmp_path / "ref")
    assert len(expected) == 4  # two schemes x frames 2,4 at 32 px

    rng = random.Random(18)
    delays = sorted(rng.uniform(0.02, 1.0) * duration for _ in range(POINTS))
    tried, failures, killed_pids = 0, [], []
    for i, delay in enumerate(delays):
        sig = signal.SIGKILL if i % 2 == 0 else signal.SIGINT
        out = tmp_path / f"kill{i}"
        isolation = "--isolate" if i % 3 == 1 else "--no-isolate"  # worker processes too
        proc = _start(out, isolation)
        killed_pids.append(proc.pid)
        landed, err = _kill_and_wait(proc, delay, sig)
        tried += landed
        where = f"point {i} ({sig.name} at {delay:.2f} s of {duration:.2f} s)"
        failures += _ctrl_c_problems(where, sig, proc.returncode, err)
        capsys.readouterr()
        isolate._SWEPT = False  # each CLI run is a fresh process; here the resumes share this one
        with pytest.raises(SystemExit) as exited:
            main([*SWEEP, isolation, "--out", str(out), "--resume"])  # an isolated sweep clears dead ones' folders
        if exited.value.code != 0:
            failures.append(f"{where}: resume exited {exited.value.code}: {capsys.readouterr().err}")
            continue
        failures += [f"{where}: {p}" for p in _problems(out, expected)]
    stale = _worker_folders_of(killed_pids)
    if stale:
        failures.append(f"worker folders of dead parents left: {stale}")
    _conclude("ablate tokens", tried, POINTS, failures)


FAKE_CLI = ROOT / "tests" / "_fake_data_cli.py"
TRAIN = ["train", "--scheme", "divided", "--data", "random", "--val", "random", "--model", "tiny", "--frames", "2",
         "--size", "16", "--patch", "8", "--epochs", "2", "--batch", "4", "--save-every", "1", "--quiet"]
TRAIN_POINTS = 4


def _train(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(FAKE_CLI), *TRAIN, *extra, "--out", str(out)], env=ENV, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_train_killed_at_many_points_resumes_to_the_same_weights(tmp_path) -> None:
    import torch

    started = time.monotonic()
    reference = _train(tmp_path / "ref")
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    duration = time.monotonic() - started
    want = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)
    want_metrics = pd.read_csv(tmp_path / "ref" / "metrics.csv")[["epoch", "step", "train_loss", "val_top1"]]

    rng = random.Random(1818)
    delays = sorted(rng.uniform(0.05, 0.8) * duration for _ in range(TRAIN_POINTS))  # before the end: the run is short
    tried, failures = 0, []
    for i, delay in enumerate(delays):
        sig = signal.SIGKILL if i % 2 == 0 else signal.SIGINT
        out = tmp_path / f"kill{i}"
        proc = _train(out)
        landed, err = _kill_and_wait(proc, delay, sig)
        tried += landed
        where = f"point {i} ({sig.name} at {delay:.2f} s of {duration:.2f} s)"
        failures += _ctrl_c_problems(where, sig, proc.returncode, err)
        resumed = _train(out, "--resume")
        if resumed.wait(timeout=300) != 0:
            failures.append(f"{where}: resume failed: {resumed.stderr.read()}")
            continue
        got = torch.load(out / "last.pt", weights_only=True)
        if got["step"] != want["step"] or any(not torch.equal(got["model"][k], want["model"][k]) for k in want["model"]):
            failures.append(f"{where}: weights differ from the uninterrupted run's")
        metrics = pd.read_csv(out / "metrics.csv")[["epoch", "step", "train_loss", "val_top1"]]
        if not metrics.equals(want_metrics):
            failures.append(f"{where}: metrics.csv differs (rows lost or duplicated)")
        failures += _leftovers(where, out)
    _conclude("train", tried, TRAIN_POINTS, failures)


STUDY = ["ablate", "schemes", "--data", "builtin:appearance", "--schemes", "space,joint", "--frames", "2",
         "--sizes", "32", "--model", "tiny", "--patch", "16", "--epochs", "2", "--batch", "4", "--clips", "16,8",
         "--workers", "0", "-q"]
#: A study's columns that must match an uninterrupted run's exactly (seeded, one thread per run).
STUDY_EXACT = ["dataset", "scheme", "frames", "size", "seed", "params_m", "gflops", "top1", "top5", "train_loss",
               "status"]
STUDY_POINTS = 4


def _study(out: Path, cache: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vattn_cli", *STUDY, "--cache-dir", str(cache), *extra,
                             "--out", str(out)], env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _study_rows(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "schemes.csv")[STUDY_EXACT].sort_values("scheme").reset_index(drop=True)


@pytest.mark.slow
def test_study_killed_at_many_points_resumes_to_the_same_rows(tmp_path) -> None:
    cache = tmp_path / "cache"
    first = _study(tmp_path / "warm", cache)  # generates the built-in clips once, outside the timed reference
    assert first.wait(timeout=300) == 0, first.stderr.read()
    started = time.monotonic()
    reference = _study(tmp_path / "ref", cache)
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    duration = time.monotonic() - started
    want = _study_rows(tmp_path / "ref")
    assert len(want) == 2

    rng = random.Random(1819)
    delays = sorted(rng.uniform(0.05, 0.95) * duration for _ in range(STUDY_POINTS))
    tried, failures = 0, []
    for i, delay in enumerate(delays):
        sig = signal.SIGKILL if i % 2 == 0 else signal.SIGINT
        out = tmp_path / f"kill{i}"
        proc = _study(out, cache)
        landed, err = _kill_and_wait(proc, delay, sig)
        tried += landed
        where = f"point {i} ({sig.name} at {delay:.2f} s of {duration:.2f} s)"
        failures += _ctrl_c_problems(where, sig, proc.returncode, err)
        resumed = _study(out, cache, "--resume") if out.exists() else _study(out, cache)
        if resumed.wait(timeout=300) != 0:
            failures.append(f"{where}: resume failed: {resumed.stderr.read()}")
            continue
        got = _study_rows(out)
        if not got.equals(want):
            failures.append(f"{where}: rows differ from the uninterrupted study's:\n{got}\n{want}")
        failures += _leftovers(where, out)
    _conclude("ablate schemes", tried, STUDY_POINTS, failures)
