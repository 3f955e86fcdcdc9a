"""``vattn compare``: matching, rules, statistics, verdict, markdown, history, exit codes.

Real ``vattn profile`` output (six in-process runs of three tiny settings, about 15 s) for the
end-to-end cases, synthetic rows for the rules and the statistics.
"""

from __future__ import annotations

import io
import json
import math

import pandas as pd
import pytest
from test_startup import run_cases

from vattn_cli.cli import main
from vattn_cli.errors import UsageError
from vattn_cli.report.compare import (
    DEFAULT_FAIL_ON,
    IMPROVEMENT,
    REGRESSION,
    UNCHANGED,
    Results,
    _u_counts,
    compare,
    mann_whitney_greater,
    parse_rule,
    parse_rules,
    parse_samples,
    u_statistic,
)

PROFILE = ["profile", "--model", "tiny", "--scheme", "space,divided,joint", "--frames", "8", "--size", "64",
           "--measure", "params,flops,latency", "--warmup", "3", "--repeats", "10", "--threads", "1", "--samples",
           "--no-isolate", "-q"]


def vattn(*args: str, capsys=None) -> tuple[int, str, str]:
    """Run ``vattn args`` in-process: (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    if capsys is None:
        return code, "", ""
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def rounds(tmp_path_factory):
    """Two sides of honest runs of the same code, three rounds each, alternating A B A B A B (as
    examples/ci/compare.sh does): CSV with samples on one side, JSON (samples always) on the other."""
    folder = tmp_path_factory.mktemp("runs")
    sides = {"a": folder / "a", "b": folder / "b"}
    for path in sides.values():
        path.mkdir()
    for r, order in enumerate(("ab", "ab", "ab")):
        for side in order:
            target = sides[side] / (f"round{r}.csv" if side == "a" else f"round{r}.json")
            assert vattn(*PROFILE, "--csv" if side == "a" else "--json", target)[0] == 0
    return sides["a"], sides["b"]


@pytest.fixture(scope="module")
def runs(rounds):
    """One run a side: the first round."""
    return rounds[0] / "round0.csv", rounds[1] / "round0.json"


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) >= 1 and lines[-1].startswith("vattn: error: "), err
    return lines[-1]


def edited(source, target, **changes) -> str:
    """``source`` (CSV or JSON) rewritten to ``target`` (CSV) with per-scheme column changes:
    ``changes = {scheme: {column: value or callable}}``."""
    frame = pd.read_json(source) if str(source).endswith(".json") else pd.read_csv(source)
    for column in ("latency_samples_ms", "cpu_samples_ms"):
        if column in frame and not isinstance(frame[column].iloc[0], str):
            frame[column] = [" ".join(map(str, s)) for s in frame[column]]
    for scheme, columns in changes.items():
        for column, value in columns.items():
            rows = frame["scheme"] == scheme
            frame.loc[rows, column] = value(frame.loc[rows, column]) if callable(value) else value
    frame.to_csv(target, index=False)
    return str(target)


# ---------------------------------------------------------------------------------------------
# end to end on real profile output


def test_profile_rows_carry_samples_and_provenance(runs) -> None:
    base = pd.read_csv(runs[0])
    for column in ("latency_samples_ms", "machine", "torch_version", "vattn_version", "device_name", "threads"):
        assert column in base.columns
    assert len(parse_samples(base["latency_samples_ms"].iloc[0])) == 10
    assert all(len(s) == 10 for s in pd.read_json(runs[1])["latency_samples_ms"])


def test_an_unchanged_rerun_passes(rounds, capsys) -> None:
    code, out, err = vattn("compare", *rounds, "--json", "-", capsys=capsys)
    frame = pd.DataFrame(json.loads(out))
    assert set(frame["metric"]) == {"gflops", "params_m", "latency_ms"} and len(frame) == 9
    costs = frame[frame["metric"] != "latency_ms"]
    assert (costs["verdict"] == UNCHANGED).all() and (costs["change"] == 0).all()  # FLOPs, params: exact
    assert "baseline has 3 runs per setting" in err
    if code:  # a timing change needs +10% over the median run and the U test; a loaded machine can do both
        assert set(frame.loc[frame["verdict"] == REGRESSION, "metric"]) == {"latency_ms"}, err
        pytest.skip(f"this machine's speed changed between the two sides: {one_line_error(err)}")
    assert "no regression" in err


def test_an_unchanged_single_rerun_has_exact_costs(runs, capsys) -> None:
    code, out, err = vattn("compare", *runs, "--fail-on", "latency_ms:off", "--json", "-", capsys=capsys)
    frame = pd.DataFrame(json.loads(out))
    assert code == 0 and (frame["verdict"] == UNCHANGED).all() and len(frame) == 6, err


def test_injected_changes_fail_naming_row_and_metric(runs, capsys, tmp_path) -> None:
    base, rerun = runs
    current = edited(rerun, tmp_path / "pr.csv",
                     divided={"gflops": lambda v: v * 1.3},            # a scheme doing 30% more work
                     space={"params_m": lambda v: v + 0.05},           # a model with more parameters
                     joint={"status": "oom", "latency_ms": math.nan})  # a setting that now runs out of memory
    md = tmp_path / "pr.md"
    code, _, err = vattn("compare", base, current, "--fail-on", "latency_ms:off", "--markdown", md, capsys=capsys)
    assert code == 1
    line = one_line_error(err)
    assert "3 regressions in 3 of 3 rows" in line
    assert "divided tiny 8x64/16 (gflops +30.0%)" in line
    assert "space tiny 8x64/16 (params_m +5.3%)" in line
    assert "joint tiny 8x64/16 (status ok -> oom)" in line
    text = md.read_text()
    assert text.startswith("### ❌ vattn compare: 3 regressions")
    nb = "\u00a0"  # settings and changes do not break across lines in the rendered table
    assert f"| `divided{nb}tiny{nb}8x64/16` | gflops |" in text and f"**↑{nb}+30.0%**" in text
    assert f"**ok{nb}→{nb}oom**" in text


def test_the_reverse_change_is_an_improvement(runs, capsys, tmp_path) -> None:
    base, rerun = runs
    before = edited(base, tmp_path / "before.csv", joint={"status": "oom"}, divided={"gflops": lambda v: v * 1.3})
    code, out, err = vattn("compare", before, rerun, "--fail-on", "latency_ms:off", "--csv", "-", capsys=capsys)
    assert code == 0, err
    frame = pd.read_csv(io.StringIO(out))
    improved = frame[frame["verdict"] == IMPROVEMENT]
    assert set(zip(improved["scheme"], improved["metric"])) == {("joint", "status"), ("divided", "gflops")}


def _scaled(factor: float):
    return lambda cells: [" ".join(f"{float(x) * factor:.4f}" for x in c.split()) for c in cells]


def test_a_real_slowdown_with_samples_fails_on_the_u_test(runs, capsys, tmp_path) -> None:
    base, _ = runs
    assert pd.read_csv(base)[["cpu_ms", "ref_cpu_ms"]].gt(0).all().all()  # profile times the reference
    # The code got 50% slower: its wall-clock and CPU times rise, the reference's time does not.
    slow = edited(base, tmp_path / "slow.csv", divided={
        "latency_ms": lambda v: v * 1.5, "latency_samples_ms": _scaled(1.5),
        "cpu_ms": lambda v: v * 1.5, "cpu_samples_ms": _scaled(1.5)})
    code, out, err = vattn("compare", base, slow, "--json", "-", capsys=capsys)
    assert code == 1 and "divided tiny 8x64/16 (latency_ms +50.0%)" in one_line_error(err)
    row = next(r for r in json.loads(out) if r["verdict"] == REGRESSION)
    assert row["clock"] == "ref" and row["p_value"] < 0.01
    assert row["evidence"].startswith("CPU/reference +50.0% (reference +0.0%, wall +50.0%); "
                                      "U test (exact, 10+10 samples)")
    # The machine got 50% slower (the reference too): the default clock cancels it, the wall clock fails.
    machine = edited(base, tmp_path / "machine.csv", divided={
        "latency_ms": lambda v: v * 1.5, "latency_samples_ms": _scaled(1.5), "cpu_ms": lambda v: v * 1.5,
        "cpu_samples_ms": _scaled(1.5), "ref_cpu_ms": lambda v: v * 1.5})
    code, out, err = vattn("compare", base, machine, "--json", "-", capsys=capsys)
    assert code == 0, err
    row = next(r for r in json.loads(out) if r["metric"] == "latency_ms" and r["scheme"] == "divided")
    assert row["clock"] == "ref" and row["change_pct"] == pytest.approx(0, abs=0.01)
    assert row["measured"] == pytest.approx(1.5 * row["baseline"], rel=1e-6)
    code, _, err = vattn("compare", base, machine, "--clock", "wall", capsys=capsys)
    assert code == 1 and "latency_ms +50.0%" in one_line_error(err)


def test_folders_added_and_removed_rows_and_markdown_order(runs, capsys, tmp_path) -> None:
    base, rerun = runs
    (tmp_path / "main").mkdir()
    (tmp_path / "pr").mkdir()
    edited(base, tmp_path / "main" / "profile.csv", joint={"scheme": "axial"})  # axial: removed; joint: added
    edited(rerun, tmp_path / "pr" / "profile.csv", space={"gflops": lambda v: v * 2},
           divided={"params_m": lambda v: v * 0.9})
    (tmp_path / "pr" / "notes.csv").write_text("a,b\n1,2\n")  # not a results file: skipped, said so
    md = tmp_path / "out.md"
    code, _, err = vattn("compare", tmp_path / "main", tmp_path / "pr", "--fail-on", "latency_ms:off",
                         "--markdown", md, capsys=capsys)
    assert code == 1 and "space tiny 8x64/16 (gflops +100.0%)" in one_line_error(err)
    text = md.read_text()
    order = [text.index(h) for h in ("#### Regressions", "#### Improvements", "#### Unchanged",
                                     "#### Added (1) and removed (1) rows", "#### Notes")]
    assert order == sorted(order)
    assert "- added: `joint tiny 8x64/16` (ok)" in text and "- removed: `axial tiny 8x64/16` (ok)" in text
    assert "↓\u00a0-10.0%" in text and "notes.csv" in text
    assert "rows matched on scheme, model, frames, size, patch," in text and "source" not in text.split("\n")[2]


def test_provenance_mismatch_warns_and_strict_exits_2(runs, capsys, tmp_path) -> None:
    base, rerun = runs
    other = edited(rerun, tmp_path / "other.csv", **{s: {"machine": "0123abcd", "torch_version": "9.9.9"}
                                                     for s in ("space", "divided", "joint")})
    code, _, err = vattn("compare", base, other, "--fail-on", "latency_ms:off", capsys=capsys)
    assert code == 0 and "warning: machine differs" in err and "warning: torch_version differs" in err
    code, _, err = vattn("compare", base, other, "--strict", capsys=capsys)
    assert code == 2
    line = one_line_error(err)
    assert "--strict" in line and "machine differs" in line and "0123abcd" in line


def test_history_plots_png_and_svg_and_marks_failures(runs, capsys, tmp_path) -> None:
    base, rerun = runs
    worse = edited(rerun, tmp_path / "r2.csv", divided={"gflops": lambda v: v * 1.3})
    code, out, err = vattn("compare", "--history", base, rerun, worse, "--out", tmp_path / "fig.png", "--csv", "-",
                           capsys=capsys)
    assert code == 0, err
    assert (tmp_path / "fig.png").stat().st_size > 10_000 and (tmp_path / "fig.svg").exists()
    frame = pd.read_csv(io.StringIO(out))
    failing = frame[(frame["verdict"] == REGRESSION) & (frame["metric"] == "gflops")]
    assert list(failing["run"]) == [str(worse)] and list(failing["scheme"]) == ["divided"]
    from vattn_cli.report.compare import history

    points = history([str(base), str(rerun), worse], fail_on="latency_ms:off").points
    marked = points[points["failed"]]
    assert list(zip(marked["run"], marked["setting"], marked["metric"])) == [(2, "divided tiny 8x64/16", "gflops")]


@pytest.mark.parametrize("args,needle", [
    (["{base}", "{other}"], "no common rows"),
    (["{base}", "{base}", "--fail-on", "speed:+5%"], "speed"),
    (["{base}", "{base}", "--fail-on", "top1:+1"], "top1:-1"),
    (["{base}", "{base}", "--fail-on", "gflops:10x"], "METRIC:+N%"),
    (["{base}", "{base}", "--clock", "fast"], "accepted: auto, ref, cpu, wall"),
    (["{base}", "{garbage}"], "garbage.json"),
    (["{base}", "{folder}"], "no result rows"),
])
def test_bad_input_exits_2_with_one_line(runs, capsys, tmp_path, args, needle) -> None:
    base, _ = runs
    paths = {"base": base, "other": edited(base, tmp_path / "o.csv", space={"frames": 16}, divided={"frames": 16},
                                           joint={"frames": 16}),
             "garbage": tmp_path / "garbage.json", "folder": tmp_path / "empty"}
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.csv").write_text("a,b\n1,2\n")
    code, _, err = vattn("compare", *[a.format(**paths) for a in args], capsys=capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vattn: error: ") and needle in lines[0], err


def test_help_and_usage_errors_import_nothing_heavy(tmp_path) -> None:
    (tmp_path / "a.csv").write_text("scheme,gflops\nspace,1\n")
    cases = [["compare", "--help"], ["compare", "a.csv"], ["compare", "a.csv", "b.csv"],
             ["compare", "a.csv", "a.csv", "--fail-on", "speed:+1%"], ["compare", "a.csv", "a.csv", "--fail-on", "x"],
             ["compare", "a.csv", "a.csv", "--alpha", "1.5"], ["compare", "a.csv", "a.csv", "--clock", "x"], ["compare", "a.csv", "a.csv", "--csv", "-", "--json", "-"],
             ["compare", "--history", "a.csv", "--markdown", "-"], ["compare", "a.csv", "a.csv", "--out", "x"]]
    results = run_cases(cases, tmp_path)
    assert results[("compare", "--help")]["code"] == 0 and "--fail-on" in results[("compare", "--help")]["out"]
    for args in cases:
        result = results[tuple(args)]
        assert result["heavy"] == [], (args, result)
        if args[1] != "--help":
            assert result["code"] == 2, (args, result)
            assert len(result["err"].strip().splitlines()) == 1, (args, result)
    # reading files loads pandas, never torch
    done = run_cases([["compare", "a.csv", "a.csv", "-q"]], tmp_path)[("compare", "a.csv", "a.csv", "-q")]
    assert done["code"] == 0 and "torch" not in done["heavy"], done


# ---------------------------------------------------------------------------------------------
# rules and statistics on synthetic rows

KEY = {"model": "tiny", "frames": 8, "size": 64, "patch": 16, "batch": 1, "mode": "infer", "dtype": "fp32",
       "device": "cpu", "status": "ok"}


def results(rows: list[dict], name: str) -> Results:
    frame = pd.DataFrame([{**KEY, **row} for row in rows])
    return Results(name, frame.assign(source=name), folder=False)


def verdicts(base_rows: list[dict], cur_rows: list[dict], fail_on: str | None = None, alpha: float = 0.01,
             clock: str = "auto") -> dict:
    comp = compare(results(base_rows, "a.csv"), results(cur_rows, "b.csv"), parse_rules(fail_on), alpha, clock)
    return {(r["scheme"], r["metric"]): r for _, r in comp.frame.iterrows()}


@pytest.mark.parametrize("metric,base,cur,fail_on,verdict", [
    ("gflops", 100.0, 100.05, None, UNCHANGED),         # +0.05% within +0.1%
    ("gflops", 100.0, 100.2, None, REGRESSION),          # +0.2%
    ("gflops", 100.0, 99.0, None, IMPROVEMENT),          # -1%: as far the other way
    ("gflops", 100.0, 101.0, "gflops:+2%", UNCHANGED),   # the user's rule overrides the default
    ("gflops", 100.0, 101.0, "gflops:0.5", REGRESSION),  # absolute: +1 > 0.5 (sign optional)
    ("params_m", 86.1, 86.1, None, UNCHANGED),           # +0%: equal passes
    ("params_m", 86.1, 86.10001, None, REGRESSION),      # +0%: any rise fails
    ("params_m", 86.1, 80.0, None, IMPROVEMENT),
    ("params_m", 86.1, 90.0, "params_m:off", None),      # off: not compared
    ("peak_mem_mb", 100.0, 109.0, None, UNCHANGED),
    ("peak_mem_mb", 100.0, 111.0, None, REGRESSION),
    ("top1", 80.0, 79.5, None, UNCHANGED),               # top1:-1 is one point
    ("top1", 80.0, 78.5, None, REGRESSION),
    ("top1", 80.0, 82.0, None, IMPROVEMENT),             # higher is better
    ("top1", 80.0, 78.5, "top1:-2", UNCHANGED),
    ("top1", 80.0, 79.0, "top1:-1%", REGRESSION),        # relative: -1.25%
    ("top5", 90.0, 95.0, "top5:-1", IMPROVEMENT),
    ("pair_acc", 60.0, 50.0, "pair_acc:-5", REGRESSION),
    ("mfu", 0.30, 0.20, "mfu:-10%", REGRESSION),
])
def test_rules_both_directions_absolute_and_relative(metric, base, cur, fail_on, verdict) -> None:
    found = verdicts([{"scheme": "divided", metric: base}], [{"scheme": "divided", metric: cur}], fail_on)
    if verdict is None:
        assert ("divided", metric) not in found
    else:
        assert found[("divided", metric)]["verdict"] == verdict


def test_rule_parsing_and_defaults() -> None:
    rules = parse_rules("latency_ms:+5%,top1:-0.5")
    assert [r.text() for r in rules.values()] == \
        ["gflops:+0.1%", "params_m:+0%", "latency_ms:+5%", "peak_mem_mb:+10%", "top1:-0.5"]
    assert parse_rules(None) == parse_rules(DEFAULT_FAIL_ON)
    assert parse_rule("throughput:10%").text() == "throughput:-10%" and parse_rule("gflops:off").limit is None
    for bad, needle in [("speed:+1%", "accepted metrics: gflops"), ("gflops", "METRIC:+N%"),
                        ("gflops:-1%", "gflops:+1%"), ("top1:+1", "top1:-1"), ("latency_ms:fast", "METRIC:+N%"),
                        (":1", "METRIC:+N%")]:
        with pytest.raises(UsageError, match=needle.replace("+", r"\+")):
            parse_rule(bad)
    with pytest.raises(UsageError, match="empty rule"):
        parse_rules("gflops:+1%,")


def test_u_test_against_hand_computation() -> None:
    # x = 4,5,6 beats y = 1,2,3 in all 9 pairs; only 1 of C(6,3) = 20 orderings does: p = 1/20.
    assert mann_whitney_greater([4, 5, 6], [1, 2, 3]) == (9.0, 0.05, "exact")
    # x = 2,4,6 against y = 1,3,5: 1 + 2 + 3 = 6 pairs. U's counts for 3 + 3 values (the Gaussian
    # binomial [6 choose 3]_q) are 1,1,2,3,3,3,3,2,1,1, so P(U >= 6) = (3+2+1+1)/20.
    assert _u_counts(3, 3) == [1, 1, 2, 3, 3, 3, 3, 2, 1, 1]
    assert mann_whitney_greater([2, 4, 6], [1, 3, 5]) == (6.0, 7 / 20, "exact")
    assert sum(_u_counts(5, 5)) == math.comb(10, 5) and _u_counts(5, 5)[:4] == [1, 1, 2, 3]
    # Ties: x = 1,2,2,3, y = 2,3,3,4. Mid-ranks 1 | 3,3,3 | 6,6,6 | 8: x's rank sum 13, U = 13 - 10 = 3.
    # Variance 4*4/12 * (9 - (24 + 24)/(8*7)) = 76/7; z = (3 - 8 - 0.5)/sqrt(76/7) = -1.6692; p = 0.95246.
    assert u_statistic([1, 2, 2, 3], [2, 3, 3, 4]) == 3.0
    u, p, method = mann_whitney_greater([1, 2, 2, 3], [2, 3, 3, 4])
    assert (u, method) == (3.0, "normal") and p == pytest.approx(0.95246, abs=1e-5)
    # Large samples: the normal approximation, one-sided both ways.
    x, y = [10 + 0.01 * i for i in range(40)], [10.2 + 0.01 * i for i in range(40)]
    assert mann_whitney_greater(y, x)[1] < 1e-3 and mann_whitney_greater(x, y)[1] > 0.99


def _samples(center: float, spread: float = 0.2, n: int = 12) -> str:
    return " ".join(f"{center + spread * ((i * 7) % n - n / 2) / n:.4f}" for i in range(n))


def test_timing_needs_evidence_from_samples() -> None:
    base = [{"scheme": "divided", "latency_ms": 10.0, "latency_iqr_ms": 0.1, "latency_samples_ms": _samples(10)}]
    slow = [{"scheme": "divided", "latency_ms": 12.0, "latency_iqr_ms": 0.1, "latency_samples_ms": _samples(12)}]
    found = verdicts(base, slow)[("divided", "latency_ms")]
    assert found["verdict"] == REGRESSION and found["p_value"] < 1e-4 and "U test" in found["evidence"]
    # The median moved 20%, but the samples are the same distribution: noise, not a regression.
    noisy = [{"scheme": "divided", "latency_ms": 12.0, "latency_iqr_ms": 0.1, "latency_samples_ms": _samples(10)}]
    found = verdicts(base, noisy)[("divided", "latency_ms")]
    assert found["verdict"] == UNCHANGED and found["p_value"] > 0.4 and ">= 0.01" in found["evidence"]
    # Faster, with evidence: an improvement; throughput (higher is better) uses the same samples.
    fast = [{"scheme": "divided", "latency_ms": 8.0, "throughput": 125.0, "latency_samples_ms": _samples(8)}]
    base[0]["throughput"] = 100.0
    found = verdicts(base, fast, "throughput:-10%")
    assert found[("divided", "latency_ms")]["verdict"] == IMPROVEMENT
    assert found[("divided", "throughput")]["verdict"] == IMPROVEMENT
    found = verdicts(fast, base, "throughput:-10%")
    assert found[("divided", "throughput")]["verdict"] == REGRESSION and "U test" in found[("divided", "throughput")]["evidence"]


def test_missing_samples_fall_back_to_iqr_bands() -> None:
    base = [{"scheme": "s", "latency_ms": 10.0, "latency_iqr_ms": 1.0, "latency_samples_ms": _samples(10)}]
    apart = [{"scheme": "s", "latency_ms": 12.0, "latency_iqr_ms": 1.0}]  # 9.5-10.5 vs 11.5-12.5
    found = verdicts(base, apart)[("s", "latency_ms")]
    assert found["verdict"] == REGRESSION and found["evidence"].startswith("IQR bands apart")
    assert math.isnan(found["p_value"])
    overlap = [{"scheme": "s", "latency_ms": 12.0, "latency_iqr_ms": 4.0}]  # 10-14 overlaps 9.5-10.5
    found = verdicts(base, overlap)[("s", "latency_ms")]
    assert found["verdict"] == UNCHANGED and found["evidence"].startswith("IQR bands overlap")
    quartiles = [{"scheme": "s", "latency_ms": 12.0, "latency_iqr_ms": 4.0, "latency_q1_ms": 11.0,
                  "latency_q3_ms": 13.0}]  # the quartiles, where present, win over median +- IQR/2
    assert verdicts(base, quartiles)[("s", "latency_ms")]["verdict"] == REGRESSION
    # +10% or less never regresses, whatever the evidence
    within = [{"scheme": "s", "latency_ms": 10.9, "latency_iqr_ms": 0.01, "latency_samples_ms": _samples(10.9)}]
    assert verdicts(base, within)[("s", "latency_ms")]["verdict"] == UNCHANGED


def test_accuracy_rows_match_on_dataset_seed_and_views() -> None:
    base = [{"scheme": "divided", "dataset": "motion", "seed": 0, "views": "1x1", "top1": 80.0},
            {"scheme": "divided", "dataset": "motion", "seed": 1, "views": "1x1", "top1": 70.0}]
    cur = [{"scheme": "divided", "dataset": "motion", "seed": 0, "views": "1x1", "top1": 78.0},
           {"scheme": "divided", "dataset": "motion", "seed": 1, "views": "1x1", "top1": 70.5}]
    comp = compare(results(base, "a.csv"), results(cur, "b.csv"))
    judged = comp.frame.set_index("seed")["verdict"].to_dict()
    assert judged == {"0": REGRESSION, "1": UNCHANGED}
    assert comp.summary().startswith("1 regression in 1 of 2 rows: divided tiny 8x64/16 seed=0 (top1 -2.00 pt)")


def test_samples_cells_parse_from_csv_and_json() -> None:
    assert parse_samples("1.5 2.5  3.0") == [1.5, 2.5, 3.0]
    assert parse_samples([1, 2]) == [1.0, 2.0]
    assert parse_samples("") is None and parse_samples(float("nan")) is None and parse_samples(None) is None


def test_repeated_runs_of_a_setting_are_pooled() -> None:
    """Rounds of a CI job (files of a folder, or appended rows): each metric is the median run,
    so one disturbed run of three moves nothing; the U test pools every run's samples."""
    base = [{"scheme": "s", "gflops": 1.0, "latency_ms": v, "latency_iqr_ms": 0.2, "latency_samples_ms": _samples(v)}
            for v in (10.0, 10.1, 9.9)]
    disturbed = [{"scheme": "s", "gflops": 1.0, "latency_ms": v, "latency_iqr_ms": 0.2,
                  "latency_samples_ms": _samples(v)} for v in (10.0, 14.0, 10.2)]
    comp = compare(results(base, "a"), results(disturbed, "b"))
    row = comp.frame.set_index("metric").loc["latency_ms"]
    assert row["baseline"] == 10.0 and row["current"] == 10.2 and row["verdict"] == UNCHANGED
    assert "baseline has 3 runs per setting" in comp.notes[0] and "current has 3" in comp.notes[1]
    slower = [{**r, "latency_ms": r["latency_ms"] * 1.2,
               "latency_samples_ms": " ".join(f"{float(x) * 1.2:.4f}" for x in r["latency_samples_ms"].split())}
              for r in base]
    row = compare(results(base, "a"), results(slower, "b")).frame.set_index("metric").loc["latency_ms"]
    assert row["verdict"] == REGRESSION and "36+36 samples" in row["evidence"]
    mixed = [dict(base[0]), {**base[1], "gflops": 2.0}, dict(base[2])]  # not runs of one setting
    assert "current runs of one setting differ in their costs" in compare(results(base, "a"), results(mixed, "b")).warnings[0]
    oom = [dict(base[0]), {**base[1], "status": "oom"}, dict(base[2])]
    row = compare(results(base, "a"), results(oom, "b")).frame.set_index("metric").loc["status"]
    assert row["current"] == "oom" and row["verdict"] == REGRESSION  # the worst run's status


