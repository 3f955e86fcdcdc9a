"""The run executor behind every sweep (issue 20): ``--jobs N`` and submitit's launchers give the
same rows as one job at a time; a parent killed mid-sweep resumes losing and repeating nothing;
the built-in clips' frame cache gives exactly the decoder's pixels; usage errors are one line.

Everything is tiny (params/FLOPs of the tiny model at 2 frames x 32 px; dim-32 one-block models
trained for one epoch on 16 clips), so the whole file costs a few worker start-ups."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from vattn_cli.ablate import schemes as study
from vattn_cli.ablate import tokens
from vattn_cli.ablate.executor import CONCURRENT_COLUMN, Launch, check_launch
from vattn_cli.cli import main
from vattn_cli.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"dim": 32, "depth": 1, "num_heads": 2}
CLIPS = {"train": 16, "val": 8, "frames": 5, "size": 32}
COUNTS = ["scheme", "frames", "size", "tokens", "params_m", "gflops", "attn_gflops", "status"]


def _plan():
    return tokens.plan(["joint", "divided"], frames=[2, 4], sizes=[32], model="tiny")


def _counts(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[COUNTS].sort_values(["scheme", "frames"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("tokens-j1")
    return tokens.run(_plan(), out, measures=["params", "flops"], isolate=False).frame


def test_jobs_2_gives_the_rows_of_jobs_1(tmp_path, one_at_a_time) -> None:
    result = tokens.run(_plan(), tmp_path, measures=["params", "flops"], isolate=False, launch=Launch(jobs=2))
    pd.testing.assert_frame_equal(_counts(result.frame), _counts(one_at_a_time))
    header = (tmp_path / "tokens.csv").read_text().splitlines()[0].split(",")
    assert header[-1] == CONCURRENT_COLUMN and (result.frame[CONCURRENT_COLUMN] == 2).all()
    assert CONCURRENT_COLUMN not in one_at_a_time.columns  # one at a time: the file as it always was
    assert (result.frame["threads"] == 1).all()  # two cores' worth split between two slots


def test_submitit_local_launcher_killed_and_resumed(tmp_path, one_at_a_time) -> None:
    pytest.importorskip("submitit")
    out = tmp_path / "local"
    csv = out / "tokens.csv"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", _TOKENS_LOCAL, str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if csv.exists() and csv.read_text().count("\n") >= 2:  # the header and one row
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    before = pd.read_csv(csv)
    assert 1 <= len(before) < 4
    resumed = subprocess.run([sys.executable, "-c", _TOKENS_LOCAL, str(out), "resume"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    after = pd.read_csv(csv)
    pd.testing.assert_frame_equal(_counts(after), _counts(one_at_a_time), check_dtype=False)  # none lost or twice
    pd.testing.assert_frame_equal(after.iloc[:len(before)], before)  # finished rows untouched
    # every setting was submitted exactly once over both sessions: a job running when the parent
    # died was waited for, a finished one collected, neither run again
    ledger = json.loads((out / "slurm" / "jobs.json").read_text())
    submitted = {p.name.split("_")[0] for p in (out / "slurm").glob("*_submitted.pkl")}
    assert len(ledger) == 4 and submitted == set(ledger.values())


def test_parent_dying_between_submit_and_ledger_loses_and_repeats_nothing(tmp_path, one_at_a_time) -> None:
    """The window CI once hit by chance: the second job is submitted (its process runs on), and the
    parent dies before the ledger holds its id. The resumed study must neither lose nor rerun it."""
    pytest.importorskip("submitit")
    out = tmp_path / "local"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), VATTN_TEST_DIE_AT_RECORD="2")
    died = subprocess.run([sys.executable, "-c", _TOKENS_LOCAL, str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert died.returncode == 9, died.stderr
    ledger = json.loads((out / "slurm" / "jobs.json").read_text())
    submitted = {p.name.split("_")[0] for p in (out / "slurm").glob("*_submitted.pkl")}
    assert len(ledger) == 1 and len(submitted) == 2  # one job submitted that the ledger does not know
    del env["VATTN_TEST_DIE_AT_RECORD"]
    resumed = subprocess.run([sys.executable, "-c", _TOKENS_LOCAL, str(out), "resume"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    after = pd.read_csv(out / "tokens.csv")
    pd.testing.assert_frame_equal(_counts(after), _counts(one_at_a_time), check_dtype=False)
    ledger = json.loads((out / "slurm" / "jobs.json").read_text())
    submitted = {p.name.split("_")[0] for p in (out / "slurm").glob("*_submitted.pkl")}
    assert len(ledger) == 4 and submitted == set(ledger.values())  # the orphan adopted, not resubmitted


_TOKENS_LOCAL = """
import os, sys
from vattn_cli.ablate import launchers, tokens
die_at = int(os.environ.get("VATTN_TEST_DIE_AT_RECORD", "0"))
if die_at:  # the parent dies after submitting job number die_at, before its id is in the ledger
    record, calls = launchers.Ledger.record, []
    def dying_record(self, key, job_id):
        calls.append(key)
        if len(calls) == die_at:
            os._exit(9)
        record(self, key, job_id)
    launchers.Ledger.record = dying_record
