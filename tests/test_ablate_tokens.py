"""``vattn ablate tokens``: the plan, growth exponents against the FLOP formula, row-by-row CSV
that survives SIGKILL and resumes, out-of-memory rows in the CSV and the plots, usage errors."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from vattn_cli.ablate import tokens as study
from vattn_cli.cli import main
from vattn_cli.errors import UsageError
from vattn_cli.report import plots
from vattn_cli.report.rowlog import RowLog
from vattn_cli.zoo.registry import SIZES

ROOT = Path(__file__).resolve().parents[1]
TIMING = ["repeats", "timed_s", "wall_s", "threads"]  # differ between two runs of the same combination


def vattn(*args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "vattn_cli", "ablate", "tokens", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def in_process(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["ablate", "tokens", *args])
    out = capsys.readouterr()
    return exited.value.code, out.out, out.err


def formula_macs(scheme: str, size: str, frames: int, img: int, patch: int = 16, classes: int = 400) -> int:
    """fvcore's count of one clip, written out by hand from the architecture (an independent
    reference: linear layers in x out per token, LayerNorm 5 per element, attention
    Q.K^T + A.V, the patch convolution, the head; GELU, softmax, additions count zero)."""
    arch = SIZES[size]
    d, depth, hidden = arch.dim, arch.depth, int(arch.dim * arch.mlp_ratio)
    t, s = frames, (img // patch) ** 2
    n = t * s

    def block(tokens: int) -> int:  # two norms, qkv + proj, MLP
        return 10 * tokens * d + 4 * tokens * d * d + 2 * tokens * d * hidden

    if scheme == "joint":  # one attention over all patches + CLS
        per_block, final = block(n + 1) + (n + 1) ** 2 * 2 * d, 5 * (n + 1) * d
    elif scheme == "space":  # each frame with its own CLS
        per_block, final = block(t * (s + 1)) + t * (s + 1) ** 2 * 2 * d, 5 * (s + 1) * d
    elif scheme == "divided":
        spatial = t * (s + 1)  # the CLS token repeated into every frame
        per_block = (5 * n * d + 5 * n * d * d + s * t * t * 2 * d  # temporal: norm, qkv+proj+fc, attention
                     + 5 * spatial * d + 4 * spatial * d * d + t * (s + 1) ** 2 * 2 * d
                     + 5 * (n + 1) * d + 2 * (n + 1) * d * hidden)
        final = 5 * (n + 1) * d
    else:
        raise ValueError(scheme)
    return n * d * 3 * patch * patch + depth * per_block + final + d * classes


def test_plan_two_sweeps_base_values_and_grid() -> None:
    plan = study.plan(["joint", "divided"], frames=[32, 8, 64], sizes=[224, 448], model="tiny")
    assert (plan.base_frames, plan.base_size) == (8, 224)
    combos = [(s.scheme, s.frames, s.img_size) for s in plan.settings]
    expected = {(sch, f, 224) for sch in ("joint", "divided") for f in (8, 32, 64)} | {
        (sch, 8, 448) for sch in ("joint", "divided")}
    assert set(combos) == expected and len(combos) == len(expected)  # (8, 224) once, not twice
    sizes = [s.frames * s.img_size**2 for s in plan.settings]
    assert sizes == sorted(sizes)  # fewest tokens first
    # Without the paper's base values, the smallest ones are held fixed; --grid is the product.
    other = study.plan(["joint"], frames=[4, 2], sizes=[96, 64], model="tiny", grid=True)
    assert (other.base_frames, other.base_size) == (2, 64) and len(other.settings) == 4
    assert [name for name, _ in other.sweeps()] == ["frames", "size", "grid"]
    with pytest.raises(UsageError, match="100"):
        study.plan(["joint"], frames=[8], sizes=[100], model="tiny")


def test_fit_exponent_recovers_a_power_law() -> None:
    tokens = np.array([10.0, 40.0, 90.0, 400.0])
    assert study.fit_exponent(tokens, 3.0 * tokens**1.5) == pytest.approx(1.5, abs=1e-12)
    assert math.isnan(study.fit_exponent([10, 10], [1, 2]))
    assert math.isnan(study.fit_exponent([10, 20], [1, float("nan")]))
    assert study.top_half(4) == 2 and study.top_half(5) == 3 and study.top_half(2) == 2


def test_flop_exponents_match_the_formula_joint_quadratic_divided_space_linear(tmp_path, capsys) -> None:
    # Tiny (dim 128) at 128 px: joint's attention term (2 N^2 D) outgrows the linear layers
    # (~12 N D^2) once N >> 6 D, which 16..128 frames of 64 patches reach.
    frames, img = [16, 64, 128], 128
    code, _, err = in_process(capsys, "--schemes", "joint,divided,space", "--model", "tiny", "--frames",
                              ",".join(map(str, frames)), "--sizes", str(img), "--measure", "params,flops",
                              "--no-isolate", "--quiet", "--out", str(tmp_path))
    assert code == 0, err
    rows = pd.read_csv(tmp_path / "tokens.csv")
    assert len(rows) == 9 and set(rows["status"]) == {"ok"}
    for _, row in rows.iterrows():  # the counted FLOPs are the formula's, exactly
        assert row["gflops"] * 1e9 == pytest.approx(formula_macs(row["scheme"], "tiny", row["frames"], img), rel=1e-12)
    plan = study.plan(["joint", "divided", "space"], frames=frames, sizes=[img], model="tiny")
    fitted = study.exponents(study.read_rows(tmp_path / "tokens.csv", plan), plan).set_index("scheme")
    for scheme in ("joint", "divided", "space"):
        mine = rows[rows["scheme"] == scheme].sort_values("tokens")
        analytic = [formula_macs(scheme, "tiny", f, img) for f in mine["frames"]]
        assert fitted.loc[scheme, "gflops_exp"] == pytest.approx(study.fit_exponent(mine["tokens"], analytic), abs=1e-9)
        assert fitted.loc[scheme, "gflops_exp_top"] == pytest.approx(
            study.fit_exponent(mine["tokens"].iloc[-2:], analytic[-2:]), abs=1e-9)
    assert fitted.loc["joint", "gflops_exp_top"] > 1.8
    assert 1.0 <= fitted.loc["divided", "gflops_exp_top"] < 1.1
    assert fitted.loc["space", "gflops_exp_top"] == pytest.approx(1.0, abs=0.01)
    # The attention part alone, frames swept at a fixed size: joint's grows as tokens^2 and
    # space's (per-frame attention) as tokens^1; divided's spatial step is linear in frames and
    # its temporal lines quadratic (H*W lines of T), which dominates here (T up to 128 > H*W = 64).
    assert fitted.loc["joint", "attn_gflops_exp"] == pytest.approx(2.0, abs=0.01)
    assert 1.2 < fitted.loc["divided", "attn_gflops_exp"] < 1.8
    assert fitted.loc["space", "attn_gflops_exp"] == pytest.approx(1.0, abs=0.01)
    summary = (tmp_path / "tokens.md").read_text()
    assert f"| joint | 3 | 1,025–8,193 | {fitted.loc['joint', 'gflops_exp']:.2f} |" in summary
    assert "| attention GFLOPs all | attention GFLOPs top |" in summary


def _rows(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path).drop(columns=TIMING)
    return frame.sort_values(["scheme", "frames", "size"]).reset_index(drop=True)


def test_killed_sweep_resumes_to_the_same_rows_measuring_nothing_twice(tmp_path, capsys) -> None:
    args = ["--schemes", "joint,space", "--model", "tiny", "--frames", "2,4", "--sizes", "32,64",
            "--measure", "params,flops", "--no-isolate"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    csv = killed / "tokens.csv"
    proc = vattn(*args, "--out", str(killed))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if csv.exists() and csv.read_text().count("\n") >= 2:  # the header and at least one row
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    before = csv.read_text()
    kept = len(pd.read_csv(csv))
    assert 1 <= kept < 6
    with open(csv, "a") as fh:  # as if killed half-way through writing the next row
        fh.write("space,tiny,4,32,16,17,1,inf")

    code, _, err = in_process(capsys, *args, "--out", str(killed), "--resume")
    assert code == 0, err
    assert f"{kept} of 6 combinations already there, skipped; dropped a partly written last line" in err
    assert f"measured {6 - kept}, skipped {kept}" in err
    after = csv.read_text()
    assert after.startswith(before) and "inf\n" not in after  # finished rows untouched, torn one gone
    assert in_process(capsys, *args, "--out", str(whole))[0] == 0

    resumed, uninterrupted = _rows(csv), _rows(whole / "tokens.csv")
    keys = resumed[["scheme", "model", "frames", "size", "mode", "dtype", "batch", "device"]]
    assert not keys.duplicated().any() and len(resumed) == 6
    pd.testing.assert_frame_equal(resumed, uninterrupted)
    # Resuming a finished study measures nothing and redraws the same figures.
    code, _, err = in_process(capsys, *args, "--out", str(killed), "--resume")
    assert code == 0 and "measured 0, skipped 6" in err
    assert {p.name for p in killed.iterdir()} >= {"tokens.csv", "tokens.md", "tokens_frames.png",
                                                   "tokens_frames.svg", "tokens_size.png", "tokens_size.svg"}


def test_low_max_memory_gives_oom_rows_in_csv_and_plot_and_exit_0(tmp_path) -> None:
    # 128 frames of 224 px are 77 MB of input, copied once by the patch embedding: past 100 MB.
    proc = vattn("--schemes", "space", "--model", "tiny", "--frames", "2,128", "--sizes", "224",
                 "--measure", "latency,memory", "--repeats", "1", "--warmup", "0", "--threads", "1",
                 "--max-memory", "100MB", "--out", str(tmp_path))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rows = pd.read_csv(tmp_path / "tokens.csv").set_index("frames")
    assert rows.loc[2, "status"] == "ok" and 0 < rows.loc[2, "peak_mem_mb"] < 100
    assert rows.loc[128, "status"] == "oom" and pd.isna(rows.loc[128, "latency_ms"])
    oom_tokens = int(rows.loc[128, "tokens"])
    assert f"{oom_tokens:,} tokens |" in (tmp_path / "tokens.md").read_text()
    assert f"<!-- {plots.OOM_LABEL} -->" in (tmp_path / "tokens_frames.svg").read_text()  # the legend entry

    # In the latency panel the oom point sits at the top edge, at its token count.
    ax = Figure().subplots()
    plots.plot_groups(ax, rows.reset_index(), "tokens", "latency_ms", plots.group_styles(["space"]))
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [oom_tokens]
    assert list(crosses[0].get_ydata()) == [1.0] and crosses[0].get_transform() == ax.get_xaxis_transform()


def test_existing_csv_without_resume_is_refused_and_kept(tmp_path, capsys) -> None:
    csv = tmp_path / "tokens.csv"
    csv.write_text("precious\n")
    code, _, err = in_process(capsys, "--schemes", "joint", "--model", "tiny", "--frames", "2", "--sizes", "32",
                              "--out", str(tmp_path))
    assert code == 2 and err.strip() == f"vattn: error: {csv} exists; pass --resume or choose another --out"
    assert csv.read_text() == "precious\n"
    code, _, err = in_process(capsys, "--schemes", "joint", "--model", "tiny", "--frames", "2", "--sizes", "32",
                              "--out", str(tmp_path), "--resume")
    assert code == 2 and "other columns" in err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "tiny,small"], "--model"),
        (["--frames", "0"], "--frames"),
        (["--sizes", "100"], "100"),
        (["--schemes", "nope"], "--schemes"),
        (["--dtype", "fp8"], "--dtype"),
        (["--mode", "fly"], "--mode"),
        (["--measure", "speed"], "--measure"),
        (["--max-memory", "1GB", "--no-isolate"], "--max-memory"),
    ],
)
def test_bad_values_give_one_line_and_exit_2(args, needle, tmp_path, capsys) -> None:
    code, _, err = in_process(capsys, "--model", "tiny", "--out", str(tmp_path), *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("vattn: error:") and needle in lines[0], err
    assert not (tmp_path / "tokens.csv").exists()


def test_rowlog_drops_a_torn_line_and_appends_durably(tmp_path) -> None:
    path = tmp_path / "rows.csv"
    with RowLog(path, ["a", "b"]) as log:
        assert log.open() == []
        log.append({"a": 1, "b": "x, y"})
        log.append({"a": 2})
    path.write_bytes(path.read_bytes() + b"3,unfinish")
    with RowLog(path, ["a", "b"]) as log:
        assert log.open(resume=True) == [{"a": "1", "b": "x, y"}, {"a": "2", "b": ""}] and log.torn
        log.append({"a": 4, "b": "z"})
    assert list(pd.read_csv(path)["a"]) == [1, 2, 4]
    path.write_bytes(b"a,")  # killed while writing the header: starts over
    with RowLog(path, ["a", "b"]) as log:
        assert log.open(resume=True) == [] and log.torn
    assert path.read_text() == "a,b\n"
