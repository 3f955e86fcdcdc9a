"""Flags: every alias does what its canonical spelling does, defaults come from the library's
config objects (a run without flags builds the library's default), and help prints those values.

Most cases stop the command at its one library call (the call is replaced by a recorder), so
they check the CLI-to-library mapping without training or measuring anything.
"""

from __future__ import annotations

import importlib
import io
import re

import pandas as pd
import pytest

from vattn_cli.ablate import config as study_config
from vattn_cli.ablate import schemes as schemes_study
from vattn_cli.ablate import tokens as tokens_study
from vattn_cli.cli import main
from vattn_cli.engine.config import DEFAULT_LR, DEFAULT_MODEL, EVAL_BATCH, EVAL_VIEWS, TrainConfig
from vattn_cli.errors import RunError
from vattn_cli.measure.setting import RunOptions, Setting, expand
from vattn_cli.runtime import resolve_device
from vattn_cli.zoo.catalog import DEFAULTS, list_schemes


class _Stop(RunError):
    """Raised by a recorder in place of the library call: the command ends there (exit 1)."""


def record(monkeypatch, owner, name: str) -> list[tuple[tuple, dict]]:
    """Replace ``owner.name`` by a recorder of its calls that stops the command."""
    calls: list[tuple[tuple, dict]] = []

    def recorder(*args, **kwargs):
        calls.append((args, kwargs))
        raise _Stop("stopped at the library call")

    monkeypatch.setattr(owner, name, recorder)
    return calls


