"""Every scheme attends where it says: declared attention steps checked against the code by masking,
the reach measured by gradients, and ``vattn zoo --show`` / ``--check`` on top of them.

The step check (:func:`vattn_cli.measure.reach.check_steps`) silences every other step, masks all
tokens outside a step's declared keys (the output must not move) and each declared key alone (it
must move). Its teeth are shown by mutants: the same blocks with their mixing changed (a divided
whose temporal step attends within the frame, an axial with width and height swapped, every
scheme fed the previous frame's tokens or cut into single frames) must fail it.
"""

from __future__ import annotations

import copy
import io
import sys
import textwrap
import types
from pathlib import Path

import pandas as pd
import pytest
import torch
from einops import rearrange

from vattn_cli.measure.reach import Layout, attention_maps, check_steps, influence, probe_block, randomize_, scheme_map
from vattn_cli.zoo import create_model
from vattn_cli.zoo.catalog import builtin_schemes, register_scheme, unregister_scheme
from vattn_cli.zoo.scheme import Grid, SoftmaxBlock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _clips import one_thread  # noqa: E402,F401  (autouse fixture: tiny tensors, busy cores)

FRAMES, SIZE = 4, 96  # a 4 x 6 x 6 token grid at patch 16
BUILTIN = builtin_schemes()


def block_at(name: str, frames: int = FRAMES, size: int = SIZE, index: int = 0, **options):
    model = create_model(name, size="tiny", depth=index + 1, dim=48, num_heads=4, frames=frames, img_size=size,
                         num_classes=0, **options)
    side = size // 16
    return model.blocks[index], Layout(Grid(frames, side, side), model.cls_mode)


def failures(block, layout) -> list:
    return [r for r in check_steps(block, layout) if not r.passed]


# -- each built-in scheme's declaration holds ---------------------------------------------------

@pytest.mark.parametrize("name", BUILTIN)
def test_declared_steps_are_what_the_code_attends_to(name: str) -> None:
    block, layout = block_at(name)
    assert block.attention_steps(), f"{name} declares no attention steps"
    results = check_steps(block, layout)
    assert results and not [r for r in results if not r.passed], [r for r in results if not r.passed]


# Options under which the patterns are not the whole clip at a small grid: windows smaller than
# the grid, padded and shifted (an odd block), strides that leave tokens unread, X-ViT's variants.
OPTION_CASES = [
    ("window", 1, {"window": (2, 4, 4)}), ("window", 0, {"window": (3, 3, 3)}), ("window", 1, {"window": (3, 3, 5)}),
    ("rsa", 0, {"window": 3}), ("pooled", 0, {"kv_stride": 4}), ("pooled", 0, {"kv_stride": 4, "pool_q": True}),
    ("structsa", 0, {"kv_stride": 4}), ("xvit", 0, {"window": 2, "mix": 0.125}), ("xvit", 0, {"mix": 0.0}),
    ("xvit", 0, {"split": "head"}),
]


@pytest.mark.parametrize("name, index, options", OPTION_CASES, ids=lambda v: str(v))
def test_declared_steps_hold_with_options(name: str, index: int, options: dict) -> None:
    block, layout = block_at(name, frames=5, size=128, index=index, **options)  # 5 x 8 x 8
    assert not failures(block, layout)


def test_odd_grid_and_tubelets() -> None:
    for name in ("local_global", "window", "axial"):
        block, layout = block_at(name, frames=3, size=112)  # 3 x 7 x 7
        assert not failures(block, layout), name
    block, layout = probe_block("divided", 8, 64, 16, tubelet=2)  # 4 x 4 x 4 temporal positions
    assert layout.grid == Grid(4, 4, 4) and not failures(block, layout)


# -- ... and fails when the mixing is changed -----------------------------------------------------

from vattn_cli.zoo.schemes import axial as axial_module  # noqa: E402
from vattn_cli.zoo.schemes.axial import AxialAttention  # noqa: E402
from vattn_cli.zoo.schemes.divided import DividedAttention  # noqa: E402
from vattn_cli.zoo.schemes.local_global import LocalGlobalAttention  # noqa: E402


