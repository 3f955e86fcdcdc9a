"""Our checkpoint format: round trips, resumable state, atomic writes, and refusing bad files."""

from __future__ import annotations

import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

from vattn_cli import __version__
from vattn_cli.errors import UsageError
from vattn_cli.zoo import create_model, load_checkpoint, read_checkpoint, save_checkpoint
from vattn_cli.zoo.checkpoints import export_pyth, restore_rng_states

FRAMES, SIZE, PATCH = 3, 32, 8


def tiny(scheme: str = "divided", dim: int = 64, **kwargs):
    model = create_model(scheme, size="tiny", frames=FRAMES, img_size=SIZE, patch=PATCH, num_classes=6,
                         dim=dim, depth=2, num_heads=2, **kwargs)
    with torch.no_grad():  # away from init, so divided's zero temporal_fc takes part too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def clip(frames: int = FRAMES, size: int = SIZE) -> torch.Tensor:
    return torch.randn(2, 3, frames, size, size)


@pytest.mark.parametrize("scheme", ["divided", "space", "joint"])
def test_round_trip_is_bit_exact_and_restores_config(scheme: str, tmp_path) -> None:
    model = tiny(scheme)
    path = save_checkpoint(tmp_path / "m.pt", model)
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    video = clip()
    with torch.no_grad():
        assert torch.equal(loaded(video), model(video))


def test_checkpoint_holds_the_contract_keys_and_training_state(tmp_path) -> None:
    model = tiny().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    model(clip()).sum().backward()
    opt.step()
    sched.step()
    extra = {"best_top1": np.float64(0.25), "labels": ["a", "b"], "hist": np.arange(3)}
    path = save_checkpoint(tmp_path / "run" / "last.pt", model, optimizer=opt, scheduler=sched,
                           epoch=3, step=120, extra=extra)
    ckpt = read_checkpoint(path)
    assert {"model", "config", "optimizer", "scheduler", "epoch", "step", "rng", "vattn_version"} <= set(ckpt)
    assert (ckpt["epoch"], ckpt["step"], ckpt["vattn_version"]) == (3, 120, __version__)
    assert ckpt["config"]["scheme"] == "divided"
    assert ckpt["extra"]["best_top1"] == 0.25 and type(ckpt["extra"]["best_top1"]) is float
    assert torch.equal(ckpt["extra"]["hist"], torch.arange(3))
    # The optimizer and scheduler states load into fresh ones and carry on identically.
    opt2 = torch.optim.AdamW(tiny().parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    sched2.load_state_dict(ckpt["scheduler"])
    assert sched2.get_last_lr() == sched.get_last_lr()
    # Only the checkpoint is left in the folder: no temporary files.
    assert os.listdir(tmp_path / "run") == ["last.pt"]


def test_rng_states_restore_every_generator(tmp_path) -> None:
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    path = save_checkpoint(tmp_path / "m.pt", tiny())
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], np.random.normal())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng_states(read_checkpoint(path))
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], np.random.normal())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and got[3] == expected[3]


def test_unstorable_extra_is_refused_before_touching_the_file(tmp_path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", tiny())
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"extra\['fn'\]"):
        save_checkpoint(path, tiny(), extra={"fn": lambda: 0})
    assert path.read_bytes() == before


