"""``vattn ablate schemes`` / ``pos-embed``: rows with the contract and accuracy columns, the
figure and summary, the Pareto frontier against a brute-force reference, a study killed with
SIGKILL resuming without losing or redoing a run, a user's own list of mp4 files, usage errors.

Every model here is tiny (dim 32, one block) on 2 frames x 32 px for one epoch: the point is
the study's bookkeeping, not what it learns (the README's default run shows that)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vattn_cli import measure
from vattn_cli.ablate import schemes as study
from vattn_cli.cli import main
from vattn_cli.data.synth import SynthConfig, synthesize
from vattn_cli.report import accuracy_plots

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"dim": 32, "depth": 1, "num_heads": 2}
CLIPS = {"train": 16, "val": 8, "frames": 4, "size": 32}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("builtin-cache")


def config(cache: Path, **kw) -> study.StudyConfig:
    values = dict(epochs=1, batch=4, model_options=SMALL, data_options=dict(CLIPS), cache_dir=str(cache),
                  measures=("params", "flops", "latency"), repeats=1, patch=16, workers=0)
    return study.StudyConfig(**{**values, **kw})


def test_study_writes_rows_figure_and_summary(tmp_path, cache) -> None:
    runs = study.plan(list(study.BUILTIN_DATA), ["space", "divided"], frames=[2], sizes=[32])
    result = study.run(runs, tmp_path, config(cache))
    frame = pd.read_csv(tmp_path / "schemes.csv")
    assert list(frame.columns) == measure.ROW_COLUMNS + ["top1", "top5", "views", "epochs", "dataset", "seed",
                                                          "pair_acc", "chance_top1", "train_loss", "train_s",
                                                          *measure.PROVENANCE_COLUMNS]
    assert (frame["torch_version"] == torch.__version__).all() and (frame["threads"] >= 1).all()
    assert frame["machine"].nunique() == 1 and frame["device_name"].notna().all()
    assert len(frame) == 4 and set(frame["status"]) == {"ok"}
    assert list(zip(frame["dataset"], frame["scheme"])) == [("motion", "space"), ("motion", "divided"),
                                                            ("appearance", "space"), ("appearance", "divided")]
    assert frame["top1"].between(0, 100).all() and (frame["top5"] >= frame["top1"]).all()
    assert (frame["views"] == "1x1").all() and (frame["epochs"] == 1).all() and (frame["latency_ms"] > 0).all()
    motion, appearance = frame[frame["dataset"] == "motion"], frame[frame["dataset"] == "appearance"]
    assert motion["pair_acc"].between(0, 100).all() and appearance["pair_acc"].isna().all()
    assert (motion["chance_top1"] == 25).all() and (appearance["chance_top1"] == 12.5).all()
    # divided adds a temporal attention layer per block: more parameters and FLOPs than space
    by = frame.set_index(["dataset", "scheme"])
    assert by.loc[("motion", "divided"), "gflops"] > by.loc[("motion", "space"), "gflops"] > 0
    assert by.loc[("motion", "divided"), "params_m"] > by.loc[("motion", "space"), "params_m"]
    # the params column counts the trained model's parameters (dim 32, not the registry's tiny)
    assert by.loc[("motion", "space"), "params_m"] < 0.1
    for name in ("accuracy_vs_gflops.png", "accuracy_vs_gflops.svg", "summary.md"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "accuracy_vs_gflops.png").read_bytes()[:4] == b"\x89PNG"
    summary = (tmp_path / "summary.md").read_text()
    assert "| scheme | frames x size | params (M) | GFLOPs/view | motion top-1 | appearance top-1 |" in summary
    assert "Pareto-optimal" in summary and "| divided | 2x32 |" in summary
    assert set(result.pareto) == {"motion", "appearance"}
    for run in runs:  # each run trained into its own folder, with the engine's checkpoint
        assert (tmp_path / "runs" / run.dataset / run.name / "last.pt").exists()


def test_pareto_front_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    points = pd.DataFrame({"gflops": rng.uniform(1, 10, 40).round(1), "top1": rng.uniform(0, 100, 40).round(0)})
    front = accuracy_plots.pareto_front(points)
    dominated = {i for i, p in points.iterrows() for j, q in points.iterrows()
                 if i != j and q.gflops <= p.gflops and q.top1 >= p.top1 and (q.gflops, q.top1) != (p.gflops, p.top1)}
    expected = set(points.index) - dominated
    # exact duplicates of a frontier point: one of them is kept
    assert {(p.gflops, p.top1) for _, p in front.iterrows()} == {tuple(points.loc[i]) for i in expected}
    assert front["gflops"].is_monotonic_increasing and front["top1"].is_monotonic_increasing


def test_error_bars_over_seeds_in_summary(tmp_path, cache) -> None:
    runs = study.plan(["builtin:appearance"], ["space"], frames=[2], sizes=[32], seeds=[0, 1])
    result = study.run(runs, tmp_path, config(cache, measures=("params", "flops")))
    assert list(result.frame["seed"]) == [0, 1]
    table = accuracy_plots.aggregate(result.frame)
    assert len(table) == 1 and table["n"].iloc[0] == 2
    assert table["top1"].iloc[0] == pytest.approx(result.frame["top1"].mean())
    std = result.frame["top1"].std()
    line = next(l for l in (tmp_path / "summary.md").read_text().splitlines() if l.startswith("| space | 2x32"))
    assert f"{table['top1'].iloc[0]:.1f} ± {std:.1f} |" in line, (line, std)


_KILLABLE = textwrap.dedent("""
    import sys
    from vattn_cli.ablate import schemes as S
    out, cache = sys.argv[1], sys.argv[2]
    runs = S.plan(["builtin:appearance"], ["space", "divided", "joint"], frames=[2], sizes=[32])
    cfg = S.StudyConfig(epochs=3, batch=4, model_options={"dim": 32, "depth": 1, "num_heads": 2},
                        data_options={"train": 16, "val": 8, "frames": 4, "size": 32}, cache_dir=cache,
                        measures=("params", "flops"), patch=16, workers=0)
    S.run(runs, out, cfg, resume=len(sys.argv) > 3)