def _timed(wall: float, cpu: float, ref: float | None, n: int = 12, **extra) -> dict:
    """A timed row: wall-clock and CPU medians with their samples, the reference's CPU time."""
    row = {"scheme": "s", "latency_ms": wall, "latency_iqr_ms": 0.1, "latency_samples_ms": _samples(wall, n=n),
           "cpu_ms": cpu, "cpu_samples_ms": _samples(cpu, 0.1 * cpu, n=n), **extra}
    if ref is not None:
        row["ref_cpu_ms"] = ref
    return row


def test_the_reference_clock_cancels_a_slower_machine_and_keeps_a_slower_step() -> None:
    base = [_timed(10.0, 8.0, 2.0, throughput=100.0)]
    # Everything 40% slower, the reference too: the machine, not the code. Wall and CPU clocks fail.
    machine = [_timed(14.0, 11.2, 2.8, throughput=100 / 1.4)]
    found = verdicts(base, machine, "throughput:-10%")
    latency = found[("s", "latency_ms")]
    assert latency["clock"] == "ref" and latency["verdict"] == UNCHANGED
    assert latency["current"] == pytest.approx(10.0) and latency["measured"] == 14.0
    assert found[("s", "throughput")]["verdict"] == UNCHANGED
    assert verdicts(base, machine, clock="wall")[("s", "latency_ms")]["verdict"] == REGRESSION
    assert verdicts(base, machine, clock="cpu")[("s", "latency_ms")]["verdict"] == REGRESSION
    # The step 15% slower in CPU time while the reference stays: a regression, whatever the wall
    # clock did (here the machine got quieter and the wall clock fell).
    step = [_timed(8.5, 9.2, 2.0, throughput=100 / 0.85)]
    found = verdicts(base, step, "throughput:-10%")
    latency, throughput = found[("s", "latency_ms")], found[("s", "throughput")]
    assert latency["verdict"] == REGRESSION and latency["change_pct"] == pytest.approx(15.0)
    assert latency["current"] == pytest.approx(11.5) and latency["measured"] == 8.5  # at the baseline's speed
    assert latency["evidence"].startswith("CPU/reference +15.0% (reference +0.0%, wall -15.0%); U test")
    assert throughput["verdict"] == REGRESSION and throughput["current"] == pytest.approx(100 / 1.15)
    assert verdicts(base, step, clock="wall")[("s", "latency_ms")]["verdict"] == IMPROVEMENT
    # Faster against the reference: an improvement; within the rule: unchanged.
    assert verdicts(base, [_timed(10.0, 6.0, 2.0)])[("s", "latency_ms")]["verdict"] == IMPROVEMENT
    assert verdicts(base, [_timed(12.0, 8.6, 2.0)])[("s", "latency_ms")]["verdict"] == UNCHANGED  # +7.5%


