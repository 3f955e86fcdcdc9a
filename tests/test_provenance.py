"""Raw latency samples and provenance columns: what ``vattn compare`` needs to judge two rows fairly.

Samples: every timed run in ms, in JSON always, in CSV with ``--samples``; their count is the
``repeats`` and their median the ``latency_ms``. Provenance: versions, device name, threads and
a machine fingerprint on every measurement row, after the contract's columns (additive).
"""

from __future__ import annotations

import io
import json
import re
import statistics
from pathlib import Path

import pandas as pd
import pytest
import torch

import vattn_cli
from vattn_cli import measure
from vattn_cli.ablate import schemes, tokens
from vattn_cli.cli import main
from vattn_cli.measure.provenance import _static, machine_description, machine_fingerprint, provenance

TINY = ["--model", "tiny", "--frames", "2", "--size", "32", "--warmup", "0", "--threads", "1"]
#: ``profile``'s columns before provenance and samples: their order is the contract's and stays.
PROFILE_FIRST = measure.ROW_COLUMNS + ["repeats", "timed_s", "wall_s"]
#: ``profile``'s CPU-time columns after the samples (vattn compare's reference clock).
TIMING = ["cpu_ms", "ref_cpu_ms", "cpu_samples_ms"]


def _profile(capsys, *args: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["profile", *args])
    out = capsys.readouterr()
    assert exited.value.code == 0, out.err
    return out.out


def _sane_provenance(row, threads: int | None = None) -> None:
    assert row["vattn_version"] == vattn_cli.__version__ and row["torch_version"] == torch.__version__
    assert isinstance(row["device_name"], str) and row["device_name"].strip()
    assert int(row["threads"]) >= 1 and (threads is None or int(row["threads"]) == threads)
    assert re.fullmatch(r"[0-9a-f]{12}", str(row["machine"])) and row["machine"] == machine_fingerprint("cpu")


def test_provenance_is_sane_and_the_machine_fingerprint_stable() -> None:
    first = provenance("cpu")
    assert list(first) == measure.PROVENANCE_COLUMNS
    _sane_provenance(first, threads=torch.get_num_threads())
    assert provenance("cpu", threads=3)["threads"] == 3
    machine_description.cache_clear()
    _static.cache_clear()  # computed afresh: the same fingerprint
    assert provenance("cpu")["machine"] == first["machine"] == machine_fingerprint("cpu")
    description = machine_description("cpu")
    assert {"cpu", "cores", "mem_gib", "os"} == {part.split("=")[0] for part in description.split(";")}


def test_profile_json_always_has_samples_and_provenance(capsys, tmp_path) -> None:
    target = tmp_path / "rows.json"
    _profile(capsys, "--scheme", "space,joint", *TINY, "--repeats", "4", "--no-isolate", "--json", str(target))
    rows = json.loads(target.read_text())
    assert list(rows[0])[: len(PROFILE_FIRST)] == PROFILE_FIRST
    assert list(rows[0])[len(PROFILE_FIRST):] == measure.PROVENANCE_COLUMNS + [measure.SAMPLES_COLUMN] + TIMING
    for row in rows:
        samples = row[measure.SAMPLES_COLUMN]
        assert len(samples) == row["repeats"] == 4 and all(isinstance(v, float) and v > 0 for v in samples)
        assert statistics.median(samples) == pytest.approx(row["latency_ms"], rel=1e-12)
        _sane_provenance(row, threads=1)


def test_profile_csv_has_samples_only_with_the_flag(capsys) -> None:
    plain = pd.read_csv(io.StringIO(_profile(capsys, "--scheme", "space", *TINY, "--repeats", "3", "--no-isolate",
                                             "--quiet", "--csv", "-")))
    assert list(plain.columns) == PROFILE_FIRST + measure.PROVENANCE_COLUMNS + ["cpu_ms", "ref_cpu_ms"]
    _sane_provenance(plain.iloc[0], threads=1)
    out = _profile(capsys, "--scheme", "space", *TINY, "--repeats", "5", "--no-isolate", "--samples", "--csv", "-")
    frame = pd.read_csv(io.StringIO(out))
    assert list(frame.columns) == PROFILE_FIRST + measure.PROVENANCE_COLUMNS + [measure.SAMPLES_COLUMN] + TIMING
    cell = frame.iloc[0][measure.SAMPLES_COLUMN]
    assert re.fullmatch(r"\d+\.\d{4}( \d+\.\d{4}){4}", cell), cell
    samples = measure.parse_samples(cell)
    assert len(samples) == frame.iloc[0]["repeats"] == 5
    assert statistics.median(samples) == pytest.approx(frame.iloc[0]["latency_ms"], abs=1e-4)