from vattn_cli.ablate.executor import Launch
plan = tokens.plan(["joint", "divided"], frames=[2, 4], sizes=[32], model="tiny")
tokens.run(plan, sys.argv[1], measures=["params", "flops"], isolate=False, resume=len(sys.argv) > 2,
           launch=Launch(launcher="local", jobs=1, poll_s=0.05))
"""


def test_submitit_debug_executor_gives_the_same_rows(tmp_path, one_at_a_time) -> None:
    pytest.importorskip("submitit")
    result = tokens.run(_plan(), tmp_path, measures=["params", "flops"], isolate=False,
                        launch=Launch(launcher="debug"))
    pd.testing.assert_frame_equal(_counts(result.frame), _counts(one_at_a_time))
    assert len(json.loads((tmp_path / "slurm" / "jobs.json").read_text())) == 4


def _config(cache: Path) -> study.StudyConfig:
    return study.StudyConfig(epochs=1, batch=4, model_options=SMALL, data_options=dict(CLIPS), cache_dir=str(cache),
                             measures=("params", "flops"), repeats=1, patch=16, workers=0)


ACCURACY = ["dataset", "scheme", "frames", "top1", "top5", "pair_acc", "train_loss", "params_m", "gflops"]


@pytest.mark.slow
def test_schemes_jobs_2_gives_the_accuracy_of_jobs_1(tmp_path) -> None:
    runs = study.plan(["builtin:motion"], ["space", "divided"], frames=[2], sizes=[32])
    cache = tmp_path / "cache"
    one = study.run(runs, tmp_path / "j1", _config(cache), launch=Launch(jobs=1, threads=1)).frame
    two = study.run(runs, tmp_path / "j2", _config(cache), launch=Launch(jobs=2)).frame
    # one thread per run either way: the same seeds give the same numbers, to the bit
    pd.testing.assert_frame_equal(two[ACCURACY], one[ACCURACY])
    assert (one["threads"] == 1).all() and (two["threads"] == 1).all() and (two[CONCURRENT_COLUMN] == 2).all()


@pytest.mark.slow
def test_parent_killed_mid_sweep_resumes_losing_and_repeating_nothing(tmp_path) -> None:
    out = tmp_path / "study"
    csv = out / "schemes.csv"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    args = [sys.executable, "-c", _SCHEMES_JOBS, str(out), str(tmp_path / "cache")]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if csv.exists() and csv.read_text().count("\n") >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()
    slots = _children(proc.pid)
    assert slots, "no pool slots running"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    time.sleep(1.0)
    # the slots died with the parent (no orphan goes on training into the run folders)
    assert not [pid for pid in slots if _alive(pid)], "a pool slot outlived its parent"
    before = pd.read_csv(csv)
    assert 1 <= len(before) < 4
    finished = {s: (out / "runs" / "motion" / f"{s}-2x32-s0" / "metrics.csv").stat().st_mtime_ns
                for s in before["scheme"]}
    resumed = subprocess.run(args + ["resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    after = pd.read_csv(csv)
    assert sorted(after["scheme"]) == ["divided", "joint", "space", "xvit"]
    pd.testing.assert_frame_equal(after.iloc[:len(before)], before)
    for scheme, mtime in finished.items():  # finished runs not trained again
        assert (out / "runs" / "motion" / f"{scheme}-2x32-s0" / "metrics.csv").stat().st_mtime_ns == mtime


_SCHEMES_JOBS = """
import sys
from vattn_cli.ablate import schemes as study
from vattn_cli.ablate.executor import Launch
runs = study.plan(["builtin:motion"], ["space", "divided", "joint", "xvit"], frames=[2], sizes=[32])
config = study.StudyConfig(epochs=2, batch=4, model_options={"dim": 32, "depth": 1, "num_heads": 2},
                           data_options={"train": 16, "val": 8, "frames": 5, "size": 32}, cache_dir=sys.argv[2],
                           measures=("params", "flops"), repeats=1, patch=16, workers=0)