def test_the_reference_clock_needs_evidence_and_falls_back_to_the_wall_clock() -> None:
    base = [_timed(10.0, 8.0, 2.0)]
    # +20% in reference units, but the CPU samples are the baseline's: no evidence.
    noisy = [{**_timed(10.0, 9.6, 2.0), "cpu_samples_ms": _samples(8.0, 0.8)}]
    found = verdicts(base, noisy)[("s", "latency_ms")]
    assert found["clock"] == "ref" and found["verdict"] == UNCHANGED and ">= 0.01" in found["evidence"]
    # An older file (no reference, no CPU time): the wall clock, and a note that says why.
    old = [{"scheme": "s", "latency_ms": 12.0, "latency_iqr_ms": 0.1, "latency_samples_ms": _samples(12.0)}]
    comp = compare(results(base, "a.csv"), results(old, "b.csv"))
    row = comp.frame.set_index("metric").loc["latency_ms"]
    assert row["clock"] == "wall" and row["verdict"] == REGRESSION
    assert any("the wall clock in 1 of 1" in n for n in comp.notes)
    assert any("lacks cpu_ms, ref_cpu_ms and cpu_samples_ms" in n for n in comp.notes)
    no_samples = [{k: v for k, v in _timed(10.0, 9.6, 2.0).items() if k != "cpu_samples_ms"}]
    assert verdicts(base, no_samples)[("s", "latency_ms")]["clock"] == "wall"
    assert verdicts(base, [_timed(10.0, 9.6, None)], clock="cpu")[("s", "latency_ms")]["clock"] == "cpu"
    assert "--clock auto" in compare(results(base, "a"), results(base, "b")).markdown()