def test_a_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch) -> None:
    path = save_checkpoint(tmp_path / "m.pt", tiny())
    before = path.read_bytes()

    def broken_save(obj, fh):
        fh.write(b"PK\x03\x04half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny())
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.pt"]


def test_load_at_another_setting_resizes_embeddings(tmp_path) -> None:
    model = tiny("joint")
    path = save_checkpoint(tmp_path / "m.pt", model)
    moved = load_checkpoint(path, frames=5, img_size=48)
    assert (moved.config.frames, moved.config.img_size) == (5, 48)
    assert moved.time_embed.shape[1] == 5 and moved.pos_embed.shape[1] == 1 + 6 * 6
    video = clip(5, 48)
    with torch.no_grad():  # the original resizes on the fly, the same nearest way
        assert torch.allclose(moved(video), model(video), atol=1e-6)


def test_load_with_other_classes_gets_a_fresh_head(tmp_path) -> None:
    model = tiny("space")
    path = save_checkpoint(tmp_path / "m.pt", model)
    fresh = load_checkpoint(path, num_classes=9)
    assert fresh.config.num_classes == 9 and fresh.head.weight.shape == (9, 64)
    assert torch.equal(fresh.blocks[1].mlp.fc2.weight, model.blocks[1].mlp.fc2.weight)
    with torch.no_grad():
        assert fresh(clip()).shape == (2, 9)


def one_line_usage_error(call) -> str:
    with pytest.raises(UsageError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_files_are_one_line_usage_errors(tmp_path) -> None:
    assert "does not exist" in one_line_usage_error(lambda: load_checkpoint(tmp_path / "nope.pt"))
    (tmp_path / "empty").mkdir()
    assert "without config.json" in one_line_usage_error(lambda: load_checkpoint(tmp_path / "empty"))

    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    assert "not a PyTorch checkpoint" in one_line_usage_error(lambda: load_checkpoint(text))
    blank = tmp_path / "blank.pt"
    blank.write_bytes(b"")
    assert "is empty" in one_line_usage_error(lambda: read_checkpoint(blank))

    whole = save_checkpoint(tmp_path / "whole.pt", tiny()).read_bytes()
    for cut in (len(whole) // 2, 200):
        truncated = tmp_path / f"cut{cut}.pt"
        truncated.write_bytes(whole[:cut])
        assert "truncated or corrupt" in one_line_usage_error(lambda: load_checkpoint(truncated))

    tensor_file = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_file)
    assert "holds a Tensor" in one_line_usage_error(lambda: load_checkpoint(tensor_file))
    odd = tmp_path / "odd.pt"
    torch.save({"weights": [1, 2]}, odd)
    assert "keys: weights" in one_line_usage_error(lambda: load_checkpoint(odd))


class _Payload:
    """A pickle that, if ever unpickled with code allowed, creates a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_that_runs_code_is_refused_and_never_runs(writer: str, tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"model": {"x": _Payload(str(marker))}, "config": {}}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as fh:
            pickle.dump(payload, fh, protocol=2)
    message = one_line_usage_error(lambda: load_checkpoint(path))
    assert message.startswith(f"checkpoint {path} cannot be loaded safely: it needs code from the file to run (")
    assert "GLOBAL" in message
    assert not marker.exists()


def test_official_layout_errors_and_heads(tmp_path) -> None:
    model = tiny("joint", dim=96)  # 2 heads of 48: the width is no multiple of ViT's head width 64
    path = export_pyth(model, tmp_path / "m.pyth")
    assert "pass num_heads" in one_line_usage_error(lambda: load_checkpoint(path))
    video = clip()
    with torch.no_grad():
        assert torch.equal(load_checkpoint(path, num_heads=2)(video), model(video))

    ckpt = read_checkpoint(path)
    ckpt["cfg"] = ckpt["cfg"].replace("joint_space_time", "divided_space_time")
    torch.save(ckpt, tmp_path / "lying.pyth")
    assert "cfg says divided" in one_line_usage_error(lambda: load_checkpoint(tmp_path / "lying.pyth", num_heads=2))

    bare = tmp_path / "bare.pth"  # a bare official state dict, no wrapper
    torch.save(ckpt["model_state"], bare)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(bare, num_heads=2)(video), model(video))

    no_time = tiny("joint", pos_embed="space")
    assert "no official TimeSformer layout" in one_line_usage_error(lambda: export_pyth(no_time, tmp_path / "x.pyth"))


def test_vattn_checkpoint_that_does_not_fit_its_config(tmp_path) -> None:
    path = save_checkpoint(tmp_path / "m.pt", tiny("divided"))
    ckpt = read_checkpoint(path)
    ckpt["config"]["scheme"] = "joint"
    torch.save(ckpt, tmp_path / "wrong.pt")
    assert "does not fit its joint config" in one_line_usage_error(lambda: load_checkpoint(tmp_path / "wrong.pt"))
    assert "multiple of 8" in one_line_usage_error(lambda: load_checkpoint(path, img_size=30))


def test_broken_hf_folders(tmp_path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "timesformer"}))
    assert "no weights" in one_line_usage_error(lambda: load_checkpoint(folder))
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    assert "truncated or corrupt" in one_line_usage_error(lambda: load_checkpoint(folder))
    (folder / "config.json").write_text(json.dumps({"model_type": "videomae"}))
    assert "truncated or corrupt" in one_line_usage_error(lambda: load_checkpoint(folder))  # a mapped type now
    (folder / "config.json").write_text(json.dumps({"model_type": "xclip"}))
    message = one_line_usage_error(lambda: load_checkpoint(folder))
    assert "'xclip' model, which vattn cannot map" in message
    assert "supported model types: timesformer, vivit, videomae" in message