""")


def test_killed_study_resumes_losing_and_redoing_no_run(tmp_path, cache) -> None:
    out = tmp_path / "study"
    csv = out / "schemes.csv"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, str(out), str(cache)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if csv.exists() and csv.read_text().count("\n") >= 2:  # the header and one finished run
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the study ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    before = pd.read_csv(csv)
    assert 1 <= len(before) < 3
    finished_metrics = {name: (out / "runs" / "appearance" / f"{name}-2x32-s0" / "metrics.csv").stat().st_mtime_ns
                        for name in before["scheme"]}
    resumed = subprocess.run([sys.executable, "-c", _KILLABLE, str(out), str(cache), "resume"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    after = pd.read_csv(csv)
    assert sorted(after["scheme"]) == ["divided", "joint", "space"]  # every run once: none lost, none twice
    pd.testing.assert_frame_equal(after.iloc[:len(before)], before)  # finished rows untouched
    for name, mtime in finished_metrics.items():  # and their runs not trained again
        assert (out / "runs" / "appearance" / f"{name}-2x32-s0" / "metrics.csv").stat().st_mtime_ns == mtime
    assert (after["epochs"] == 3).all()


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["ablate", *args])
    out = capsys.readouterr()
    return exited.value.code, out.out, out.err


def test_builtin_clip_counts_per_task_and_overrides() -> None:
    default = study.StudyConfig()
    assert study.builtin_options("builtin:motion", default) == {"train": 384, "val": 96, "frames": 9, "size": 32}
    assert study.builtin_options("builtin:appearance", default)["train"] == 160
    assert study.builtin_options("data/train.csv", default) == {}  # a user's list: no generator options
    assert study.builtin_options("builtin:motion", study.StudyConfig(data_options=dict(CLIPS)))["train"] == 16
    both = study.StudyConfig(data_options=dict(CLIPS), clips=(40, 20))
    assert {k: study.builtin_options(f"builtin:{k}", both)["train"] for k in ("motion", "appearance")} == {
        "motion": 40, "appearance": 40}


def test_cli_on_a_users_list_of_mp4_files(tmp_path, capsys) -> None:
    synthesize("appearance", tmp_path / "mine", SynthConfig(train=12, val=6, frames=4, size=32))
    train_list, val_list = tmp_path / "mine" / "train.csv", tmp_path / "mine" / "val.csv"
    assert list((tmp_path / "mine" / "videos").rglob("*.mp4"))
    args = ["schemes", "--data", str(train_list), "--val", str(val_list), "--schemes", "space", "--frames", "2",
            "--sizes", "32", "--epochs", "1", "--batch", "4", "--device", "cpu", "--workers", "0", "--quiet"]
    code, _out, err = _cli(capsys, *args, "--out", str(tmp_path / "out"))
    assert code == 0, err
    frame = pd.read_csv(tmp_path / "out" / "schemes.csv")
    assert list(frame["dataset"]) == ["train"] and frame["pair_acc"].isna().all()
    assert frame["chance_top1"].iloc[0] == pytest.approx(100 / 8)
    assert (tmp_path / "out" / "runs" / "train" / "space-2x32-s0" / "best.pt").exists() is False
    # again without --resume: refused, nothing overwritten
    code, _out, err = _cli(capsys, *args, "--out", str(tmp_path / "out"))
    assert code == 2 and "--resume" in err
    code, _out, err = _cli(capsys, "schemes", "--clips", "384", "--out", str(tmp_path / "x"))
    assert code == 2 and "--clips" in err
    # a list file without its validation list
    code, _out, err = _cli(capsys, "schemes", "--data", str(train_list), "--out", str(tmp_path / "x"))
    assert code == 2 and "--val" in err


def test_pos_embed_study_writes_its_csv(tmp_path, cache) -> None:
    runs = study.pos_embed_plan(["builtin:appearance"], "divided", frames=[2], sizes=[32])
    result = study.run(runs, tmp_path, config(cache, measures=("params", "flops")), csv_name=study.POS_CSV_NAME,
                       title="pos")
    frame = pd.read_csv(tmp_path / "pos_embed.csv", keep_default_na=False)
    assert list(frame["pos_embed"]) == ["none", "space", "space-time"]
    params = dict(zip(frame["pos_embed"], frame["params_m"] * 1e6))
    # space adds (1 + patches) x dim, space-time a further frames x dim (TimeSformer's time_embed)
    assert params["space"] - params["none"] == pytest.approx((1 + 4) * 32, abs=0.5)
    assert params["space-time"] - params["space"] == pytest.approx(2 * 32, abs=0.5)
    assert (tmp_path / "pos_embed.png").exists() and (tmp_path / "pos_embed.md").exists()
    assert "| pos_embed |" in (tmp_path / "pos_embed.md").read_text()
    assert len(result.frame) == 3


def test_loader_workers_default_follows_the_data() -> None:
    """Built-in clips load in the run's process (frame cache; a worker per run starved beside the
    other runs); a user's videos get one decoding worker; a given --workers always wins."""
    from vattn_cli.ablate.config import StudyConfig

    assert StudyConfig().loader_workers("builtin:motion") == 0
    assert StudyConfig().loader_workers("lists/train.csv") == 1
    assert StudyConfig(workers=3).loader_workers("builtin:motion") == 3
    assert StudyConfig(workers=0).loader_workers("lists/train.csv") == 0