def test_rounds_are_judged_per_run_on_the_reference_clock() -> None:
    """Each round is put in reference units first (its own machine speed), then the median run."""
    base = [_timed(10.0, 8.0, r) for r in (2.0, 2.4, 2.0)]            # 4.0, 3.33, 4.0 units
    cur = [_timed(13.0, 8.0 * f, 2.0 * f) for f in (1.0, 1.3, 1.1)]   # the machine drifts: 4.0 units each
    comp = compare(results(base, "a"), results(cur, "b"))
    row = comp.frame.set_index("metric").loc["latency_ms"]
    assert row["clock"] == "ref" and row["verdict"] == UNCHANGED and row["change_pct"] == pytest.approx(0.0)
    assert "36+36 samples" not in row["evidence"]  # within the rule: no test needed
    slower = [_timed(13.0, 8.0 * f * 1.2, 2.0 * f) for f in (1.0, 1.3, 1.1)]
    row = compare(results(base, "a"), results(slower, "b")).frame.set_index("metric").loc["latency_ms"]
    assert row["verdict"] == REGRESSION and row["change_pct"] == pytest.approx(20.0) and "36+36 samples" in row["evidence"]


def test_time_step_times_the_reference_beside_every_run() -> None:
    from vattn_cli.measure.timing import time_step

    calls = []
    timing = time_step(lambda: calls.append("step"), repeats=5, reference=lambda: calls.append("ref"))
    assert len(timing.cpu_s) == len(timing.ref_cpu_s) == len(timing.times_s) == 5
    assert timing.ref_cpu_ms is not None and timing.cpu_ms is not None
    # one warm-up (it sizes the reference), 3 reference runs (its length), then each timed step
    # followed by the same number of reference runs (about half the step's CPU time, 1 to 16)
    assert calls[:4] == ["step", "ref", "ref", "ref"]
    blocks = "".join("s" if c == "step" else "r" for c in calls[4:]).split("s")[1:]
    assert len(blocks) == 5 and len(set(blocks)) == 1 and 1 <= len(blocks[0]) <= 16
    plain = time_step(lambda: None, repeats=3)
    assert plain.ref_cpu_s == [] and plain.ref_cpu_ms is None and len(plain.cpu_s) == 3


