"""The scheme interface (v2): ``BlockArgs``, one-file schemes, the first interface still working,
the side branch and its initialisation hook.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from vattn_cli.testing import check_scheme
from vattn_cli.zoo import BlockArgs, create_model, get_scheme
from vattn_cli.zoo import catalog
from vattn_cli.zoo.registry import scheme_options, unregister_scheme

ROOT = Path(__file__).resolve().parents[1]

#: A whole scheme: its option and its mixing, nothing about the standard block arguments.
ONE_FILE = '''
import math

from einops import rearrange

from vattn_cli.zoo import BlockArgs, SoftmaxBlock


class FrameWindow(SoftmaxBlock):
    """Attention within windows of `window` consecutive frames (all patches of those frames)."""

    cls_token = "none"
    description = "attention within windows of consecutive frames"

    def __init__(self, args: BlockArgs, window: int = 2) -> None:
        super().__init__(args)
        self.window = window

    def attend(self, x, grid):
        w = math.gcd(self.window, grid.t)
        windows = rearrange(x, "b (g w n) d -> (b g) (w n) d", w=w, n=grid.h * grid.w)
        return rearrange(self.attn(windows), "(b g) (w n) d -> b (g w n) d", g=grid.t // w, w=w)
'''


def vattn(*args: str, path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VATTN_SCHEMES"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(path)]))
    return subprocess.run([sys.executable, "-m", "vattn_cli", *args], capture_output=True, text=True, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def one_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("one_file")
    (root / "frame_window.py").write_text(ONE_FILE)
    return root


SCHEME = "frame_window:FrameWindow"


def test_one_file_scheme_through_zoo_check_and_profile(one_file: Path) -> None:
    zoo = vattn("zoo", "--scheme", SCHEME, "--size", "tiny", "--csv", "-", path=one_file)
    assert zoo.returncode == 0, zoo.stderr
    row = pd.read_csv(io.StringIO(zoo.stdout)).set_index("name").loc[SCHEME]
    assert row["params_m"] > 0 and row["source"] == f"import:{SCHEME}"

    check = vattn("zoo", "--check", SCHEME, "--csv", "-", "--quiet", path=one_file)
    assert check.returncode == 0, check.stderr
    assert set(pd.read_csv(io.StringIO(check.stdout))["status"]) == {"pass"}

    prof = vattn("profile", "--scheme", f"joint,{SCHEME}", "--model", "tiny", "--frames", "4", "--size", "32",
                 "--measure", "params,flops", "--csv", "-", path=one_file)
    assert prof.returncode == 0, prof.stderr
    rows = pd.read_csv(io.StringIO(prof.stdout)).set_index("scheme")
    assert set(rows["status"]) == {"ok"}
    # Same layers as joint but attention within 2-frame windows: fewer attention FLOPs, same
    # parameters less joint's CLS token and its slot in the position embedding (2 x 128).
    assert 0 < rows.loc[SCHEME, "attn_gflops"] < rows.loc["joint", "attn_gflops"]
    assert rows.loc[SCHEME, "params_m"] == pytest.approx(rows.loc["joint", "params_m"] - 256 / 1e6, abs=1e-9)


@pytest.mark.slow
def test_one_file_scheme_trains_an_epoch(one_file: Path, tmp_path: Path) -> None:
    out = vattn("train", "--scheme", SCHEME, "--data", "builtin:motion", "--model", "tiny", "--frames", "2",
                "--size", "32", "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet", path=one_file)
    assert out.returncode == 0, out.stderr
    checkpoint = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert checkpoint["config"]["scheme"] == SCHEME and checkpoint["config"]["scheme_options"] == {}
    assert checkpoint["epoch"] == 1


def test_a_file_in_the_builtin_folder_is_a_builtin_scheme(one_file: Path, tmp_path: Path, monkeypatch) -> None:
    """Dropping one file into the schemes folder is all it takes: listed unimported, built by name."""
    package = tmp_path / "more_schemes"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "frame_window.py").write_text(
        ONE_FILE.replace("from vattn_cli.zoo import BlockArgs, SoftmaxBlock",
                         "from vattn_cli.zoo import BlockArgs, SoftmaxBlock\nfrom vattn_cli.zoo.catalog import register_scheme")
        .replace("class FrameWindow(", '@register_scheme("frame_window")\nclass FrameWindow(')
    )
    for name in catalog.builtin_schemes():  # the real built-ins live in the real folder
        (package / f"{name}.py").write_text(f"from vattn_cli.zoo.schemes.{name} import *  # noqa\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(catalog, "_BUILTIN_DIR", package)
    monkeypatch.setattr(catalog, "BUILTIN_PACKAGE", "more_schemes")
    try:
        assert catalog.list_schemes()[-1] == "frame_window"  # after BUILTIN_ORDER's names
        assert "more_schemes.frame_window" not in sys.modules  # listed, not imported
        model = create_model("frame_window", size="tiny", frames=4, img_size=32, window=4)
        assert model.config.scheme_options == {"window": 4}
        assert model(torch.randn(1, 3, 4, 32, 32)).shape == (1, 400)
    finally:
        unregister_scheme("frame_window")
        sys.modules.pop("more_schemes.frame_window", None)


@pytest.mark.parametrize("name", catalog.builtin_schemes())
def test_every_builtin_file_registers_its_own_name(name: str) -> None:
    cls = get_scheme(name)
    assert cls.__module__ == f"vattn_cli.zoo.schemes.{name}" and cls.scheme_name == name


# -- the first interface keeps working -------------------------------------------------------------

FIRST_INTERFACE = '''
from einops import rearrange
from vattn_cli.zoo import SoftmaxBlock


class Explicit(SoftmaxBlock):
    """Every standard argument spelt out, as the first interface's docs showed."""

    cls_token = "per_frame"

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, norm_eps=1e-6,
                 drop=0.0, attn_drop=0.0, drop_path=0.0, scale=1.0):
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias, norm_eps, drop, attn_drop, drop_path)
        self.scale = scale

    def attend(self, x, grid):
        frames = rearrange(x, "b (t n) d -> (b t) n d", t=grid.t)
        return self.scale * rearrange(self.attn(frames), "(b t) n d -> b (t n) d", t=grid.t)


