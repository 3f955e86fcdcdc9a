"""The built-in benchmark: determinism, exact time reversals, balance, caching, the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import decord
import numpy as np
import torch
import pandas as pd
import pytest

from vattn_cli.data import VideoClipDataset, resolve_data
from vattn_cli.data.synth import (
    APPEARANCE_COLOURS, COLOURS, MOTION_CLASSES, REVERSAL_PAIRS, Glyphs, SynthConfig, make_clip, synthesize,
    write_mp4,
)
from vattn_cli.errors import UsageError

SMALL = SynthConfig(train=12, val=6, frames=8, size=32)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vattn_cli", *args], capture_output=True, text=True)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def decode(path: Path) -> np.ndarray:
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def test_same_seed_same_bytes_other_seed_other_videos(tmp_path: Path) -> None:
    synthesize("both", tmp_path / "a", SMALL)
    synthesize("both", tmp_path / "b", SMALL)
    a, b = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert a == b and len([k for k in a if k.endswith(".mp4")]) == 2 * (12 + 6)
    synthesize("motion", tmp_path / "c", SynthConfig(train=12, val=6, frames=8, size=32, seed=1))
    c = digest(tmp_path / "c")
    assert c["videos/train/00000.mp4"] != a["motion/videos/train/00000.mp4"]


def test_layout_lists_and_balance(tmp_path: Path) -> None:
    balance = synthesize("both", tmp_path / "out", SynthConfig(train=24, val=12, frames=8, size=32))
    for task, classes in (("motion", len(MOTION_CLASSES)), ("appearance", 8)):
        folder = tmp_path / "out" / task
        assert json.loads((folder / "classes.json").read_text()) == (
            list(MOTION_CLASSES) if task == "motion" else [f"{c} {s}" for s in Glyphs("shapes").names for c in APPEARANCE_COLOURS])
        for split, n in (("train", 24), ("val", 12)):
            frame = pd.read_csv(folder / f"{split}.csv")
            assert list(frame.columns) == ["path", "label"] and len(frame) == n
            assert all((folder / p).is_file() for p in frame["path"])
            counts = np.bincount(frame["label"], minlength=classes)
            assert counts.max() - counts.min() <= 1  # balanced
            rows = balance[(balance.task == task) & (balance.split == split)]
            assert rows["videos"].tolist() == counts.tolist()
    meta = json.loads((tmp_path / "out" / "motion" / "meta.json").read_text())
    assert meta["reversal_pairs"] == [list(p) for p in REVERSAL_PAIRS] and meta["frames"] == 8
    shape = decode(tmp_path / "out" / "motion" / "videos" / "val" / "00000.mp4").shape
    assert shape == (8, 32, 32, 3)


def test_reversed_classes_are_exactly_the_frames_backwards(tmp_path: Path) -> None:
    cfg = SynthConfig(frames=8, size=64)
    glyphs = Glyphs("shapes")
    for forward, backward in REVERSAL_PAIRS:
        fwd = make_clip("motion", forward, np.random.default_rng(11), cfg, glyphs, "train")
        bwd = make_clip("motion", backward, np.random.default_rng(11), cfg, glyphs, "train")
        assert np.array_equal(bwd, fwd[::-1]) and not np.array_equal(fwd, fwd[::-1])
        # and so after coding: intra-only at a fixed quantiser, no compression cue to time's arrow
        write_mp4(tmp_path / "f.mp4", fwd)
        write_mp4(tmp_path / "b.mp4", bwd)
        assert np.array_equal(decode(tmp_path / "b.mp4"), decode(tmp_path / "f.mp4")[::-1])


def test_motion_val_split_comes_in_reversal_pairs(tmp_path: Path) -> None:
    """Val videos 2j and 2j+1 are one clip both ways with partner labels, so an order-blind model
    scores exactly 50% reversal-pair accuracy; train videos are independent draws."""
    synthesize("motion", tmp_path / "m", SynthConfig(train=8, val=8, frames=9, size=32))
    partner = {a: b for a, b in REVERSAL_PAIRS} | {b: a for a, b in REVERSAL_PAIRS}
    val = pd.read_csv(tmp_path / "m" / "val.csv")
    for j in range(0, len(val), 2):
        a, b = val.iloc[j], val.iloc[j + 1]
        assert partner[int(a["label"])] == int(b["label"])
        assert np.array_equal(decode(tmp_path / "m" / b["path"]), decode(tmp_path / "m" / a["path"])[::-1])
    train = pd.read_csv(tmp_path / "m" / "train.csv")
    first, second = decode(tmp_path / "m" / train["path"][0]), decode(tmp_path / "m" / train["path"][1])
    assert not np.array_equal(second, first[::-1])
    scores = torch.randn(len(val) // 2, len(MOTION_CLASSES)).repeat_interleave(2, 0)
    from vattn_cli.ablate.schemes import pair_accuracy  # identical scores per pair: exactly one win each
    assert pair_accuracy(scores, torch.tensor(val["label"].to_numpy()), REVERSAL_PAIRS) == 50.0


def centroid_path(frames: np.ndarray) -> np.ndarray:
    """(y, x) centre of the coloured target per frame (the grey distractor has no saturation)."""
    f = frames.astype(float)
    saturation = f.max(-1) - f.min(-1)
    out = []
    for mask in saturation > 80:
        ys, xs = np.nonzero(mask)
        out.append((ys.mean(), xs.mean()))
    return np.array(out)


def test_motion_classes_move_as_named() -> None:
    cfg, glyphs = SynthConfig(frames=8, size=64), Glyphs("shapes")
    for seed in range(4):
        moves = [np.diff(centroid_path(make_clip("motion", k, np.random.default_rng(seed), cfg, glyphs, "train")), axis=0)
                 for k in range(len(MOTION_CLASSES))]
        total = [m.sum(0) for m in moves]
        assert total[0][1] > 30 and abs(total[0][0]) < 2  # right, far enough to cross two 16-pixel patches
        assert total[1][1] < -30 and abs(total[1][0]) < 2  # left
        assert total[2][0] > 30 and abs(total[2][1]) < 2  # down
        assert total[3][0] < -30 and abs(total[3][1]) < 2  # up
        assert (moves[0][:, 1] > 0).all() and (moves[3][:, 0] < 0).all()  # steadily, every frame


def test_appearance_colour_matches_class() -> None:
    cfg, glyphs = SynthConfig(frames=4, size=64), Glyphs("shapes")
    for label in range(8):
        frames = make_clip("appearance", label, np.random.default_rng(label), cfg, glyphs, "train").astype(float)
        object_pixels = frames[(frames.max(-1) - frames.min(-1)) > 80]
        want = np.array(COLOURS[APPEARANCE_COLOURS[label % len(APPEARANCE_COLOURS)]])
        assert np.abs(object_pixels.mean(0) - want).max() < 30


def test_digits_need_scikit_learn() -> None:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="scikit-learn"):
            Glyphs("digits")
        return
    glyphs = Glyphs("digits")
    assert glyphs.names == [str(d) for d in range(10)]
    assert glyphs.mask(3, 24, np.random.default_rng(0), "val").shape == (24, 24)


def test_crash_leaves_nothing_and_out_is_guarded(tmp_path: Path) -> None:
    def crash(done: int, total: int) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthesize("motion", tmp_path / "out", SMALL, progress=crash)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary folder
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(UsageError, match="not empty"):
        synthesize("motion", tmp_path / "mine", SMALL)
    with pytest.raises(UsageError, match="did not write"):
        synthesize("motion", tmp_path / "mine", SMALL, force=True)
    synthesize("motion", tmp_path / "ok", SMALL)
    synthesize("both", tmp_path / "ok", SMALL, force=True)  # replaces an earlier synth output
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["appearance", "motion"]


def test_resolve_builtin_generates_once_into_the_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VATTN_CACHE", str(tmp_path / "cache"))
    kwargs = {"train": 12, "val": 6, "frames": 8, "size": 32}
    spec = resolve_data("builtin:motion", **kwargs)
    folder = spec.list_path.parent
    assert folder.parent == tmp_path / "cache" / "builtin" and folder.name.startswith("motion-")
    assert (spec.name, spec.num_classes, spec.class_names, len(spec.items)) == ("builtin:motion", 4, list(MOTION_CLASSES), 12)
    assert spec.meta["reversal_pairs"] == [list(p) for p in REVERSAL_PAIRS]
    stamp = (folder / "train.csv").stat().st_mtime_ns
    val = resolve_data("builtin:motion", split="val", **kwargs)
    assert len(val.items) == 6 and (folder / "train.csv").stat().st_mtime_ns == stamp  # reused, not rewritten
    other = resolve_data("builtin:motion", cache_dir=tmp_path / "elsewhere", **{**kwargs, "seed": 3})
    assert other.list_path.parent.parent == tmp_path / "elsewhere" and other.list_path.parent.name != folder.name
    clip = VideoClipDataset(spec.items, frames=8, size=32, train=True)[0]["video"]
    assert clip.shape == (3, 8, 32, 32)
    with pytest.raises(UsageError, match="unknown builtin data setting 'colours'"):
        resolve_data("builtin:appearance", colours=3)


def test_cli_synth_then_check(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    done = run("data", "synth", "--task", "both", "--out", str(out), "--train", "12", "--val", "6",
               "--size", "32", "--csv", "-")
    assert done.returncode == 0, done.stderr
    balance = pd.read_csv(io.StringIO(done.stdout))  # stdout carries the CSV alone
    assert set(balance.columns) >= {"task", "split", "label", "class", "videos"} and balance["videos"].sum() == 36
    checked = run("data", "check", str(out / "motion"), "--csv", "-")
    assert checked.returncode == 0, checked.stderr
    assert pd.read_csv(io.StringIO(checked.stdout)).empty and "18 videos checked" in checked.stderr
    # a list with a missing and a corrupt video: exit 1, both named with their lines
    (out / "broken.mp4").write_bytes(b"\x00" * 100)
    lst = out / "mixed.csv"
    lst.write_text("path,label\nmotion/videos/train/00000.mp4,0\nnowhere.mp4,1\nbroken.mp4,2\n")
    bad = run("data", "check", str(lst), "--json", "-")
    assert bad.returncode == 1, bad.stderr
    rows = json.loads(bad.stdout)
    assert [(r["line"], Path(r["path"]).name) for r in rows] == [(3, "nowhere.mp4"), (4, "broken.mp4")]
    assert "ERROR opening" not in bad.stderr  # decord's own log is kept off the terminal


@pytest.mark.parametrize("args", [["data", "synth", "--out", "X", "--task", "colour"],
                                  ["data", "synth", "--out", "X", "--size", "33"],
                                  ["data", "check", "X/none.csv"]])
def test_cli_usage_errors(tmp_path: Path, capsys, args: list[str]) -> None:
    from vattn_cli.cli import main  # in-process: the same entry point, without a fresh interpreter

    with pytest.raises(SystemExit) as code:
        main([a.replace("X", str(tmp_path / "x")) for a in args])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code.value.code == 2 and len(lines) == 1 and lines[0].startswith("vattn: error:"), lines
    assert not (tmp_path / "x").exists()