def vattn(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out = capsys.readouterr()
    return exited.value.code, out.out, out.err


def stopped(capsys, *args: str) -> None:
    code, _out, err = vattn(capsys, *args)
    assert code == 1 and "stopped at the library call" in err, err


AUTO = resolve_device("auto").type


# ----------------------------------------------------------------------------- aliases, cheap real runs


def _rows(capsys, *args: str) -> pd.DataFrame:
    code, out, err = vattn(capsys, *args)
    assert code == 0, err
    return pd.read_csv(io.StringIO(out))


def test_profile_schemes_is_scheme(capsys) -> None:
    common = ["profile", "--model", "tiny", "--frames", "2", "--size", "32", "--measure", "params", "--no-isolate",
              "--csv", "-"]
    canonical = _rows(capsys, *common, "--scheme", "space,divided")
    alias = _rows(capsys, *common, "--schemes", "space,divided")
    keep = ["scheme", "model", "frames", "size", "tokens", "params_m", "status"]
    pd.testing.assert_frame_equal(canonical[keep], alias[keep])
    assert list(canonical["scheme"]) == ["space", "divided"]


def test_zoo_model_and_size_and_schemes(capsys) -> None:
    canonical = _rows(capsys, "zoo", "--model", "tiny", "--scheme", "space", "--csv", "-")
    for args in (["--size", "tiny", "--scheme", "space"], ["--model", "tiny", "--schemes", "space"],
                 ["--size", "tiny", "--schemes", "space"]):
        pd.testing.assert_frame_equal(_rows(capsys, "zoo", *args, "--csv", "-"), canonical)
    assert set(canonical["size"]) == {"tiny"}
    default = _rows(capsys, "zoo", "--scheme", "space", "--csv", "-")
    assert set(default["size"]) == {DEFAULTS["size"]} and set(default["frames"]) == {DEFAULTS["frames"]}


# ----------------------------------------------------------------------------- defaults come from the library


def test_profile_without_flags_runs_the_library_defaults(monkeypatch, capsys) -> None:
    measure = importlib.import_module("vattn_cli.measure")
    calls = record(monkeypatch, importlib.import_module("vattn_cli.ablate.measuring"), "measure_settings")
    stopped(capsys, "profile", "--scheme", "divided")
    (settings, measures, options, launch, _on_row), kwargs = calls[0]
    assert settings == expand(schemes=["divided"], device=AUTO)
    # profile alone times vattn compare's reference workload beside each run
    assert list(measures) == list(measure.MEASURES) and options == RunOptions(reference=True)
    assert launch.jobs == 1  # it times latency and memory: one run at a time
    assert kwargs["max_memory"] is None and kwargs["isolate"] is True


def test_profile_flags_reach_the_library(monkeypatch, capsys) -> None:
    calls = record(monkeypatch, importlib.import_module("vattn_cli.ablate.measuring"), "measure_settings")
    stopped(capsys, "profile", "--schemes", "space", "--model", "tiny", "--frames", "2,4", "--batch", "2",
            "--mode", "train", "--dtype", "bf16", "--warmup", "0", "--repeats", "3", "--time-budget", "1", "--seed", "7")
    (settings, _measures, options, _launch, _on_row), _ = calls[0]
    assert settings == expand(schemes=["space"], models=["tiny"], frames=[2, 4], batches=[2], modes=["train"],
                              dtypes=["bf16"], device=AUTO)
    assert options == RunOptions(warmup=0, repeats=3, budget_s=1.0, seed=7, reference=True)


@pytest.mark.parametrize("spelling", ["--schemes", "--scheme"])
def test_ablate_tokens_defaults_and_alias(spelling, monkeypatch, capsys, tmp_path) -> None:
    calls = record(monkeypatch, tokens_study, "run")
    stopped(capsys, "ablate", "tokens", "--out", str(tmp_path), spelling, "space,joint")
    (plan, out, _measures, options), _ = calls[0]
    assert plan == tokens_study.plan(["space", "joint"], device=AUTO)
    assert plan.frames == study_config.TOKENS_FRAMES and plan.sizes == study_config.TOKENS_SIZES
    assert {s.model for s in plan.settings} == {study_config.TOKENS_MODEL}
    assert options == RunOptions(budget_s=study_config.TOKENS_BUDGET_S)


def test_ablate_tokens_default_schemes_are_all(monkeypatch, capsys, tmp_path) -> None:
    calls = record(monkeypatch, tokens_study, "run")
    stopped(capsys, "ablate", "tokens", "--out", str(tmp_path), "--model", "tiny", "--frames", "2", "--sizes", "32")
    assert calls[0][0][0].schemes == tuple(list_schemes())


@pytest.mark.parametrize("spelling", ["--schemes", "--scheme"])
def test_ablate_schemes_defaults_and_alias(spelling, monkeypatch, capsys, tmp_path) -> None:
    calls = record(monkeypatch, schemes_study, "run")
    stopped(capsys, "ablate", "schemes", "--out", str(tmp_path), spelling, "space,divided")
    (runs, _out, config), kwargs = calls[0]
    assert runs == schemes_study.plan(list(study_config.BUILTIN_DATA), ["space", "divided"])
    assert config == study_config.StudyConfig(device=AUTO)
    assert kwargs["csv_name"] == schemes_study.CSV_NAME


def test_ablate_schemes_flags_reach_the_config(monkeypatch, capsys, tmp_path) -> None:
    calls = record(monkeypatch, schemes_study, "run")
    stopped(capsys, "ablate", "schemes", "--out", str(tmp_path), "--schemes", "space", "--epochs", "2", "--lr", "0.001",
            "--patch", "4", "--clips", "10,5", "--seed", "3", "--seeds", "2", "--frames", "2", "--device", "cpu")
    (runs, _out, config), _ = calls[0]
    assert config == study_config.StudyConfig(epochs=2, lr=0.001, patch=4, clips=(10, 5), device="cpu")
    assert sorted({r.seed for r in runs}) == [3, 4] and {r.frames for r in runs} == {2}


@pytest.mark.parametrize("spelling", ["--scheme", "--schemes"])
def test_ablate_pos_embed_defaults_and_alias(spelling, monkeypatch, capsys, tmp_path) -> None:
    calls = record(monkeypatch, schemes_study, "run")
    stopped(capsys, "ablate", "pos-embed", "--out", str(tmp_path), spelling, "space")
    (runs, _out, config), kwargs = calls[0]
    assert runs == schemes_study.pos_embed_plan(list(study_config.BUILTIN_DATA), "space")
    assert config == study_config.StudyConfig(device=AUTO) and kwargs["csv_name"] == schemes_study.POS_CSV_NAME
    stopped(capsys, "ablate", "pos-embed", "--out", str(tmp_path))
    assert calls[1][0][0] == schemes_study.pos_embed_plan(list(study_config.BUILTIN_DATA))
    assert {r.scheme for r in calls[1][0][0]} == {study_config.POS_EMBED_SCHEME}


@pytest.mark.parametrize("spelling", ["--scheme", "--schemes"])
def test_train_builds_the_library_default_config(spelling, monkeypatch, capsys, tmp_path) -> None:
    engine = importlib.import_module("vattn_cli.engine")
    calls = record(monkeypatch, engine, "train")
    out = str(tmp_path / "run")
    stopped(capsys, "train", "--data", "builtin:motion", "--out", out)
    assert calls[0][0][0] == TrainConfig(out_dir=out, data="builtin:motion")
    stopped(capsys, "train", "--data", "builtin:motion", "--out", out, spelling, "divided", "--epochs", "3",
            "--clip-grad", "0")
    assert calls[1][0][0] == TrainConfig(out_dir=out, data="builtin:motion", scheme="divided", epochs=3, clip_grad=None)


def test_eval_passes_only_the_flags_given(monkeypatch, capsys) -> None:
    evaluate = importlib.import_module("vattn_cli.engine.evaluate")
    calls = record(monkeypatch, evaluate, "eval_checkpoint")
    stopped(capsys, "eval", "--ckpt", "x.pt", "--data", "builtin:motion")
    (ckpt, data), options = calls[0]
    assert (ckpt, data) == ("x.pt", "builtin:motion")
    assert set(options) == {"root", "per_class", "progress"}  # eval_checkpoint's own defaults fill the rest
    stopped(capsys, "eval", "--ckpt", "x.pt", "--data", "builtin:motion", "--views", "2x3", "--batch", "4")
    assert calls[1][1]["views"] == "2x3" and calls[1][1]["batch"] == 4


def test_re_exported_configs_are_the_same_objects() -> None:
    from vattn_cli.engine import TrainConfig as from_engine
    from vattn_cli.engine.train import TrainConfig as from_train

    assert from_engine is from_train is TrainConfig
    assert schemes_study.StudyConfig is study_config.StudyConfig
    assert tokens_study.DEFAULT_FRAMES == study_config.TOKENS_FRAMES


# ----------------------------------------------------------------------------- help prints the library's values


def _help(capsys, monkeypatch, *args: str) -> str:
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.setenv("TERMINAL_WIDTH", "1000")
    code, out, err = vattn(capsys, *args, "--help")
    assert code == 0, err
    text = re.sub(r"\s+", " ", out.replace("│", " "))
    return re.sub(r", (?=--)", ",", text)  # plain help lists aliases as "--scheme, --schemes"


def _csv(values) -> str:
    return ",".join(map(str, values))


def test_help_shows_the_library_defaults(capsys, monkeypatch) -> None:
    StudyConfig = study_config.StudyConfig
    expected = {
        ("train",): [f"(default: {TrainConfig.epochs})", f"(default: {TrainConfig.batch})",
                     f"(default: {TrainConfig.optimizer})", f"(default: {TrainConfig.val_views})",
                     f"(default: {TrainConfig.weight_decay:g})", f"(default: {DEFAULT_MODEL},",
                     f"{DEFAULT_LR['adamw']:g} for adamw", f"(default: {TrainConfig.seed})", "--scheme,--schemes"],
        ("ablate", "schemes"): [f"(default: {StudyConfig.epochs})", f"(default: {StudyConfig.model})",
                                f"(default: {StudyConfig.patch})", f"(default: {StudyConfig.views})",
                                f"(default: {StudyConfig.lr:g})", f"(default: {_csv(study_config.DEFAULT_FRAMES)})",
                                f"(default: {_csv(study_config.BUILTIN_DATA)})", "--schemes,--scheme",
                                f"{StudyConfig.epochs} epochs"],
        ("ablate", "pos-embed"): [f"(default: {study_config.POS_EMBED_SCHEME})",
                                  f"(default: {_csv(study_config.POS_EMBEDS)})",
                                  f"(default: {_csv(study_config.POS_EMBED_FRAMES)})", "--scheme,--schemes"],
        ("ablate", "tokens"): [f"(default: {_csv(study_config.TOKENS_FRAMES)})",
                               f"(default: {_csv(study_config.TOKENS_SIZES)})",
                               f"(default: {study_config.TOKENS_MODEL})", f"(default: {study_config.TOKENS_BUDGET_S:g})",
                               f"(default: {RunOptions.warmup})", "--schemes,--scheme"],
        ("profile",): [f"(default: {RunOptions.warmup})", f"(default: {RunOptions.repeats})",
                       f"(default: {RunOptions.budget_s:g})", f"(default: {Setting.batch})",
                       f"(default: {DEFAULTS['frames']}, or the preset's)", f"(default: {DEFAULTS['size']})",
                       f"(default: {Setting.dtype})", f"(default: {Setting.mode})", "--scheme,--schemes"],
        ("zoo",): [f"(default: {DEFAULTS['size']})", f"(default: {DEFAULTS['frames']};",
                   f"(default: {DEFAULTS['img_size']};", "--model,--size", "--size is an alias of --model",
                   "--scheme,--schemes"],
        ("eval",): [f"(default: {EVAL_BATCH})", f"(default: {EVAL_VIEWS})"],
    }
    for command, needles in expected.items():
        text = _help(capsys, monkeypatch, *command)
        for needle in needles:
            assert needle in text, (command, needle)


def test_help_has_no_typer_defaults_left(capsys, monkeypatch) -> None:
    """Values are unset in the signatures: typer's own "[default: ...]" appears only for on/off flags."""
    for command in (("profile",), ("ablate", "tokens"), ("ablate", "schemes"), ("train",), ("eval",), ("zoo",)):
        text = _help(capsys, monkeypatch, *command)
        assert set(re.findall(r"\[default: ([^\]]+)\]", text)) <= {"isolate"}, command


def test_cli_modules_do_not_retype_the_defaults() -> None:
    """The numbers the config objects own appear in no command signature (a cheap tripwire)."""
    from vattn_cli.commands import ablate, profile, train

    for module in (ablate, profile, train):
        source = open(module.__file__, encoding="utf-8").read()
        assert "5e-4" not in source and '"8,32,64,96"' not in source and '"224,336,448,560"' not in source
        assert not re.search(r"typer\.Option\((?:\d|\"\d)", source), module.__name__
