"""Property test over the CLI: a bad value drawn for any of many flags gives exit 2 and one line
naming the flag, never a traceback, and no work starts (every value is checked first)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vattn_cli.cli import main

#: Commands with the flags that make them valid up to the flag under test (nothing runs: the bad value stops it).
BASE = {
    "profile": ["profile", "--scheme", "space", "--model", "tiny"],
    "tokens": ["ablate", "tokens", "--out", "{out}"],
    "schemes": ["ablate", "schemes", "--out", "{out}"],
    "train": ["train", "--out", "{out}", "--data", "builtin:motion", "--scheme", "space"],
    "zoo": ["zoo"],
    "eval": ["eval", "--ckpt", "missing.pt", "--data", "builtin:motion"],
}
POSITIVE_INTS = {  # flag: commands that take it as integers >= 1 (one or a comma list)
    "--frames": ["profile", "tokens", "schemes", "train", "zoo"], "--batch": ["profile", "tokens", "schemes", "train"],
    "--patch": ["profile", "tokens", "schemes", "train", "zoo"], "--epochs": ["schemes", "train"],
    "--seeds": ["schemes"], "--threads": ["profile", "tokens"], "--size": ["profile", "train"],
    "--sizes": ["tokens", "schemes"], "--tubelet": ["tokens", "schemes", "train", "zoo"], "--img-size": ["zoo"],
}
NON_NEGATIVE = {"--warmup": ["profile", "tokens"], "--time-budget": ["profile", "tokens"],
                "--workers": ["schemes", "train"], "--weight-decay": ["train"], "--warmup-epochs": ["train"]}
CHOICES = {"--mode": ["profile", "tokens"], "--dtype": ["profile", "tokens", "train", "eval"],
           "--device": ["profile", "tokens", "schemes", "train", "eval"], "--measure": ["profile", "tokens"],
           "--model": ["profile", "tokens", "schemes", "train"], "--optimizer": ["train"],
           "--views": ["schemes", "eval"], "--val-views": ["train"], "--repeats": ["profile", "tokens"],
           "--max-memory": ["profile", "tokens"], "--scheme": ["profile", "zoo", "train"]}

_words = st.text(alphabet="abcxyz_-.:", min_size=1, max_size=8).filter(lambda w: not w.startswith("-")
                                                                        and w not in ("a", "all", "c"))


def _cases():
    below = st.integers(-1000, 0).map(str)
    below0 = st.integers(-1000, -1).map(str)
    cases = []
    for flag, commands in POSITIVE_INTS.items():
        cases += [st.tuples(st.just(c), st.just(flag), st.one_of(below, _words, st.just(""))) for c in commands]
    for flag, commands in NON_NEGATIVE.items():
        cases += [st.tuples(st.just(c), st.just(flag), st.one_of(below0, _words)) for c in commands]
    for flag, commands in CHOICES.items():
        cases += [st.tuples(st.just(c), st.just(flag), st.one_of(_words, st.just(""))) for c in commands]
    return st.one_of(cases)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_cases())
def test_a_bad_value_is_exit_2_and_one_line_naming_the_flag(case, tmp_path_factory, capsys) -> None:
    command, flag, value = case
    out = tmp_path_factory.mktemp("out") / "o"
    args = [a.replace("{out}", str(out)) for a in BASE[command]]
    if flag in args:  # the base already gives it: replace its value
        i = args.index(flag)
        args = args[:i] + args[i + 2:]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main([*args, flag, value])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert exited.value.code == 2, (args, flag, value, err)
    assert len(lines) == 1 and flag in lines[0], (args, flag, value, err)
    assert not out.exists()  # nothing started
