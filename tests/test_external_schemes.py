"""Schemes from outside the package: import paths, entry points, the conformance suite, safety.

The example scheme (examples/custom_scheme.py) and the broken ones below are loaded the way a
user's would be: from a directory on PYTHONPATH, in a fresh ``vattn`` process.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from vattn_cli.errors import UsageError
from vattn_cli.testing import check_scheme
from vattn_cli.zoo import create_model, create_model_from_config, list_schemes
from vattn_cli.zoo.info import count_params
from vattn_cli.zoo.registry import refresh_external, scheme_entry, unregister_scheme

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
EXAMPLE = "custom_scheme:TemporalShiftAttention"

BROKEN = '''
import torch
from torch import nn
from vattn_cli.zoo import SchemeBlock, SoftmaxBlock

class WrongShape(SoftmaxBlock):
    def forward(self, x, grid):
        return x[:, 1:]                      # drops a token

class MissingArg(SoftmaxBlock):
    def __init__(self, dim, num_heads, window):   # no standard args, option without default
        super().__init__(dim, num_heads)

class NotABlock(nn.Module):
    def forward(self, x, grid):
        return x

class Crashes(SoftmaxBlock):
    def attend(self, x, grid):
        raise RuntimeError("kaboom in attend")

class BadLayout(SoftmaxBlock):
    cls_token = "first"
    def attend(self, x, grid):
        return self.attn(x)

class AlwaysDropout(SoftmaxBlock):
    def attend(self, x, grid):
        return nn.functional.dropout(self.attn(x), 0.5, training=True)   # ignores eval mode

class MixesBatch(SoftmaxBlock):
    def attend(self, x, grid):
        return self.attn(x) + x.mean(0, keepdim=True)          # clips see each other

class UnusedParam(SoftmaxBlock):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.spare = nn.Linear(4, 4)
    def attend(self, x, grid):
        return self.attn(x)

class _Mix(torch.autograd.Function):              # an opaque op fvcore cannot see into
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w
    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g @ w.T, (x.transpose(-1, -2) @ g).sum(0)

class OpaqueOp(SoftmaxBlock):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.w = nn.Parameter(torch.eye(self.dim))
    def attend(self, x, grid):
        return _Mix.apply(self.attn(x), self.w)

def _mix_flops(inputs, outputs):
    x, w = (i.type().sizes() for i in inputs)
    n = 1
    for s in x:
        n *= s
    return n * w[-1]

class OpaqueOpWithHandle(OpaqueOp):
    flop_handles = {"prim::PythonOp._Mix": _mix_flops}
'''

MARKER_MODULE = '''
import os
from vattn_cli.zoo import SoftmaxBlock
open(os.environ["MARKER"], "w").write("imported")   # importing this module runs code

class Block(SoftmaxBlock):
    def attend(self, x, grid):
        return self.attn(x)
'''


@pytest.fixture(scope="module")
def plugins(tmp_path_factory) -> Path:
    """A directory on no path yet: broken schemes, a module with an import side effect, two dists."""
    root = tmp_path_factory.mktemp("plugins")
    (root / "broken_schemes.py").write_text(BROKEN)
    (root / "marker_scheme.py").write_text(MARKER_MODULE)
    for dist, body in {
        "vattn_demo_plugin-0.1": f"[vattn.schemes]\ntshift = {EXAMPLE}\n",
        "vattn_bad_plugin-0.2": "[vattn.schemes]\nghost = not_a_module_anywhere:Ghost\n",
    }.items():
        info = root / f"{dist}.dist-info"
        info.mkdir()
        name, version = dist.rsplit("-", 1)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(body)
    return root


def vattn(*args: str, path: list[Path] = (), env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "VATTN_SCHEMES"}
    full.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(map(str, [ROOT, *path])), **(env or {}))
    return subprocess.run([sys.executable, "-m", "vattn_cli", *args], capture_output=True, text=True, cwd=ROOT, env=full)


def cli(capsys, *args: str) -> subprocess.CompletedProcess:
    """``vattn ARGS`` in this process, answered like :func:`vattn`."""
    from vattn_cli.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, exited.value.code, captured.out, captured.err)


def one_error_line(out: subprocess.CompletedProcess) -> str:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vattn: error:"), out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


@pytest.fixture
def on_path(monkeypatch, plugins):
    """Put examples/ and the plugin directory on sys.path in this process; forget them after."""
    before = set(list_schemes())
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.syspath_prepend(str(plugins))
    refresh_external()
    yield plugins
    for name in set(list_schemes()) - before:
        unregister_scheme(name)
    for module in [m for m in sys.modules if m in ("custom_scheme", "broken_schemes", "marker_scheme")]:
        del sys.modules[module]
    monkeypatch.undo()
    refresh_external()


# -- the example scheme, from outside the package --------------------------------------------------

def test_example_scheme_runs_through_zoo_from_outside() -> None:
    out = vattn("zoo", "--scheme", EXAMPLE, "--size", "tiny", "--csv", "-", path=[EXAMPLES])
    assert out.returncode == 0, out.stderr
    row = pd.read_csv(io.StringIO(out.stdout)).set_index("name").loc[EXAMPLE]
    assert row["source"] == f"import:{EXAMPLE}" and row["kind"] == "scheme"
    # Independent reference: the same blocks as space-only, plus the time embedding space lacks.
    space = count_params("space", size="tiny", frames=8, img_size=224)
    assert round(row["params_m"] * 1e6) == space + 8 * 128


def test_example_scheme_passes_check_from_the_cli() -> None:
    out = vattn("zoo", "--check", EXAMPLE, "--csv", "-", path=[EXAMPLES])
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(io.StringIO(out.stdout))
    assert set(table["status"]) == {"pass"} and len(table) == 9


def test_temporal_shift_matches_a_loop_and_sees_frame_order(on_path) -> None:
    from custom_scheme import temporal_shift

    x = torch.randn(2, 3, 5, 16)
    fold = 2
    want = x.clone()
    want[..., : 2 * fold] = 0
    for t in range(3):
        if t > 0:
            want[:, t, :, :fold] = x[:, t - 1, :, :fold]
        if t < 2:
            want[:, t, :, fold : 2 * fold] = x[:, t + 1, :, fold : 2 * fold]
    assert torch.equal(temporal_shift(x, fold), want)
    # space-only (no time embedding) cannot tell a clip from its reverse; the shifted one can.
    video = torch.randn(1, 3, 4, 32, 32)
    for scheme, order_blind in (("space", True), (EXAMPLE, False)):
        model = create_model(scheme, size="tiny", frames=4, img_size=32, pos_embed="space", num_classes=3).eval()
        same = torch.allclose(model(video), model(video.flip(2)), atol=1e-5)
        assert same == order_blind, scheme


def test_example_scheme_recreated_from_its_checkpoint_config(on_path) -> None:
    model = create_model(EXAMPLE, size="tiny", frames=2, img_size=32, shift_div=4)
    config = model.config.to_dict()
    assert config["scheme"] == EXAMPLE and config["scheme_options"] == {"shift_div": 4}
    again = create_model_from_config(config)
    again.load_state_dict(model.state_dict())
    video = torch.randn(1, 3, 2, 32, 32)
    assert torch.equal(model.eval()(video), again.eval()(video))


def test_scheme_constructor_error_names_the_scheme(on_path) -> None:
    with pytest.raises(UsageError, match=rf"scheme '{EXAMPLE}' \(import:{EXAMPLE}\): building its block failed: "
                       r"ValueError: shift_div must be >= 2"):
        create_model(EXAMPLE, size="tiny", frames=2, img_size=32, shift_div=1)


# -- entry points ----------------------------------------------------------------------------------

def test_entry_point_scheme_is_discovered_and_marked(on_path) -> None:
    names = list_schemes()
    assert "tshift" in names and "ghost" in names  # listed before anything is imported
    assert "custom_scheme" not in sys.modules
    entry = scheme_entry("tshift")
    assert entry.source == "entry-point:vattn-demo-plugin" and entry.external
    assert entry.cls.__name__ == "TemporalShiftAttention"
    assert create_model("tshift", size="tiny", frames=2, img_size=32)(torch.randn(1, 3, 2, 32, 32)).shape == (1, 400)
    with pytest.raises(UsageError, match=r"scheme 'ghost' \(entry-point:vattn-bad-plugin\): loading .* failed"):
        scheme_entry("ghost")


def test_entry_point_cannot_shadow_a_builtin(monkeypatch, tmp_path) -> None:
    info = tmp_path / "shadow-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shadow\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[vattn.schemes]\ndivided = os:system\nbad,name = os:system\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    refresh_external()
    try:
        with pytest.warns(UserWarning) as caught:
            names = list_schemes()
        messages = " ".join(str(w.message) for w in caught)
        assert "'divided' of shadow: that scheme name is taken" in messages
        assert "'bad,name' of shadow: not a valid scheme name" in messages
        assert names.count("divided") == 1 and "bad,name" not in names
        assert scheme_entry("divided").source == "builtin"
    finally:
        monkeypatch.undo()
        refresh_external()


def test_bad_environment_entry_is_a_usage_error(monkeypatch) -> None:
    monkeypatch.setenv("VATTN_SCHEMES", "custom_scheme.TemporalShiftAttention")
    try:
        with pytest.raises(UsageError, match="invalid VATTN_SCHEMES entry 'custom_scheme.TemporalShiftAttention'"):
            list_schemes()
    finally:
        monkeypatch.undo()
        refresh_external()


def test_entry_points_in_the_zoo_table(plugins) -> None:
    out = vattn("zoo", "--size", "tiny", "--csv", "-", path=[plugins, EXAMPLES])
    assert out.returncode == 0, out.stderr  # a broken plugin does not hide the rest of the zoo
    table = pd.read_csv(io.StringIO(out.stdout)).set_index("name")
    assert table.loc["tshift", "source"] == "entry-point:vattn-demo-plugin"
    assert table.loc["divided", "source"] == "builtin"
    assert table.loc["ghost", "source"] == "entry-point:vattn-bad-plugin"
    assert table.loc["ghost", "description"].startswith("error: ")


def test_broken_entry_point_named_is_a_usage_error(on_path, capsys) -> None:
    named = cli(capsys, "zoo", "--scheme", "ghost")
    assert named.returncode == 2
    assert "scheme 'ghost' (entry-point:vattn-bad-plugin): loading 'not_a_module_anywhere:Ghost' failed" in one_error_line(named)


# -- broken schemes: one clear line, exit 2 --------------------------------------------------------

@pytest.mark.parametrize(
    "scheme, says",
    [
        ("broken_schemes:WrongShape", "returned shape (1, 196, 128), expected the input's shape (1, 197, 128)"),
        ("broken_schemes:MissingArg", "does not accept the standard block argument(s) mlp_ratio"),
        ("broken_schemes:NotABlock", "NotABlock is not a SchemeBlock subclass"),
        ("broken_schemes:Crashes", "RuntimeError: kaboom in attend"),
        ("broken_schemes:BadLayout", "cls_token is 'first'"),
        ("broken_schemes:Nope", "has no attribute 'Nope'"),
        ("no_such_module:Block", "cannot import module 'no_such_module'"),
        ("os:system", "is not a SchemeBlock subclass"),
    ],
)
def test_broken_external_scheme_gets_one_clear_line(on_path, capsys, scheme: str, says: str) -> None:
    # In-process (a subprocess each would cost seconds); the module is on sys.path as a user's is.
    out = cli(capsys, "zoo", "--scheme", scheme, "--size", "tiny", "--frames", "4", "--img-size", "112")
    assert out.returncode == 2, out
    line = one_error_line(out)
    assert f"scheme {scheme!r}" in line and says in line, line


def test_missing_required_option_is_named(on_path) -> None:
    with pytest.raises(UsageError, match=r"argument\(s\) window have no default"):
        scheme_entry("broken_schemes:MissingArg")


# -- the conformance suite catches what the probe cannot -------------------------------------------

@pytest.mark.parametrize(
    "name, check, says",
    [
        ("AlwaysDropout", "deterministic", "two eval-mode forwards differ"),
        ("MixesBatch", "batch", "depends on the other clips"),
        ("UnusedParam", "backward", "spare.weight"),
        ("OpaqueOp", "flops", "prim::PythonOp._Mix"),
    ],
)
def test_check_scheme_names_the_failing_check(on_path, name: str, check: str, says: str) -> None:
    import broken_schemes

    with pytest.raises(AssertionError, match=rf"(?s){check}: .*{says}"):
        check_scheme(getattr(broken_schemes, name))


def test_flop_handles_hook_counts_a_custom_op(on_path) -> None:
    import broken_schemes

    results = {r.check: r for r in check_scheme(broken_schemes.OpaqueOpWithHandle)}
    plain = {r.check: r for r in check_scheme("joint")}
    # The handle adds exactly N x D x D multiply-adds for the opaque x @ w, N = 1 + 4*7*7, D = 128.
    mflops = lambda r: float(r.detail.split()[0])  # noqa: E731
    assert mflops(results["flops"]) == pytest.approx(mflops(plain["flops"]) + 197 * 128 * 128 / 1e6, abs=0.06)


def test_zoo_check_exit_codes(on_path, capsys) -> None:
    failing = cli(capsys, "zoo", "--check", "broken_schemes:AlwaysDropout", "--csv", "-", "--quiet")
    assert failing.returncode == 1, failing.stderr
    table = pd.read_csv(io.StringIO(failing.stdout)).set_index("check")
    assert table.loc["deterministic", "status"] == "fail" and table.loc["forward", "status"] == "pass"
    assert "broken_schemes:AlwaysDropout: deterministic" in one_error_line(failing)
    interface = cli(capsys, "zoo", "--check", "broken_schemes:NotABlock", "--csv", "-", "--quiet")
    table = pd.read_csv(io.StringIO(interface.stdout)).set_index("check")
    assert interface.returncode == 1 and table.loc["interface", "status"] == "fail"
    assert set(table.drop("interface")["status"]) == {"skip"}
    for unknown in ("nope", "no_such_module:Block"):
        out = cli(capsys, "zoo", "--check", unknown)
        assert out.returncode == 2 and repr(unknown) in one_error_line(out)


# -- a file never imports code ---------------------------------------------------------------------

def test_checkpoint_config_never_imports_a_module(on_path, monkeypatch, tmp_path) -> None:
    marker = tmp_path / "imported"
    config = create_model("joint", size="tiny", frames=2, img_size=32).config.to_dict()
    script = textwrap.dedent(f"""
        import sys
        from vattn_cli.errors import UsageError
        from vattn_cli.zoo import create_model_from_config
        from vattn_cli.zoo.backbone import VideoTransformerConfig
        from vattn_cli.zoo.registry import build_model
        config = {config!r}
        for scheme in ("marker_scheme:Block", "os:system"):
            config["scheme"] = scheme
            for build in (create_model_from_config, lambda c: build_model(VideoTransformerConfig(**c))):
                try:
                    build(dict(config))
                except UsageError as exc:
                    assert "never imports code because a file names it" in str(exc), exc
                else:
                    sys.exit("built " + scheme)
        print("refused")
    """)
    env = {**os.environ, "MARKER": str(marker), "PYTHONPATH": os.pathsep.join([str(ROOT), str(on_path)])}
    env.pop("VATTN_SCHEMES", None)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "refused", out.stderr
    assert not marker.exists()
    # Named by the user (the environment here; --scheme works the same), the config loads.
    monkeypatch.setenv("MARKER", str(marker))
    monkeypatch.setenv("VATTN_SCHEMES", "marker_scheme:Block")
    model = create_model_from_config(dict(config, scheme="marker_scheme:Block"))
    assert marker.exists() and scheme_entry("marker_scheme:Block").source == "import:marker_scheme:Block"
    assert model(torch.randn(1, 3, 2, 32, 32)).shape == (1, 400)


# -- every scheme, built-in or later added, conforms -----------------------------------------------

@pytest.mark.parametrize("scheme", list_schemes())
def test_every_registered_scheme_passes_the_check(scheme: str) -> None:
    results = check_scheme(scheme)
    # every built-in scheme declares its attention steps, so the step check runs too
    assert [r.check for r in results] == ["interface", "build", "forward", "backward", "dtype",
                                          "deterministic", "batch", "resize", "flops", "steps"]


# -- the example through the measuring and training commands ---------------------------------------
# These run once the commands are on main; until then they skip. Flags follow DESIGN.md and the
# issues that build the commands.

def has_command(*path: str) -> bool:
    import typer.main

    from vattn_cli.cli import app

    command = typer.main.get_command(app)
    for name in path:
        commands = getattr(command, "commands", {})
        if name not in commands:
            return False
        command = commands[name]
    return True


@pytest.mark.skipif(not has_command("profile"), reason="vattn profile is not merged yet")
def test_example_scheme_through_profile() -> None:
    out = vattn("profile", "--scheme", f"space,{EXAMPLE}", "--model", "tiny", "--frames", "2", "--size", "32",
                "--measure", "params,flops", "--csv", "-", path=[EXAMPLES])
    assert out.returncode == 0, out.stderr
    rows = pd.read_csv(io.StringIO(out.stdout)).set_index("scheme")
    assert set(rows["status"]) == {"ok"}
    # The shift moves channels and multiplies nothing: the FLOPs are space-only's exactly.
    assert rows.loc[EXAMPLE, "gflops"] == pytest.approx(rows.loc["space", "gflops"], rel=1e-9)


@pytest.mark.skipif(not has_command("ablate", "tokens"), reason="vattn ablate tokens is not merged yet")
def test_example_scheme_through_ablate_tokens(tmp_path) -> None:
    out = vattn("ablate", "tokens", "--schemes", EXAMPLE, "--model", "tiny", "--frames", "2,4", "--sizes", "32",
                "--measure", "params,flops", "--out", str(tmp_path), path=[EXAMPLES])
    assert out.returncode == 0, out.stderr
    rows = pd.read_csv(tmp_path / "tokens.csv")
    assert set(rows["scheme"]) == {EXAMPLE} and set(rows["status"]) == {"ok"} and len(rows) >= 2


@pytest.mark.slow
@pytest.mark.skipif(not has_command("train"), reason="vattn train is not merged yet")
def test_example_scheme_through_train(tmp_path) -> None:
    out = vattn("train", "--scheme", EXAMPLE, "--data", "builtin:motion", "--model", "tiny", "--frames", "2",
                "--size", "32", "--epochs", "1", "--out", str(tmp_path), path=[EXAMPLES])
    assert out.returncode == 0, out.stderr
    checkpoint = torch.load(tmp_path / "last.pt", weights_only=True)
    assert checkpoint["config"]["scheme"] == EXAMPLE
