"""DDP under torchrun on CPU (gloo): 2 processes train and evaluate like one process does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vattn_cli.engine import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _clips import RandomClips, one_thread  # noqa: E402,F401  (autouse fixture)
from _fake_data_cli import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAKE_CLI = ROOT / "tests" / "_fake_data_cli.py"
# Hard, odd-sized val split: accuracy is not trivially 100% and the sampler pads the last round.
DATA_ENV = {"FAKE_NOISE": "2.5", "FAKE_CLIPS_TRAIN": "24", "FAKE_CLIPS_VAL": "11"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **DATA_ENV}
COMMON = ["--scheme", "divided", "--data", "random", "--val", "random", "--model", "tiny", "--frames", "2",
          "--size", "16", "--patch", "8", "--epochs", "2", "--quiet", "--seed", "4", "--optimizer", "sgd"]


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(FAKE_CLI), *args]
    proc = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
def test_torchrun_two_processes_train_and_eval_like_one(tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "ddp"
    _torchrun("train", *COMMON, "--batch", "4", "--out", str(out), "--csv", str(tmp_path / "train.csv"))
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "last.pt", "metrics.csv"]
    config = json.loads((out / "config.json").read_text())["resolved"]
    assert (config["world_size"], config["batch_per_process"], config["global_batch"]) == (2, 4, 8)
    assert len((out / "metrics.csv").read_text().splitlines()) == 3  # header + one row per epoch, rank 0 only

    # Rank r takes every other sample of the epoch's order, so 2 x batch 4 sees the same clips per step as
    # 1 x batch 8, and DDP averages the gradients: the weights match a single process up to float rounding.
    # (SGD, because Adam turns the rounding noise of gradients that are ~0, like the key bias's, into lr-sized steps.)
    for key, value in DATA_ENV.items():
        monkeypatch.setenv(key, value)
    single = train(
        TrainConfig(out_dir=str(tmp_path / "single"), scheme="divided", data="random", frames=2, size=16, patch=8,
                    epochs=2, batch=8, seed=4, device="cpu", optimizer="sgd"),
        train_data=RandomClips(24, frames=2, size=16, seed=4, noise=2.5),
    )
    ddp = torch.load(out / "last.pt", map_location="cpu", weights_only=True)["model"]
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-4, atol=1e-5, msg=key)

    _torchrun("eval", "--ckpt", str(out / "last.pt"), "--data", "random", "--views", "2x3", "--batch", "2",
              "--per-class", "--json", str(tmp_path / "ddp.json"), "--quiet")
    assert run_cli(["eval", "--ckpt", str(out / "last.pt"), "--data", "random", "--views", "2x3", "--batch", "3",
                    "--per-class", "--json", str(tmp_path / "one.json"), "--quiet"]) == 0, capsys.readouterr().err
    ddp_rows = json.loads((tmp_path / "ddp.json").read_text())
    one_rows = json.loads((tmp_path / "one.json").read_text())
    keys = ["class", "clips", "top1", "top5", "views", "frames", "size", "gflops"]
    assert [[r[k] for k in keys] for r in ddp_rows] == [[r[k] for k in keys] for r in one_rows]
    assert ddp_rows[0]["clips"] == 11 and 0 < ddp_rows[0]["top1"] < 100  # every clip once; not a trivial score