def test_with_several_runs_a_side_every_current_run_must_be_slower() -> None:
    """A rerun on a shared machine moves whole runs; with two runs or more a side a timing
    regression also needs every current run slower than every baseline run (on the judged clock)."""
    base = [_timed(10.0, 8.0, 2.0), _timed(10.0, 8.8, 2.0)]           # 4.0 and 4.4 reference units
    overlapping = [_timed(10.0, 8.6, 2.0), _timed(10.0, 11.2, 2.0)]   # 4.3 and 5.6: median +18%
    row = compare(results(base, "a"), results(overlapping, "b")).frame.set_index("metric").loc["latency_ms"]
    assert row["change_pct"] == pytest.approx(100 * (4.95 / 4.2 - 1)) and row["verdict"] == UNCHANGED
    assert "runs overlap (2+2 runs)" in row["evidence"]
    apart = [_timed(10.0, 9.2, 2.0), _timed(10.0, 10.0, 2.0)]         # 4.6 and 5.0: both slower
    row = compare(results(base, "a"), results(apart, "b")).frame.set_index("metric").loc["latency_ms"]
    assert row["verdict"] == REGRESSION and "every run slower (2+2 runs)" in row["evidence"]
    faster = [_timed(10.0, 6.0, 2.0), _timed(10.0, 6.4, 2.0)]
    row = compare(results(base, "a"), results(faster, "b")).frame.set_index("metric").loc["latency_ms"]
    assert row["verdict"] == IMPROVEMENT and "every run faster" in row["evidence"]
    # one run a side: no runs check (the U test and the rule decide)
    row = compare(results(base[:1], "a"), results(overlapping[1:], "b")).frame.set_index("metric").loc["latency_ms"]
    assert row["verdict"] == REGRESSION and "runs" not in row["evidence"].split("; ")[-1]
