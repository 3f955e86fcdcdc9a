"""``train --tensorboard`` and ``ablate schemes --tensorboard``, read back with TensorBoard's own
event reader: the scalars, their epoch count (once each, also after a crash and resume), the
config as hparams, the study's figure; and the one-line error when tensorboard is missing."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

from vattn_cli.engine import TrainConfig, train
from vattn_cli.engine.tensorboard_log import SCALARS, TB_DIR

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _clips import RandomClips, one_thread  # noqa: E402,F401  (autouse fixture)
from _fake_data_cli import run_cli  # noqa: E402

TINY = {"dim": 32, "depth": 1, "num_heads": 2}


def reader(folder: Path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def session_hparams(acc) -> dict:
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}


def test_train_tensorboard_writes_every_scalar_once_per_epoch(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    code = run_cli(["train", "--data", "random", "--val", "random", "--scheme", "divided", "--model", "tiny", "--frames", "2",
                    "--size", "16", "--patch", "8", "--epochs", "3", "--batch", "4", "--out", str(out),
                    "--tensorboard", "--quiet"])
    assert code == 0
    acc = reader(out / TB_DIR)
    rows = metrics(out / "metrics.csv")
    assert set(acc.Tags()["scalars"]) == set(SCALARS)
    for tag, column in SCALARS.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3], tag
        assert [e.value for e in events] == pytest.approx([float(r[column]) for r in rows], rel=1e-6), tag
    hp = session_hparams(acc)
    assert hp["scheme"] == "divided" and hp["epochs"] == 3 and hp["model.dim"] == 128 and hp["frames"] == 2
    assert "out_dir" not in hp and "tensorboard" not in hp


class Crash(Exception):
    pass


def test_resumed_run_logs_each_epoch_once(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    data = RandomClips(12, frames=2, size=16, seed=1), RandomClips(6, frames=2, size=16, train=False, seed=1)
    config = dict(out_dir=str(tmp_path), scheme="space", data="random", model="tiny", frames=2, size=16, patch=8,
                  epochs=3, batch=4, model_options=TINY, device="cpu", seed=0, tensorboard=True)

    def crash_after_two(row: dict) -> None:
        if row["epoch"] == 2:
            raise Crash

    with pytest.raises(Crash):
        train(TrainConfig(**config), train_data=data[0], val_data=data[1], on_epoch=crash_after_two)
    # the second process: its checkpoint says 2 epochs, the old event file holds them too
    train(TrainConfig(**{**config, "resume": True}), train_data=data[0], val_data=data[1])
    acc = reader(tmp_path / TB_DIR)
    rows = metrics(tmp_path / "metrics.csv")
    for tag in ("train/loss", "val/top1", "train/lr"):
        assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3], tag
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx([float(r["train_loss"]) for r in rows])
    # ... while the raw files do hold epochs 1 and 2 twice: the reader's purge is what dedups them
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = [e.step for f in sorted((tmp_path / TB_DIR).glob("events.*"))
             for e in EventFileLoader(str(f)).Load() for v in e.summary.value if v.tag == "train/loss"]
    assert sorted(steps) == [1, 1, 2, 2, 3]


def test_ablate_schemes_tensorboard_one_folder_per_run(tmp_path, capsys) -> None:
    pytest.importorskip("tensorboard")
    from vattn_cli.ablate import schemes as study

    runs = study.plan(["builtin:motion"], ["space", "divided"], frames=[2], sizes=[32])
    config = study.StudyConfig(epochs=2, batch=4, model_options=TINY, cache_dir=str(tmp_path / "cache"),
                               data_options={"train": 8, "val": 4, "frames": 4, "size": 32},
                               measures=("params", "flops"), repeats=1, patch=16, workers=0, tensorboard=True)
    result = study.run(runs, tmp_path / "study", config)
    rows = {r["scheme"]: r for r in result.frame.to_dict(orient="records")}
    for run in runs:
        acc = reader(tmp_path / "study" / "runs" / run.dataset / run.name / TB_DIR)
        assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
        assert "val/top1" not in acc.Tags()["scalars"]  # the study validates once, after training:
        (top1,) = acc.Scalars("eval/top1")
        assert top1.step == 2 and top1.value == pytest.approx(rows[run.scheme]["top1"])
        assert acc.Scalars("cost/gflops")[0].value == pytest.approx(rows[run.scheme]["gflops"], rel=1e-6)
        assert session_hparams(acc)["scheme"] == run.scheme
    figure = reader(tmp_path / "study" / TB_DIR)
    (image,) = figure.Images("accuracy_vs_gflops")
    assert image.width > 300 and image.height > 200


def test_missing_tensorboard_is_one_line_exit_2(tmp_path, capsys, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    for argv in (["train", "--data", "random", "--out", str(tmp_path / "t"), "--tensorboard"],
                 ["ablate", "schemes", "--out", str(tmp_path / "a"), "--schemes", "space", "--tensorboard"]):
        code = run_cli(argv)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and "--tensorboard" in lines[0] and "pip install" in lines[0], err
    assert not (tmp_path / "t" / "last.pt").exists()