class DividedWithinFrame(DividedAttention):
    """Divided whose 'temporal' step attends within the frame: the issue's example of a wrong mixing."""

    def forward(self, x, grid):
        t = grid.t
        cls, patches = x[:, :1], x[:, 1:]

        def within_frame(attn, y):
            frames = rearrange(y, "b (t n) d -> (b t) n d", t=t)
            return rearrange(attn(frames), "(b t) n d -> b (t n) d", t=t)

        patches = patches + self.temporal(patches, within_frame)
        frames = torch.cat([cls.repeat_interleave(t, dim=0), rearrange(patches, "b (t n) d -> (b t) n d", t=t)], dim=1)
        res = self.attn(self.norm1(frames))
        res_cls = rearrange(res[:, :1], "(b t) 1 d -> b t d", t=t).mean(1, keepdim=True)
        x = torch.cat([cls + res_cls, patches + rearrange(res[:, 1:], "(b t) n d -> b (t n) d", t=t)], dim=1)
        return x + self.mlp(self.norm2(x))


class AxialSwapped(AxialAttention):
    """Axial whose width step runs along the columns and height step along the rows (same modules)."""

    def attend_axis(self, axis, cls, patches, grid):
        saved = axial_module._LINES
        axial_module._LINES = dict(saved, w=saved["h"], h=saved["w"])
        try:
            return super().attend_axis(axis, cls, patches, grid)
        finally:
            axial_module._LINES = saved


class GlobalEverywhere(LocalGlobalAttention):
    """local_global whose 'sparse' global step attends to every token."""

    def global_attention(self, x, grid):
        return self.attn(x)