def test_worker_rows_bring_samples_and_provenance_back_and_untimed_rows_have_none() -> None:
    setting = measure.expand(schemes=["space"], models=["tiny"], frames=[2], sizes=[32])[0]
    row, _ = measure.run_isolated(setting, ["latency"], measure.RunOptions(warmup=0, repeats=3, threads=1))
    assert row["status"] == "ok" and len(row[measure.SAMPLES_COLUMN]) == 3
    assert statistics.median(row[measure.SAMPLES_COLUMN]) == pytest.approx(row["latency_ms"])
    _sane_provenance(row, threads=1)
    untimed = measure.run_setting(setting, ["params"])
    assert untimed[measure.SAMPLES_COLUMN] == [] and untimed["latency_ms"] is None
    _sane_provenance(untimed)
    assert measure.format_samples([]) == "" and measure.parse_samples(float("nan")) == []
    assert measure.parse_samples("1.5 2.25") == [1.5, 2.25] and measure.format_samples([1.23456]) == "1.2346"


def _tokens(capsys, out: Path, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["ablate", "tokens", "--schemes", "space", "--model", "tiny", "--frames", "2", "--sizes", "32",
              "--measure", "latency", "--warmup", "0", "--repeats", "3", "--threads", "1", "--no-isolate",
              "--out", str(out), *args])
    return exited.value.code, capsys.readouterr().err


def test_ablate_tokens_keeps_samples_with_the_flag_and_provenance_always(capsys, tmp_path) -> None:
    code, err = _tokens(capsys, tmp_path / "plain")
    assert code == 0, err
    plain = pd.read_csv(tmp_path / "plain" / "tokens.csv")
    assert list(plain.columns) == tokens.COLUMNS == PROFILE_FIRST + measure.PROVENANCE_COLUMNS
    _sane_provenance(plain.iloc[0], threads=1)

    code, err = _tokens(capsys, tmp_path / "samples", "--samples")
    assert code == 0, err
    frame = pd.read_csv(tmp_path / "samples" / "tokens.csv")
    assert list(frame.columns) == tokens.COLUMNS + [measure.SAMPLES_COLUMN]
    samples = measure.parse_samples(frame.iloc[0][measure.SAMPLES_COLUMN])
    assert len(samples) == frame.iloc[0]["repeats"] == 3
    assert statistics.median(samples) == pytest.approx(frame.iloc[0]["latency_ms"], abs=1e-4)

    # Resuming keeps the file's own header: with samples though not asked, or an older version's.
    code, err = _tokens(capsys, tmp_path / "samples", "--resume", "--frames", "2,4")
    assert code == 0, err
    again = pd.read_csv(tmp_path / "samples" / "tokens.csv")
    assert list(again.columns) == list(frame.columns) and len(again) == 2
    assert len(measure.parse_samples(again.iloc[1][measure.SAMPLES_COLUMN])) == 3
    old = tmp_path / "old" / "tokens.csv"
    old.parent.mkdir()
    plain[PROFILE_FIRST].to_csv(old, index=False)  # as written before provenance
    code, err = _tokens(capsys, old.parent, "--resume", "--frames", "2,4", "--samples")
    assert code == 0, err
    assert "keeps its columns: without vattn_version" in err
    resumed = pd.read_csv(old)
    assert list(resumed.columns) == PROFILE_FIRST and len(resumed) == 2


def test_eval_and_ablate_schemes_rows_carry_provenance_after_their_columns() -> None:
    from vattn_cli.engine.evaluate import CheckpointEval, EvalResult

    result = EvalResult(top1=50.0, top5=100.0, n=2, views=(1, 1), num_classes=2, dataset="d", frames=2, size=32,
                        scores=torch.zeros(2, 2), labels=torch.zeros(2, dtype=torch.long),
                        per_class=[{"top1": 50.0, "top5": 100.0, "clips": 2, "class": "c0", "label": 0}])
    outcome = CheckpointEval(result=result, model_config={"scheme": "space", "size": "tiny", "patch": 16},
                             params_m=1.0, epochs=1, checkpoint="x.pt", batch=1, dtype="fp32", device="cpu", threads=2)
    for per_class in (False, True):
        frame = outcome.frame(per_class=per_class)
        columns = list(frame.columns)
        assert columns[: len(measure.ROW_COLUMNS)] == measure.ROW_COLUMNS
        assert columns[-len(measure.PROVENANCE_COLUMNS):] == measure.PROVENANCE_COLUMNS
        if per_class:  # class and label stay where they were, before provenance
            assert columns[-len(measure.PROVENANCE_COLUMNS) - 2:-len(measure.PROVENANCE_COLUMNS)] == ["class", "label"]
        for _, row in frame.iterrows():
            _sane_provenance(row, threads=2)
    assert schemes.COLUMNS == measure.ROW_COLUMNS + schemes.ACCURACY_COLUMNS + measure.PROVENANCE_COLUMNS
    assert schemes.POS_COLUMNS == schemes.COLUMNS[: -len(measure.PROVENANCE_COLUMNS)] + ["pos_embed"] \
        + measure.PROVENANCE_COLUMNS