study.run(runs, sys.argv[1], config, resume=len(sys.argv) > 3, launch=Launch(jobs=2))
"""


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (the pool's slots)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(proc.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_frame_cache_gives_the_decoders_pixels(tmp_path, monkeypatch) -> None:
    from vattn_cli.data import frame_cache, resolve_data
    from vattn_cli.data.datasets import VideoClipDataset

    spec = resolve_data("builtin:motion", split="train", cache_dir=str(tmp_path), **CLIPS)
    for train in (True, False):
        plain = VideoClipDataset(spec.items, frames=4, size=32, train=train, seed=3, cache_frames=False)
        cached = VideoClipDataset(spec.items, frames=4, size=32, train=train, seed=3)
        for index in range(4):
            first = cached[index]["video"]  # decodes and stores
            assert frame_cache.cache_path(spec.items[index].path).exists()
            assert (first == plain[index]["video"]).all() and (cached[index]["video"] == first).all()
    # nothing is written beside a user's videos: a folder without synth's meta.json is not cached
    user = tmp_path / "mine" / "videos" / "a.mp4"
    user.parent.mkdir(parents=True)
    user.write_bytes(b"")
    assert frame_cache.cache_path(user) is None
    monkeypatch.setenv("VATTN_FRAME_CACHE", "0")
    assert frame_cache.cache_path(spec.items[0].path) is None


def test_a_torn_cache_file_is_decoded_again(tmp_path) -> None:
    from vattn_cli.data import frame_cache, resolve_data
    from vattn_cli.data.datasets import VideoClipDataset

    spec = resolve_data("builtin:motion", split="val", cache_dir=str(tmp_path), **CLIPS)
    data = VideoClipDataset(spec.items, frames=4, size=32, train=False)
    good = data[0]["video"]
    path = frame_cache.cache_path(spec.items[0].path)
    path.write_bytes(path.read_bytes()[:50])  # torn by a crash
    assert (data[0]["video"] == good).all() and frame_cache.load(path) is not None


def test_usage_errors_are_one_line(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(UsageError, match="sbatch is not on PATH"):
        check_launch("slurm", 1)
    for args, needle in ((["--launcher", "slurm"], "sbatch is not on PATH"),
                         (["--launcher", "cloud"], "invalid --launcher 'cloud'; accepted: pool, local, slurm"),
                         (["--slurm-partition", "gpu"], "--slurm-partition needs --launcher slurm"),
                         (["--jobs", "0"], "--jobs")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(["ablate", "schemes", "--out", str(tmp_path / "o"), *args])
        err = capsys.readouterr().err
        assert exited.value.code == 2 and needle in err and "Traceback" not in err, err


def test_resuming_a_file_timed_alone_with_jobs_refuses(tmp_path) -> None:
    tokens.run(_plan(), tmp_path, measures=["params"], isolate=False)
    with pytest.raises(UsageError, match="resume it with --jobs 1"):
        tokens.run(_plan(), tmp_path, measures=["params", "latency"], isolate=False, resume=True,
                   launch=Launch(jobs=2))


def test_slurm_flags_become_sbatch_lines(tmp_path, monkeypatch) -> None:
    """The --slurm-* flags as submitit writes them into the job script (Slurm faked: srun/sbatch stubs)."""
    pytest.importorskip("submitit")
    from vattn_cli.ablate.launchers import _executor
    from vattn_cli.commands._launch_flags import parse_launch

    for tool in ("srun", "sbatch"):
        (tmp_path / tool).write_text("#!/bin/sh\nexit 0\n")
        (tmp_path / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    launch = parse_launch(jobs=None, launcher="slurm", kind="train", timed=True, partition="gpu", time_min=30,
                          gpus=1, cpus=8, mem="16GB", account="proj", setup=["module load cuda"],
                          array_parallelism=4)
    assert launch.jobs == 1 and launch.concurrent == 1  # each Slurm job has its own allocation
    executor = _executor(launch, tmp_path / "slurm")
    text = executor._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--time=30", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=16GB",
                 "--account=proj", f"--output={tmp_path / 'slurm'}/%j_0_log.out"):
        assert f"#SBATCH {line}" in text, text
    assert "module load cuda" in text
    assert executor._executor.parameters["array_parallelism"] == 4  # becomes --array=0-N%4 when submitted