def _mutant(cls: type, name: str):
    model = create_model(name, size="tiny", depth=1, dim=48, num_heads=4, frames=FRAMES, img_size=SIZE, num_classes=0)
    block = model.blocks[0]
    mutant = cls(block.args)
    mutant.load_state_dict(block.state_dict())
    return mutant, Layout(Grid(FRAMES, SIZE // 16, SIZE // 16), model.cls_mode)


@pytest.mark.parametrize("cls, name, wrong", [(DividedWithinFrame, "divided", {"time"}),
                                              (AxialSwapped, "axial", {"width", "height"}),
                                              (GlobalEverywhere, "local_global", {"global"})])
def test_changed_mixing_fails_the_step_it_changes(cls: type, name: str, wrong: set) -> None:
    mutant, layout = _mutant(cls, name)
    failed = failures(mutant, layout)
    assert {r.step for r in failed} == wrong
    assert any("undeclared token" in r.detail for r in failed)


def test_a_declaration_wider_than_the_code_fails() -> None:
    from vattn_cli.zoo.steps import AttentionStep, everywhere

    block, layout = block_at("space")
    block.attention_steps = lambda: (AttentionStep("space", everywhere, output="attn.proj", cls=True),)
    failed = failures(block, layout)
    assert len(failed) == 4 and all("declared keys masked do not change the output" in r.detail for r in failed)
    assert not any("undeclared" in r.detail for r in failed)


def _shifted(block):
    """The block fed the previous frame's patches (cyclically): every query reads one frame back."""
    mutant = copy.deepcopy(block)
    forward = type(block).forward

    def shifted(self, x, grid):
        index = Layout(grid, self.cls_token).patch_index()
        perm = torch.arange(x.shape[1])
        perm[index.flatten()] = index.roll(1, dims=0).flatten()
        return forward(self, x[:, perm], grid)

    mutant.forward = types.MethodType(shifted, mutant)
    return mutant


def _frame_by_frame(block):
    """The block run on each frame alone (a clip of one frame; a shared CLS copied in and averaged)."""
    mutant = copy.deepcopy(block)
    forward = type(block).forward

    def per_frame(self, x, grid):
        layout = Layout(grid, self.cls_token)
        out = torch.zeros_like(x)
        cls_sum = 0
        for t in range(grid.t):
            cls = [int(layout.cls_index()[t if self.cls_token == "per_frame" else 0])] if layout.cls_count else []
            pos = torch.tensor(cls + layout.patch_index()[t].flatten().tolist())
            y = forward(self, x[:, pos], Grid(1, grid.h, grid.w))
            if self.cls_token == "shared":
                cls_sum = cls_sum + y[:, :1]
                out[:, pos[1:]] = y[:, 1:]
            else:
                out[:, pos] = y
        if self.cls_token == "shared":
            out[:, :1] = cls_sum / grid.t
        return out

    mutant.forward = types.MethodType(per_frame, mutant)
    return mutant


@pytest.mark.parametrize("name", BUILTIN)
def test_every_scheme_fails_when_fed_other_tokens(name: str) -> None:
    """Generic mixing changes: reading the previous frame, or frames cut apart. Every built-in
    scheme declares a pattern that one of them breaks (space-only: the shift; joint: the cut)."""
    block, layout = block_at(name)
    shifted, cut = failures(_shifted(block), layout), failures(_frame_by_frame(block), layout)
    assert shifted or cut
    crosses_frames = any(bool(s.keys(layout.grid, (2, 3, 3)).flatten(1).any(1).sum() > 1) for s in block.attention_steps())
    assert bool(cut) == crosses_frames  # cutting frames apart breaks exactly the steps that cross frames


# -- the reach, measured by gradients ---------------------------------------------------------------

def test_reach_by_gradient_against_hand_counts() -> None:
    q = (2, 3, 3)
    for name, want in [("space", 36 + 1), ("joint", 145), ("divided", 145), ("axial", 145), ("rsa", 144)]:
        block, layout = block_at(name)
        reach = influence(randomize_(copy.deepcopy(block)), layout, q)
        assert int(reach.sum()) == want, name
    # space: its frame and that frame's CLS, nothing else
    block, layout = block_at("space")
    reach = influence(randomize_(copy.deepcopy(block)), layout, q)
    patches, cls = layout.split(reach)
    assert patches[2].all() and not patches[[0, 1, 3]].any() and cls.tolist() == [False, False, True, False]
    # the zoo's own init (divided's zero temporal_fc) hides the temporal step: hence random weights
    block, layout = block_at("divided")
    assert int(influence(block.double().eval(), layout, q).sum()) == 36 + 1


@pytest.mark.parametrize("name", BUILTIN)
def test_maps_measure_what_each_step_declares(name: str) -> None:
    block, layout = block_at(name)
    row = scheme_map(block, layout, (1, 2, 4), scheme=name)
    assert row.steps and all(p.matches for p in row.steps)
    union = sum(p.keys.astype(int) for p in row.steps) > 0
    assert (row.block.keys | union).sum() == row.block.keys.sum()  # each step's keys reach through the block


class SameFrameNoSteps(SoftmaxBlock):
    cls_token = "none"
    description = "test: attention within the frame, no steps declared"

    def attend(self, x, grid):
        frames = rearrange(x, "b (t n) d -> (b t) n d", t=grid.t)
        return rearrange(self.attn(frames), "(b t) n d -> b (t n) d", t=grid.t)


def test_a_scheme_without_steps_gets_the_whole_block_panel() -> None:
    register_scheme("test_no_steps")(SameFrameNoSteps)
    try:
        (row,) = attention_maps(["test_no_steps"], FRAMES, SIZE, 16, query="0,5,5")
    finally:
        unregister_scheme("test_no_steps")
    assert row.steps == [] and row.block.keys[0].all() and not row.block.keys[1:].any()


# -- the CLI ----------------------------------------------------------------------------------------

def vattn(capsys, *args: str) -> tuple[int, str, str]:
    from vattn_cli.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exited.value.code, out.out, out.err


def test_zoo_show_draws_and_counts(capsys, tmp_path) -> None:
    png = tmp_path / "map.png"
    code, out, err = vattn(capsys, "zoo", "--show", "divided,space", "--frames", FRAMES, "--img-size", SIZE,
                           "--query", "1,2,3", "--out", png, "--csv", "-")
    assert code == 0, err
    table = pd.read_csv(io.StringIO(out), dtype={"frame": str})
    divided = table[table.scheme == "divided"].set_index(["step", "frame"])
    assert divided.loc[("time", "0"), "keys"] == 1 and divided.loc[("time", "cls"), "keys"] == 0
    assert divided.loc[("space", "1"), "keys"] == 36 and divided.loc[("space", "0"), "keys"] == 0
    assert divided.loc[("space", "cls"), "keys"] == 1 and divided.loc[("block", "3"), "keys"] == 36
    space = table[(table.scheme == "space") & (table.step == "block")].set_index("frame")
    assert space.loc["1", "keys"] == 36 and space.loc["cls", "keys"] == 1 and space.loc["cls", "of"] == FRAMES
    assert table["matches_declared"].all() and set(table["query"]) == {"1,2,3"}
    from PIL import Image

    with Image.open(png) as image:
        assert image.size[0] > 800 and image.size[1] > 200
    assert "vattn zoo --show" in err  # the table goes to stderr when stdout carries CSV
    code, out, err = vattn(capsys, "zoo", "--show", "space", "--frames", 2, "--size", 64, "--csv", "-", "-q")
    assert code == 0 and set(pd.read_csv(io.StringIO(out))["of"]) == {16, 2}  # --size 64: a 4 x 4 grid


@pytest.mark.parametrize("args, flag", [
    (["--query", "4,0,0"], "--query"), (["--query", "1,2"], "--query"), (["--out", "map.gif"], "--out"),
    (["--model", "tiny"], "--model"), (["--img-size", "100"], "100"), (["--size", "112"], "--size"),
])
def test_zoo_show_bad_input_is_one_line(capsys, tmp_path, args: list, flag: str) -> None:
    args = [str(tmp_path / a) if a.endswith(".gif") else a for a in args]
    code, out, err = vattn(capsys, "zoo", "--show", "divided", "--frames", FRAMES, "--img-size", SIZE, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and flag in lines[0] and "Traceback" not in err, err


STEPS_MODULE = '''
from einops import rearrange
from vattn_cli.zoo.scheme import SoftmaxBlock
from vattn_cli.zoo.steps import AttentionStep, same


class FrameAttention(SoftmaxBlock):
    cls_token = "none"
    description = "within the frame"

    def attend(self, x, grid):
        frames = rearrange(x, "b (t n) d -> (b t) n d", t=grid.t)
        return rearrange(self.attn(frames), "(b t) n d -> b (t n) d", t=grid.t)

    def attention_steps(self):
        return (AttentionStep("space", same("t"), output="attn.proj"),)


class ClaimsTime(FrameAttention):
    def attention_steps(self):
        return (AttentionStep("time", same("hw"), output="attn.proj"),)


class BrokenSteps(FrameAttention):
    def attention_steps(self):
        return (AttentionStep("space", same("t"), output="attn.nope"),)
'''


def test_zoo_check_runs_the_step_check_for_external_schemes(capsys, tmp_path, monkeypatch) -> None:
    (tmp_path / "steps_scheme.py").write_text(textwrap.dedent(STEPS_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        code, out, err = vattn(capsys, "zoo", "--check", "steps_scheme:FrameAttention", "--csv", "-", "--quiet")
        table = pd.read_csv(io.StringIO(out)).set_index("check")
        assert code == 0 and table.loc["steps", "status"] == "pass", err
        code, out, err = vattn(capsys, "zoo", "--check", "steps_scheme:ClaimsTime", "--csv", "-", "--quiet")
        table = pd.read_csv(io.StringIO(out)).set_index("check")
        assert code == 1 and table.loc["steps", "status"] == "fail"
        assert "undeclared token" in table.loc["steps", "detail"] and table.loc["flops", "status"] == "pass"
        code, out, err = vattn(capsys, "zoo", "--check", "steps_scheme:BrokenSteps", "--csv", "-", "--quiet")
        table = pd.read_csv(io.StringIO(out)).set_index("check")
        assert code == 1 and table.loc["steps", "status"] == "fail" and "attn.nope" in table.loc["steps", "detail"]
    finally:
        sys.modules.pop("steps_scheme", None)
        from vattn_cli.zoo.registry import unregister_scheme

        for name in ("FrameAttention", "ClaimsTime", "BrokenSteps"):  # later tests list the schemes
            unregister_scheme(f"steps_scheme:{name}")
