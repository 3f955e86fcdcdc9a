"""Training engine: exact resume (in process and after a real SIGKILL), schedule, sampler, run folders."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vattn_cli.engine import ShardedSampler, TrainConfig, resume_config, train
from vattn_cli.engine.optim import build_optimizer, build_scheduler, param_groups
from vattn_cli.engine.train import init_from_scratch_
from vattn_cli.errors import UsageError
from vattn_cli.zoo import create_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _clips import RandomClips, one_thread  # noqa: E402,F401  (autouse fixture)
from _fake_data_cli import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAKE_CLI = ROOT / "tests" / "_fake_data_cli.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
TINY = {"dim": 32, "depth": 2, "num_heads": 2, "drop_path_rate": 0.2, "drop_rate": 0.1}  # dropout: RNG matters


def _config(out: Path, **kw) -> TrainConfig:
    base = dict(out_dir=str(out), scheme="divided", data="random", model="tiny", frames=2, size=16, patch=8,
                epochs=3, batch=4, model_options=dict(TINY), device="cpu", save_every=2, seed=3)
    return TrainConfig(**{**base, **kw})


def _data():
    return RandomClips(20, frames=2, size=16, seed=1), RandomClips(9, frames=2, size=16, train=False, seed=1)


class Crash(Exception):
    pass


def _crash_at(step: int):
    def hook(event):
        if event.phase == "train" and (event.epoch - 1) * event.steps + event.step >= step:
            raise Crash
    return hook


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


EXACT = ("epoch", "step", "train_loss", "val_top1", "val_top5", "lr")


@pytest.mark.parametrize("crash_step", [3, 5, 10])  # between saves, at an epoch boundary, mid-epoch after a save
def test_crash_and_resume_in_process_is_bit_exact(tmp_path: Path, crash_step: int) -> None:
    train_set, val_set = _data()
    ref = train(_config(tmp_path / "ref"), train_data=train_set, val_data=val_set)
    with pytest.raises(Crash):
        train(_config(tmp_path / "run"), train_data=train_set, val_data=val_set, progress=_crash_at(crash_step))
    done = train(_config(tmp_path / "run", resume=True), train_data=train_set, val_data=val_set)
    assert done.resumed_from_step is not None and done.resumed_from_step < crash_step
    assert done.step == ref.step == 15
    _assert_same_weights(_weights(tmp_path / "ref" / "last.pt"), _weights(tmp_path / "run" / "last.pt"))
    ref_rows, rows = _rows(tmp_path / "ref" / "metrics.csv"), _rows(tmp_path / "run" / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]  # no duplicate rows
    assert [[r[k] for k in EXACT] for r in rows] == [[r[k] for k in EXACT] for r in ref_rows]


def test_resume_of_a_complete_run_trains_nothing(tmp_path: Path) -> None:
    train_set, val_set = _data()
    first = train(_config(tmp_path, epochs=1), train_data=train_set, val_data=val_set)
    again = train(_config(tmp_path, epochs=1, resume=True), train_data=train_set, val_data=val_set)
    assert again.step == first.step and again.history == first.history
    _assert_same_weights(first.model.state_dict(), again.model.state_dict())


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_autocast_dtypes_train(tmp_path: Path, dtype: str) -> None:
    train_set, val_set = _data()
    out = train(_config(tmp_path, epochs=2, dtype=dtype, save_every=0), train_data=train_set, val_data=val_set)
    losses = [row["train_loss"] for row in out.history]
    assert all(math.isfinite(x) for x in losses) and losses[1] < losses[0]
    assert all(p.dtype == torch.float32 for p in out.model.parameters())  # autocast: weights stay fp32


def test_run_folder_guards(tmp_path: Path) -> None:
    train_set, val_set = _data()
    train(_config(tmp_path, epochs=1), train_data=train_set, val_data=val_set)
    with pytest.raises(UsageError, match="--resume"):
        train(_config(tmp_path, epochs=1), train_data=train_set, val_data=val_set)
    with pytest.raises(UsageError, match="--frames 4 does not match"):
        train(_config(tmp_path, epochs=1, frames=4, resume=True), train_data=train_set, val_data=val_set)
    with pytest.raises(UsageError, match="--lr"):
        resume_config(tmp_path, {"lr": 0.5})
    with pytest.raises(UsageError, match="--train-scale"):
        _config(tmp_path / "x", train_scale=(1.2, 1.0)).validate()
    assert _config(tmp_path / "x", train_scale=[1, 1.15]).train_scale == (1.0, 1.15)  # JSON lists compare as tuples
    cfg = resume_config(tmp_path, {"device": "cpu", "workers": 1})  # what does not change the run may change
    assert (cfg.scheme, cfg.frames, cfg.resume, cfg.workers) == ("divided", 2, True, 1)


def test_sampler_shards_cover_the_data_and_restart_midway() -> None:
    n = 11
    shards = [ShardedSampler(n, shuffle=True, seed=5, rank=r, world_size=3) for r in range(3)]
    for s in shards:
        s.set_epoch(2)
    got = [list(s) for s in shards]
    assert all(len(g) == math.ceil(n / 3) for g in got)
    assert set(sum(got, [])) == set(range(n))
    again = ShardedSampler(n, shuffle=True, seed=5, rank=1, world_size=3)
    again.set_epoch(2, start=2)
    assert list(again) == got[1][2:] and len(again) == len(got[1]) - 2
    other = ShardedSampler(n, shuffle=True, seed=5)
    orders = []
    for epoch in (0, 1, 0):
        other.set_epoch(epoch)
        orders.append(list(other))
    assert orders[0] == orders[2] != orders[1] and sorted(orders[1]) == list(range(n))


def test_lr_schedule_warms_up_then_follows_the_cosine() -> None:
    model = create_model("space", size="tiny", frames=1, img_size=16, num_classes=2, dim=16, depth=1, num_heads=2)
    opt = build_optimizer(model, "sgd", lr=0.1, weight_decay=0.0)
    total, warm, floor = 20, 4, 0.01
    sched = build_scheduler(opt, total, warm, min_ratio=floor)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expect = [0.1 * (s + 1) / warm for s in range(warm)]
    expect += [0.1 * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * i / (total - warm - 1))))
               for i in range(total - warm)]
    assert seen == pytest.approx(expect)
    assert seen[warm - 1] == pytest.approx(0.1) and seen[-1] == pytest.approx(0.1 * floor)


def test_no_weight_decay_on_norms_biases_and_embeddings() -> None:
    model = create_model("divided", size="tiny", frames=2, img_size=16, num_classes=2, dim=16, depth=1, num_heads=2)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} >= {"pos_embed", "time_embed", "cls_token", "norm.weight",
                                                          "head.bias"}
    assert all(p.ndim == 2 or p.ndim == 4 for p in decay["params"]) and decay["weight_decay"] == 0.05


@pytest.mark.parametrize("scheme", ["divided", "axial", "local_global", "joint", "rsa", "space"])
def test_from_scratch_init_sees_frame_order(scheme: str) -> None:
    """From scratch, the time embedding and zeroed temporal projections are drawn (std 0 keeps
    the zoo's init): with them, reversing a clip changes the output of a fresh model."""
    torch.manual_seed(0)
    model = create_model(scheme, size="tiny", frames=4, img_size=16, patch=8, num_classes=3, dim=32, depth=1,
                         num_heads=2).eval()
    zoo = {k: v.clone() for k, v in model.state_dict().items()}
    init_from_scratch_(model, 0.0)
    _assert_same_weights(zoo, model.state_dict())
    clip = torch.randn(2, 3, 4, 16, 16)
    flipped = clip.flip(2)

    def order_effect() -> float:  # pooled features of a clip against its reversal, relative
        with torch.no_grad():
            a, b = model.forward_features(clip), model.forward_features(flipped)
        return float((a - b).norm() / a.norm())

    if scheme != "rsa":  # zoo init: blind to order (RSA's local kernels see it from the start)
        assert order_effect() < 1e-6
    init_from_scratch_(model, 1.0)
    if scheme == "space":  # no time embedding, frames pooled: blind to order whatever the init
        assert model.time_embed is None and order_effect() < 1e-6
        return
    embeds = [getattr(model, n) for n in ("pos_embed", "time_embed") if getattr(model, n, None) is not None]
    assert embeds and all(0.6 < float(e.detach().std()) < 1.2 and float(e.detach().abs().max()) <= 2.0
                          for e in embeds)
    for name, value in model.state_dict().items():
        if name.endswith("_fc.weight"):
            assert float(value.abs().max()) > 0, name  # the zeroed projections were drawn
    for name, module in model.named_modules():  # LeCun normal, not ViT-Base's 0.02
        if isinstance(module, torch.nn.Linear) and name != "head":
            assert 0.7 < float(module.weight.std()) * module.in_features ** 0.5 < 1.05, name
    assert torch.equal(model.head.weight, zoo["head.weight"])
    assert order_effect() > 1e-4  # small (attention starts near uniform), but 100x the float noise above


def test_init_starts_from_a_checkpoint_with_a_new_head(tmp_path: Path) -> None:
    train_set, val_set = _data()
    src = train(_config(tmp_path / "src", epochs=1), train_data=train_set, val_data=val_set)
    four = RandomClips(8, num_classes=4, frames=2, size=16)
    cfg = _config(tmp_path / "ft", epochs=1, init=str(tmp_path / "src" / "last.pt"), lr=1e-12, scheme=None,
                  model_options={})
    out = train(cfg, train_data=four)
    assert out.model.head.weight.shape[0] == 4 and out.num_classes == 4
    before = src.model.state_dict()
    for key, value in out.model.state_dict().items():
        if not key.startswith("head."):
            assert torch.allclose(value, before[key], atol=1e-8), key
    with pytest.raises(UsageError, match="--scheme 'joint' does not match --init"):
        train(_config(tmp_path / "bad", epochs=1, init=str(tmp_path / "src" / "last.pt"), scheme="joint"),
              train_data=four)


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(FAKE_CLI), *args], env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _train_args(out: Path, *extra: str) -> list[str]:
    return ["train", "--scheme", "divided", "--data", "random", "--val", "random", "--model", "tiny", "--frames", "2",
            "--size", "16", "--patch", "8", "--epochs", "2", "--batch", "4", "--workers", "1", "--out", str(out),
            "--quiet", *extra]


