"""Evaluation: multi-view averaging against plain forwards, accuracy, the CLI row, refusing bad checkpoints."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from vattn_cli import measure
from vattn_cli.engine import TrainConfig, evaluate, gflops_per_view, train
from vattn_cli.engine.evaluate import accuracy, per_class_accuracy, view_flops
from vattn_cli.zoo import create_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _clips import RandomClips, one_thread  # noqa: E402,F401  (autouse fixture)
from _fake_data_cli import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAKE_CLI = ROOT / "tests" / "_fake_data_cli.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _model(num_classes: int = 3):
    model = create_model("divided", size="tiny", frames=2, img_size=16, patch=8, num_classes=num_classes,
                         dim=32, depth=2, num_heads=2)
    return model.eval()


def test_one_view_score_is_the_softmax_of_a_plain_forward() -> None:
    model, data = _model(), RandomClips(7, frames=2, size=16, train=False)
    res = evaluate(model, data, views="1x1", batch=3, flops=False)
    with torch.no_grad():
        clips = torch.stack([data[i]["video"][0] for i in range(len(data))])
        expect = F.softmax(model(clips), dim=-1)
    assert res.scores.shape == (7, 3) and res.n == 7 and res.views == (1, 1)
    torch.testing.assert_close(res.scores, expect, rtol=1e-5, atol=1e-6)
    labels = torch.tensor([data[i]["label"] for i in range(len(data))])
    assert torch.equal(res.labels, labels)
    assert res.top1 == pytest.approx(100 * (expect.argmax(1) == labels).double().mean().item())


def test_many_views_average_the_per_view_softmax() -> None:
    """2x3 views: the score is the mean over the 6 views of softmax(logits), not softmax of the mean logits."""
    model, data = _model(), RandomClips(5, frames=2, size=16, train=False, views=(2, 3))
    res = evaluate(model, data, views=(2, 3), batch=2, flops=False)
    with torch.no_grad():
        per_view = [[F.softmax(model(data[i]["video"][v : v + 1]), dim=-1)[0] for v in range(6)] for i in range(5)]
        expect = torch.stack([torch.stack(views).mean(0) for views in per_view])
        mean_logits = torch.stack([F.softmax(model(data[i]["video"]).mean(0), dim=-1) for i in range(5)])
    torch.testing.assert_close(res.scores, expect, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(res.scores, mean_logits, atol=1e-6)  # the two rules differ on these clips
    assert res.views_text == "2x3" and torch.allclose(res.scores.sum(1), torch.ones(5))


def test_accuracy_and_per_class_against_counting_by_hand() -> None:
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = torch.tensor([1, 1, 0, 2])
    assert accuracy(scores, labels, 1) == 25.0  # only row 0
    assert accuracy(scores, labels, 2) == 50.0  # rows 0, 1
    assert accuracy(scores, labels, 5) == 100.0  # k capped at the class count
    rows = per_class_accuracy(scores, labels, ["a", "b", "c"])
    assert [(r["class"], r["clips"], r["top1"]) for r in rows] == [("a", 1, 0.0), ("b", 2, 50.0), ("c", 1, 0.0)]


def test_flops_per_view_count_attention_and_grow_with_the_clip() -> None:
    model = create_model("joint", size="tiny", frames=2, img_size=32, num_classes=3)
    for frames in (2, 4):
        count = view_flops(model, frames, 32)
        n = frames * (32 // 16) ** 2 + 1  # joint: every token (and the CLS) attends to every token
        assert count.attn_gflops == pytest.approx(4 * 2 * n * n * 128 / 1e9)  # depth x (QK^T + AV) MACs
        matrices = sum(p.numel() for name, p in model.named_parameters() if "blocks" in name and p.ndim == 2)
        assert count.gflops >= count.attn_gflops + matrices * n / 1e9 * 0.99
        assert gflops_per_view(model, frames, 32) == count.gflops
    data = RandomClips(3, frames=2, size=32, train=False)
    res = evaluate(model, data, views=(1, 1))  # the result row carries the same counts
    assert (res.gflops_per_view, res.attn_gflops_per_view) == (view_flops(model, 2, 32).gflops,
                                                               view_flops(model, 2, 32).attn_gflops)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FAKE_CLI), *args], env=ENV, cwd=ROOT, capture_output=True,
                          text=True, timeout=180)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    train(TrainConfig(out_dir=str(out), scheme="divided", data="random", frames=2, size=16, patch=8, epochs=1,
                      batch=4, device="cpu", model_options={"dim": 32, "depth": 2, "num_heads": 2}),
          train_data=RandomClips(12, frames=2, size=16), val_data=RandomClips(6, frames=2, size=16, train=False))
    return out / "last.pt"


def _one_error_line(capsys, *args: str) -> str:
    """Run ``vattn args`` in process (fake data); it must fail with exit 2 and one line on stderr."""
    code = run_cli(list(args))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("vattn: error:"), (code, err)
    return lines[0]


def test_eval_cli_row_has_accuracy_and_compute(trained: Path) -> None:
    proc = _cli("eval", "--ckpt", str(trained), "--data", "random", "--views", "2x3", "--batch", "4", "--per-class",
                "--csv", "-")
    assert proc.returncode == 0, proc.stderr
    frame = pd.read_csv(io.StringIO(proc.stdout))
    assert list(frame["class"]) == ["all", "c0", "c1", "c2"]
    row = frame.iloc[0]
    assert (row["scheme"], row["views"], row["frames"], row["size"], row["epochs"], row["clips"]) == (
        "divided", "2x3", 2, 16, 1, 12)
    assert row["gflops"] > row["attn_gflops"] > 0 and 0 <= row["top1"] <= row["top5"] <= 100 and row["status"] == "ok"
    assert {"params_m", "tokens", "throughput", "dataset", "top1", "top5"} <= set(frame.columns)
    assert frame["clips"].iloc[1:].sum() == 12
    assert list(frame.columns[-5:]) == measure.PROVENANCE_COLUMNS and list(frame.columns[-7:-5]) == ["class", "label"]
    assert row["torch_version"] == torch.__version__ and row["threads"] >= 1 and frame["machine"].nunique() == 1


def test_bad_checkpoints_are_one_line_exit_2(trained: Path, tmp_path: Path, capsys) -> None:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(trained.read_bytes()[: trained.stat().st_size // 2])
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    for path in (truncated, text, tmp_path / "x.pt"):
        assert str(path) in _one_error_line(capsys, "eval", "--ckpt", str(path), "--data", "random")
    line = _one_error_line(capsys, "eval", "--ckpt", str(trained), "--data", "random:5")
    assert "5 classes" in line and "3" in line


class _Payload:
    """Unpickling this creates a file: the kind of checkpoint that must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_that_runs_code_is_refused_and_nothing_runs(tmp_path: Path, capsys) -> None:
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"model": {"w": _Payload(marker)}, "config": {"scheme": "divided"}, "epoch": 0}, evil)
    _one_error_line(capsys, "eval", "--ckpt", str(evil), "--data", "random")
    _one_error_line(capsys, "train", "--init", str(evil), "--data", "random", "--frames", "2", "--size", "16",
                    "--patch", "8", "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet")
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is live: a plain unpickle does run it
    assert marker.exists()