class Passed(SoftmaxBlock):
    """``**block_args`` handed on, as the first interface's example did."""

    cls_token = "per_frame"

    def __init__(self, dim, num_heads, *, scale=1.0, **block_args):
        super().__init__(dim, num_heads, **block_args)
        self.scale = scale
        self.reset_calls = 0

    def reset_temporal(self):
        self.reset_calls += 1

    attend = Explicit.attend


class Current(SoftmaxBlock):
    """The same scheme in the second interface."""

    cls_token = "per_frame"

    def __init__(self, args, scale=1.0):
        super().__init__(args)
        self.scale = scale

    attend = Explicit.attend
'''


@pytest.fixture(scope="module")
def first_interface(tmp_path_factory):
    root = tmp_path_factory.mktemp("first_interface")
    (root / "first_interface.py").write_text(FIRST_INTERFACE)
    sys.path.insert(0, str(root))
    yield "first_interface"
    for name in [n for n in catalog.list_schemes() if n.startswith("first_interface:")]:
        unregister_scheme(name)
    sys.path.remove(str(root))
    sys.modules.pop("first_interface", None)


@pytest.mark.parametrize("cls", ["Explicit", "Passed"])
def test_first_interface_schemes_build_check_and_match_the_second(first_interface: str, cls: str) -> None:
    name, current = f"{first_interface}:{cls}", f"{first_interface}:Current"
    assert scheme_options(get_scheme(name)) == scheme_options(get_scheme(current)) == {"scale": 1.0}
    check_scheme(name)
    torch.manual_seed(0)
    old = create_model(name, size="tiny", depth=2, frames=2, img_size=32, scale=0.5, drop_path_rate=0.1).eval()
    torch.manual_seed(0)
    new = create_model(current, size="tiny", depth=2, frames=2, img_size=32, scale=0.5, drop_path_rate=0.1).eval()
    assert list(old.state_dict()) == list(new.state_dict())
    # The eight standard arguments reach both; a first-interface block is told where it sits after.
    assert [b.args for b in old.blocks] == [b.args for b in new.blocks]
    assert [b.args.index for b in old.blocks] == [0, 1] and old.blocks[0].args.depth == 2
    assert old.blocks[1].args.drop_path == pytest.approx(0.1) and old.blocks[0].scale == 0.5
    video = torch.randn(1, 3, 2, 32, 32)
    assert torch.equal(old(video), new(video))


def test_first_interface_reset_hook_still_runs(first_interface: str) -> None:
    model = create_model(f"{first_interface}:Passed", size="tiny", depth=2, frames=2, img_size=32)
    assert [b.reset_calls for b in model.blocks] == [1, 1]


def test_block_args_are_one_frozen_object() -> None:
    args = BlockArgs(64, 4)
    with pytest.raises(Exception):
        args.dim = 32  # type: ignore[misc]
    assert BlockArgs.coerce(args) is args
    assert BlockArgs.coerce(64, 4, drop_path=0.2) == args.replace(drop_path=0.2)
    with pytest.raises(TypeError):
        BlockArgs.coerce(args, 4)


# -- the side branch ---------------------------------------------------------------------------------

BRANCHES = {"divided": ["temporal"], "axial": ["temporal", "width"], "local_global": ["local"]}


@pytest.mark.parametrize("scheme", sorted(BRANCHES))
def test_side_branches_keep_official_names_and_start_at_zero(scheme: str) -> None:
    model = create_model(scheme, size="tiny", depth=2, frames=2, img_size=32)
    block = model.blocks[0]
    assert [b.prefix for b in block.branches] == BRANCHES[scheme]
    keys = set(block.state_dict())
    for prefix in BRANCHES[scheme]:
        for part in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                     "attn.proj.bias", "fc.weight", "fc.bias"):
            assert f"{prefix}_{part}" in keys
        fc = getattr(block, f"{prefix}_fc")
        assert not fc.weight.any() and not fc.bias.any()  # reset_parameters zeroed it
    assert not any(k.startswith(f"{prefix}.") for prefix in BRANCHES[scheme] for k in keys)  # not nested
    # The branch object only groups the block's own modules: one set of weights, not a copy.
    assert block.branches[0].attn is getattr(block, f"{BRANCHES[scheme][0]}_attn")