def _finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err


@pytest.mark.slow
def test_sigkill_then_resume_ends_with_the_same_weights(tmp_path: Path) -> None:
    """A real SIGKILL of `vattn train` after some steps, then `--resume`: weights equal an uninterrupted run."""
    ref = _cli(*_train_args(tmp_path / "ref"))  # saving only per epoch: checkpoints must not change the run
    run = _cli(*_train_args(tmp_path / "run", "--save-every", "1"))
    last, total, killed_at = tmp_path / "run" / "last.pt", 12, None
    deadline, seen = time.time() + 240, None
    while time.time() < deadline and run.poll() is None:
        stamp = last.stat().st_mtime_ns if last.exists() else None
        if stamp is not None and stamp != seen:
            seen = stamp
            step = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["step"]
            if step >= 4:
                os.kill(run.pid, signal.SIGKILL)
                run.wait()
                killed_at = step
                break
        time.sleep(0.02)
    assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert killed_at <= saved["step"] < total, "the kill must land before the end"
    _finish(ref)
    _finish(_cli(*_train_args(tmp_path / "run", "--resume")))
    _assert_same_weights(_weights(tmp_path / "ref" / "last.pt"), _weights(last))
    rows, ref_rows = _rows(tmp_path / "run" / "metrics.csv"), _rows(tmp_path / "ref" / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert [[r[k] for k in EXACT] for r in rows] == [[r[k] for k in EXACT] for r in ref_rows]


def test_resume_with_other_flags_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    train_set, val_set = _data()
    train(_config(tmp_path, epochs=1), train_data=train_set, val_data=val_set)
    code = run_cli(["train", "--out", str(tmp_path), "--resume", "--frames", "8"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0 and "--frames 8 does not match" in err, err
    code = run_cli(["train", "--out", str(tmp_path), "--data", "random", "--frames", "2"])  # no --resume
    err = capsys.readouterr().err
    assert code == 2 and "already holds a run" in err and err.strip().count("\n") == 0, err
