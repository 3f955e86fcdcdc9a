"""``vattn profile`` and the measurement engine: rows, sweeps that survive OOM and crashes,
timing statistics, peak memory, MFU units, and the CLI's manners."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from vattn_cli import measure
from vattn_cli.cli import main
from vattn_cli.errors import UsageError
from vattn_cli.measure.memory import MiB, PeakMemory, is_oom, parse_size
from vattn_cli.measure.run import mfu
from vattn_cli.measure.timing import auto_repeats, parse_repeats, time_step

TINY = dict(schemes=["divided"], models=["tiny"], frames=[4], sizes=[64])


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vattn_cli", "profile", *args], capture_output=True, text=True)


def test_sweep_with_one_oom_combination_exits_0_and_csv_has_the_contract() -> None:
    # Batch 128 of 8x224 clips is 770 MB of input alone: it cannot fit in 300 MB; batch 1 can.
    out = cli("--scheme", "divided", "--model", "tiny", "--frames", "8", "--size", "224", "--batch", "1,128",
              "--max-memory", "300MB", "--warmup", "0", "--repeats", "2", "--threads", "1", "--csv", "-")
    assert out.returncode == 0, out.stderr
    frame = pd.read_csv(io.StringIO(out.stdout))
    assert set(measure.ROW_COLUMNS) <= set(frame.columns)
    assert list(frame.columns[: len(measure.ROW_COLUMNS)]) == measure.ROW_COLUMNS
    ok, oom = frame.set_index("batch").loc[1], frame.set_index("batch").loc[128]
    assert ok["status"] == "ok" and oom["status"] == "oom"
    assert 0 < ok["peak_mem_mb"] < 300 and ok["latency_ms"] > 0 and ok["gflops"] > 0
    assert ok["throughput"] == pytest.approx(1000.0 / ok["latency_ms"])
    assert ok["tokens"] == 8 * 14 * 14 + 1 and ok["size"] == 224 and ok["model"] == "tiny"
    # What does not need the big run is still reported for the oom row.
    assert oom["params_m"] == ok["params_m"] and oom["gflops"] == ok["gflops"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--scheme", "divided", "--frames", "0"], "--frames"),
        (["--scheme", "divided", "--size", "100"], "100"),
        (["--scheme", "divided", "--dtype", "fp8"], "--dtype"),
        (["--scheme", "nope"], "--scheme"),
        (["--scheme", "divided", "--repeats", "0"], "--repeats"),
        (["--scheme", "divided", "--max-memory", "lots"], "--max-memory"),
        (["--scheme", "divided", "--mode", "fly"], "--mode"),
        (["--model", "huge"], "--model"),
        (["--scheme", "divided", "--measure", "speed"], "--measure"),
        (["--frames", "8"], "scheme"),
    ],
)
def test_bad_values_give_one_line_and_exit_2(args, needle, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["profile", *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vattn: error:") and needle in lines[0], err


def test_in_process_run_breakdown_and_json(capsys, tmp_path) -> None:
    target = tmp_path / "rows.json"
    with pytest.raises(SystemExit) as exit_:
        main(["profile", "--model", "tiny", "--scheme", "space,joint", "--frames", "2", "--size", "32",
              "--no-isolate", "--repeats", "3", "--warmup", "0", "--threads", "1", "--breakdown", "--peak-tflops", "1.5",
              "--json", str(target)])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    rows = pd.read_json(target)
    assert list(rows["scheme"]) == ["space", "joint"] and (rows["status"] == "ok").all()
    assert rows["mfu"].tolist() == pytest.approx(
        [2 * g * 1e9 * t / 1.5e12 for g, t in zip(rows["gflops"], rows["throughput"])])
    assert "FLOPs by module" in out and "attention" in out and "mlp" in out


def test_run_setting_row_and_train_mode() -> None:
    setting = measure.expand(**TINY, modes=["train"], batches=[2])[0]
    before = torch.get_num_threads()
    row = measure.run_setting(setting, options=measure.RunOptions(repeats=3, warmup=1, threads=1))
    assert set(measure.ROW_COLUMNS) <= set(row) and row["status"] == "ok"
    assert row["mode"] == "train" and row["batch"] == 2 and row["repeats"] == 3
    assert torch.get_num_threads() == before  # the caller's thread count is restored
    assert row["throughput"] == pytest.approx(2000.0 / row["latency_ms"])
    assert row["latency_iqr_ms"] >= 0 and row["params_m"] > 0 and row["gflops"] > row["attn_gflops"] > 0


def test_sweep_resumes_with_skip_and_shares_flop_counts() -> None:
    settings = measure.expand(**TINY, batches=[1, 2, 3])
    seen, cache = [], {}
    frame = measure.sweep(settings, ["params", "flops"], isolate=False, on_row=seen.append,
                          skip=lambda s: s.batch == 2, flops_cache=cache)
    assert [r["batch"] for r in seen] == [1, 3] and list(frame["batch"]) == [1, 3]
    assert len(cache) == 1 and frame["gflops"].nunique() == 1  # batch does not change per-clip FLOPs
    assert measure.row_key(frame.iloc[0].to_dict()) == settings[0].key()


def test_presets_fill_scheme_frames_and_size_unless_given() -> None:
    (long,) = measure.expand(models=["timesformer-l"])
    assert (long.scheme, long.frames, long.img_size, long.arch, long.model) == ("divided", 96, 224, "base", "timesformer-l")
    short = measure.expand(models=["timesformer-hr"], frames=[8], schemes=["joint"])[0]
    assert (short.scheme, short.frames, short.img_size) == ("joint", 8, 448)
    assert len(measure.expand(schemes=["all"], models=["tiny"])) == len(measure.expand(schemes=["all"], models=["tiny"], frames=[8]))


def _crash_scheme(tmp_path):
    code = (
        "import os, signal\n"
        "from vattn_cli.zoo import SoftmaxBlock, register_scheme\n"
        "@register_scheme('crash_test', source='test')\n"
        "class Crash(SoftmaxBlock):\n"
        "    def forward(self, x, grid):\n"
        "        os.kill(os.getpid(), signal.SIGSEGV)\n"
    )
    path = tmp_path / "crash_scheme.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("vattn_test_crash_scheme", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)


def test_a_crashing_worker_becomes_an_error_row(tmp_path) -> None:
    from vattn_cli.zoo import registry

    _crash_scheme(tmp_path)
    try:
        settings = measure.expand(schemes=["crash_test", "space"], models=["tiny"], frames=[2], sizes=[32])
        frame = measure.sweep(settings, ["params", "latency"], measure.RunOptions(repeats=1, warmup=0, threads=1))
    finally:
        registry._SCHEMES.pop("crash_test", None)
        sys.modules.pop("vattn_test_crash_scheme", None)
    crash, fine = frame.iloc[0], frame.iloc[1]
    assert crash["status"].startswith("error: worker killed by SIGSEGV"), crash["status"]
    assert fine["status"] == "ok" and fine["latency_ms"] > 0


def test_timing_statistics_and_auto_repeats() -> None:
    timing = time_step(lambda: time.sleep(0.01), warmup=1, repeats=5, batch=4)
    assert len(timing.times_s) == 5 and len(timing.warmup_s) == 1
    assert 9 <= timing.median_ms <= 60  # a loaded machine oversleeps, never undersleeps
    assert timing.throughput == pytest.approx(4 / (timing.median_ms / 1e3))
    assert timing.iqr_ms >= 0 and timing.total_s == pytest.approx(sum(timing.times_s))
    auto = time_step(lambda: time.sleep(0.01), repeats="auto", budget_s=0.1)
    assert 3 <= len(auto.times_s) <= 10 and len(auto.warmup_s) == 1
    assert auto_repeats(10.0, 5.0) == 3 and auto_repeats(1e-6, 5.0) == 200 and auto_repeats(0.1, 1.0) == 10
    assert parse_repeats("auto") == "auto" and parse_repeats("7") == 7
    with pytest.raises(UsageError):
        parse_repeats("-1")


def test_peak_memory_and_oom_recognition() -> None:
    tracker = PeakMemory(torch.device("cpu"))
    tracker.start()
    block = torch.ones(64 * MiB // 4)  # 64 MiB, touched
    peak = tracker.stop()
    del block
    if tracker.resettable:
        assert 60 <= peak <= 200
    assert parse_size("500MB") == 500 * MiB and parse_size("2GB") == 2 * 1024 * MiB
    assert parse_size("1.5g") == int(1.5 * 1024 * MiB) and parse_size(None) is None
    with pytest.raises(UsageError):
        parse_size("12 parsecs")
    assert is_oom(MemoryError()) and is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not is_oom(RuntimeError("shape mismatch")) and not is_oom(ValueError("out of memory"))


def test_mfu_units_and_calibration_cache(tmp_path, monkeypatch) -> None:
    # 100 GFLOPs (multiply-adds) per clip at 2 clips/s is 400 GFLOP/s: 40% of a 1 TFLOP/s peak.
    assert mfu(100.0, 2.0, "infer", 1.0) == pytest.approx(0.4)
    assert mfu(100.0, 2.0, "train", 1.0) == pytest.approx(1.2)  # forward + backward = 3 passes
    assert mfu(None, 2.0, "infer", 1.0) is None
    from vattn_cli.measure import calibrate

    monkeypatch.setenv("VATTN_CACHE_DIR", str(tmp_path))
    cpu = torch.device("cpu")
    assert 0 < calibrate.measure_peak_tflops(cpu, "fp32", n=128, budget_s=0.05) < 100
    with pytest.raises(UsageError, match="--calibrate"):
        calibrate.cached_peak(cpu, "fp32")
    monkeypatch.setattr(calibrate, "measure_peak_tflops", lambda device, dtype: 0.125)
    assert calibrate.calibrate(cpu, "fp32") == 0.125
    assert calibrate.cached_peak(cpu, "fp32") == 0.125
    assert (tmp_path / "calibration.json").exists()
