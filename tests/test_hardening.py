"""Hostile-user hardening (issue 18): one writer per output folder, output paths checked before any
work, one stdout output, Ctrl-C that says what finished and how to continue, no orphan workers,
and every bad value in one line naming the flag, the value and what is accepted."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vattn_cli.cli import main
from vattn_cli.commands._outputs import check_outputs, output_lock
from vattn_cli.errors import UsageError
from vattn_cli.report.rowlog import RowLog

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fake_data_cli import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
TOKENS = ["ablate", "tokens", "--schemes", "joint,space", "--model", "tiny", "--frames", "2,4", "--sizes", "32",
          "--measure", "params", "--no-isolate", "-q"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def vattn(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out = capsys.readouterr()
    return exited.value.code, out.out, out.err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------- 1: one writer per folder


def test_a_second_writer_on_a_locked_folder_exits_2_naming_the_holder(tmp_path, capsys) -> None:
    out = tmp_path / "tok"
    with output_lock(out):
        code, _, err = vattn(capsys, *TOKENS, "--out", str(out), "--resume")
    line = one_line(err)
    assert code == 2 and f"pid {os.getpid()}" in line and "--out" in line, line
    assert not (out / "tokens.csv").exists()  # refused before writing anything
    code, _, err = vattn(capsys, *TOKENS, "--out", str(out), "--resume")  # released: it works now
    assert code == 0, err
    assert not (out / ".lock").exists()  # a clean exit leaves no lock file


def test_the_kernel_drops_the_lock_of_a_killed_holder(tmp_path) -> None:
    out = tmp_path / "held"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom vattn_cli.commands._outputs import output_lock\n"
         "with output_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n", str(out)],
        env=ENV, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UsageError, match=f"pid {holder.pid}"):
        with output_lock(out):
            pass
    holder.kill()
    holder.wait()
    with output_lock(out):  # a killed run never blocks its own --resume
        assert (out / ".lock").read_text().strip() == str(os.getpid())


def test_two_concurrent_resumes_one_works_the_other_exits_2_and_rows_are_there_once(tmp_path) -> None:
    out = tmp_path / "c"
    # Long enough (FLOPs and latency) that the first still holds the folder when the second arrives.
    longer = [a if a != "params" else "params,flops,latency" for a in TOKENS[:-1]] + ["--repeats", "3"]
    args = [sys.executable, "-m", "vattn_cli", *longer, "--out", str(out), "--resume"]
    procs = [subprocess.Popen(args, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=240), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "is in use by another vattn (pid" in one_line(refused)
    lines = (out / "tokens.csv").read_text().splitlines()
    assert len(lines) == 1 + 4 and len(set(lines)) == len(lines)  # header + 4 combinations, each once


def test_rowlog_is_created_exclusively(tmp_path) -> None:
    path = tmp_path / "rows.csv"
    first = RowLog(path, ["a", "b"])
    assert first.open() == []
    second = RowLog(path, ["a", "b"])  # a second creator (check-then-create would have let both in)
    with pytest.raises(UsageError, match="exists; pass --resume"):
        second.open()
    first.append({"a": 1, "b": 2})
    first.close()
    with RowLog(path, ["a", "b"]) as again:
        assert again.open(resume=True) == [{"a": "1", "b": "2"}]
    assert path.read_text() == "a,b\n1,2\n"


# ----------------------------------------------------------------------------- 2, 3: output paths up front


@pytest.mark.parametrize("command", [["zoo", "--model", "tiny"],
                                     ["profile", "--scheme", "space", "--model", "tiny", "--frames", "2", "--size",
                                      "32", "--measure", "params", "--no-isolate"]])
def test_two_outputs_on_stdout_are_refused(command, capsys) -> None:
    code, out, err = vattn(capsys, *command, "--csv", "-", "--json", "-")
    assert code == 2 and out == ""
    assert "--csv and --json '-': only one output can go to stdout" in one_line(err)


@pytest.mark.parametrize("command", [
    TOKENS,
    ["ablate", "schemes", "--data", "builtin:motion", "--schemes", "space", "--frames", "2", "--sizes", "32"],
    ["train", "--scheme", "space", "--data", "builtin:motion", "--model", "tiny", "--frames", "2", "--size", "32"],
    ["data", "synth", "--task", "motion"],
])
def test_out_that_is_a_file_exits_2_naming_flag_and_path(command, tmp_path, capsys) -> None:
    target = tmp_path / "a-file"
    target.write_text("mine\n")
    code, _, err = vattn(capsys, *command, "--out", str(target))
    line = one_line(err)
    assert code == 2 and f"invalid --out {target}: it is a file, not a folder" in line, line
    assert target.read_text() == "mine\n"


def test_output_files_are_checked_before_the_work(tmp_path, capsys, monkeypatch) -> None:
    from vattn_cli.commands._measure_flags import MeasureFlags

    def no_work(*args, **kwargs):
        raise AssertionError("started the work before checking the output paths")

    monkeypatch.setattr(MeasureFlags, "start", no_work)  # the first step that loads torch
    folder = tmp_path / "dir"
    folder.mkdir()
    profile = ["profile", "--scheme", "space", "--model", "tiny", "--frames", "2", "--size", "32", "--no-isolate"]
    code, _, err = vattn(capsys, *profile, "--csv", str(folder))
    assert code == 2 and f"invalid --csv {folder}: it is a folder" in one_line(err)
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = vattn(capsys, *profile, "--json", str(blocker / "p.json"))
    assert code == 2 and f"invalid --json {blocker / 'p.json'}: {blocker} is a file" in one_line(err)
    code, _, err = vattn(capsys, "zoo", "--model", "tiny", "--json", str(folder))
    assert code == 2 and "invalid --json" in one_line(err)


@pytest.mark.skipif(IS_ROOT, reason="root can write into a read-only folder")
def test_a_read_only_folder_is_refused_naming_it(tmp_path, capsys) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, _, err = vattn(capsys, "zoo", "--model", "tiny", "--csv", str(locked / "z.csv"))
        assert code == 2 and f"cannot write in {locked}" in one_line(err)
        with pytest.raises(UsageError, match="cannot write in"):
            check_outputs(folders={"--out": locked / "sub"})
    finally:
        locked.chmod(0o755)


def test_check_outputs_creates_nothing(tmp_path) -> None:
    check_outputs(folders={"--out": tmp_path / "a" / "b"}, files={"--csv": tmp_path / "c" / "x.csv", "--json": "-"})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- 4: Ctrl-C speaks


def test_ctrl_c_in_a_study_says_what_finished_and_how_to_continue(tmp_path, capsys, monkeypatch) -> None:
    from vattn_cli.ablate import tokens as study

    real = study.run

    def interrupted_after_rows(plan, out, *args, **kwargs):
        real(plan, out, *args, **kwargs)  # all rows on disk, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "run", interrupted_after_rows)
    out = tmp_path / "tok"
    code, _, err = vattn(capsys, *TOKENS, "--out", str(out))
    line = one_line(err)
    assert code == 130
    assert line.startswith("vattn: interrupted; 4 of 4 combinations finished in ") and "tokens.csv" in line, line
    assert line.endswith(f"continue with: vattn {' '.join(TOKENS)} --out {out} --resume"), line
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") or p.name == ".lock"]


def test_ctrl_c_without_an_output_folder_says_nothing_was_written(capsys, monkeypatch) -> None:
    import vattn_cli.zoo.info as info

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "zoo_frame", interrupted)
    code, out, err = vattn(capsys, "zoo", "--model", "tiny", "--csv", "-")
    assert code == 130 and out == ""
    assert one_line(err) == "vattn: interrupted; nothing was written (results are written when the command finishes)"


# ----------------------------------------------------------------------------- 5: workers never orphaned


def test_worker_arms_its_guard_before_importing_torch() -> None:
    probe = ("import sys\nimport vattn_cli.measure.worker as w\n"
             "print(sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_worker_whose_parent_is_already_gone_does_not_start(tmp_path) -> None:
    from vattn_cli.measure.worker import PARENT_ENV

    job, result = tmp_path / "job.json", tmp_path / "result.json"
    job.write_text("{}")
    env = {**ENV, PARENT_ENV: "1"}  # not its parent: as if the real one died before the guard was armed
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "vattn_cli.measure.worker", str(job), str(result)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and not result.exists() and proc.stderr == ""
    assert time.monotonic() - started < 10  # it never imported torch


def test_stale_worker_folders_of_dead_parents_are_removed(tmp_path) -> None:
    from vattn_cli.measure.isolate import remove_stale_folders

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone, mine, other = (tmp_path / f"vattn-worker-{dead.pid}-abc", tmp_path / f"vattn-worker-{os.getpid()}-abc",
                         tmp_path / "vattn-worker-oldstyle")
    for folder in (gone, mine, other):
        folder.mkdir()
        (folder / "job.json").write_text("{}")
    assert remove_stale_folders(tmp_path) == 1
    assert not gone.exists() and mine.exists() and other.exists()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigkill_of_a_sweep_while_its_worker_starts_leaves_no_orphan(tmp_path) -> None:
    sweep = subprocess.Popen([sys.executable, "-m", "vattn_cli", "ablate", "tokens", "--schemes", "space",
                              "--model", "tiny", "--frames", "2", "--sizes", "32", "--measure", "params,flops", "-q",
                              "--out", str(tmp_path / "o")], env=ENV, cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline, workers = time.monotonic() + 60, []
    while time.monotonic() < deadline and not workers and sweep.poll() is None:
        workers = _children(sweep.pid)
        time.sleep(0.005)
    assert workers, "no worker started"
    sweep.kill()  # in the worker's first milliseconds: still importing
    sweep.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.05)
    assert not any(Path(f"/proc/{w}").exists() for w in workers), "the worker outlived its parent"


# ----------------------------------------------------------------------------- 6, 7, 9: one line naming the value


@pytest.mark.parametrize("args, expected", [
    (["ablate", "schemes", "--seeds", "0", "--out", "x"], "invalid --seeds '0'; expected an integer >= 1"),
    (["ablate", "schemes", "--epochs", "0", "--out", "x"], "invalid --epochs '0'; expected an integer >= 1"),
    (["profile", "--scheme", "space", "--threads", "0"], "invalid --threads '0'; expected an integer >= 1"),
    (["profile", "--scheme", "space", "--time-budget", "-1"], "invalid --time-budget '-1'; expected a number >= 0"),
    (["profile", "--scheme", "space", "--timeout=0.5"], "invalid --timeout '0.5'; expected a number >= 1"),
    (["profile", "--scheme", "space", "--seed", "abc"], "invalid --seed 'abc'; expected an integer"),
    (["nosuch"], "unknown command 'nosuch' for vattn; accepted: zoo, profile, train, eval, compare, ablate, data"),
    (["ablate", "nosuch"], "unknown command 'nosuch' for vattn ablate; accepted: tokens, schemes, pos-embed"),
    (["train", "--data", "random", "--val-views", "0x1", "--out", "x"], "invalid --val-views 0x1; expected TxS"),
    (["profile", "--scheme", "space", "--frames", ""], "invalid --frames ''"),
    (["profile", "--scheme", "space", "--size", ""], "invalid --size ''"),
    (["profile", "--scheme", "space", "--batch", ""], "invalid --batch ''"),
    (["profile", "--scheme", "space", "--mode", ""], "invalid --mode ''"),
    (["profile", "--scheme", "", "--model", "tiny"], "invalid --scheme ''"),
])
def test_bad_values_name_the_flag_the_value_and_what_is_accepted(args, expected, capsys) -> None:
    code, _, err = vattn(capsys, *args)
    line = one_line(err)
    assert code == 2 and expected in line, line


def test_checkpoint_errors_name_the_file(tmp_path, capsys) -> None:
    import torch

    from vattn_cli.zoo import create_model
    from vattn_cli.zoo.checkpoints import save_checkpoint

    number = tmp_path / "int.pt"
    torch.save(5, number)
    code, _, err = vattn(capsys, "eval", "--ckpt", str(number), "--data", "builtin:motion")
    assert code == 2 and "it holds an int, not a dict" in one_line(err)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, create_model("space", size="tiny", frames=2, img_size=32, patch=16, num_classes=3))
    saved = torch.load(ckpt, weights_only=True)
    saved["config"]["scheme"] = "nosuchscheme"
    torch.save(saved, ckpt)
    code, _, err = vattn(capsys, "eval", "--ckpt", str(ckpt), "--data", "builtin:motion")
    assert code == 2 and one_line(err).startswith(f"vattn: error: checkpoint {ckpt}: invalid scheme 'nosuchscheme'")
    saved["config"]["scheme"] = "not_loaded_mod:Attention"
    torch.save(saved, ckpt)
    code, _, err = vattn(capsys, "eval", "--ckpt", str(ckpt), "--data", "builtin:motion")
    line = one_line(err)
    assert code == 2 and f"checkpoint {ckpt}:" in line and "VATTN_SCHEMES=not_loaded_mod:Attention" in line
    assert "--scheme not_loaded_mod" not in line  # eval has no --scheme


# ----------------------------------------------------------------------------- 8, 12: a bad video


def _bad_list(tmp_path: Path) -> Path:
    (tmp_path / "bad.mp4").write_bytes(os.urandom(3000))
    listing = tmp_path / "bad.csv"
    listing.write_text("path,label\n" + "".join(f"bad.mp4,{i % 2}\n" for i in range(8)))
    return listing


def test_decord_says_nothing_of_its_own_on_a_bad_video(tmp_path, capfd) -> None:
    from vattn_cli.data.video import BadVideoError, open_video

    _bad_list(tmp_path)
    capfd.readouterr()
    with pytest.raises(BadVideoError, match="not a readable video"):
        open_video(tmp_path / "bad.mp4")
    assert capfd.readouterr().err == ""  # decord's C++ log line (video_reader.cc) is hidden


def test_a_new_run_that_fails_on_a_bad_video_leaves_no_folder(tmp_path, capfd) -> None:
    listing, out = _bad_list(tmp_path), tmp_path / "run"
    capfd.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(["train", "--scheme", "space", "--data", str(listing), "--val", "none", "--model", "tiny",
              "--frames", "2", "--size", "32", "--epochs", "1", "--batch", "4", "--out", str(out), "-q"])
    err = capfd.readouterr().err
    assert exited.value.code == 2 and "cannot read video" in one_line(err) and "video_reader.cc" not in err
    assert not out.exists()  # no config.json / metrics.csv that look like a started run


# ----------------------------------------------------------------------------- 10: help not cut


@pytest.mark.parametrize("command", [["profile"], ["ablate", "tokens"], ["ablate", "schemes"], ["train"], ["zoo"]])
def test_help_at_80_columns_cuts_nothing(command, capsys, monkeypatch) -> None:
    import click

    from vattn_cli.cli import app

    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = vattn(capsys, *command, "--help")
    assert code == 0 and "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    group = typer_command = __import__("typer").main.get_command(app)
    ctx = click.Context(group)
    for name in command:
        typer_command = typer_command.get_command(ctx, name)
    flat = re.sub(r"\s+", "", out)
    for param in typer_command.params:
        help_text = getattr(param, "help", None) or ""
        assert re.sub(r"\s+", "", help_text) in flat, (param.opts, help_text)
    assert group is not None


@pytest.mark.parametrize("command", [[], ["ablate"], ["data"]])
def test_a_group_alone_prints_its_help_not_an_error(command, capsys) -> None:
    code, out, err = vattn(capsys, *command)
    assert code == 2 and err == "" and out.startswith(f"Usage: vattn {' '.join(command)}".rstrip() + " [OPTIONS]")


# ----------------------------------------------------------------------------- 11: resume says where it starts


def _train(out: Path, *extra: str) -> list[str]:
    return ["train", "--scheme", "space", "--data", "random", "--val", "random", "--model", "tiny", "--frames", "2",
            "--size", "16", "--patch", "8", "--epochs", "2", "--batch", "4", "--out", str(out), *extra]


def test_ctrl_c_in_train_then_resume_from_a_corrupt_last_pt_falls_back_to_best_pt(tmp_path, capsys,
                                                                                 monkeypatch) -> None:
    import importlib

    import torch

    engine_train = importlib.import_module("vattn_cli.engine.train")  # the module (the package exports the function)
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert run_cli(_train(ref, "-q")) == 0
    real = engine_train._Run.finish_epoch

    def ctrl_c_after_epoch_1(self):
        row = real(self)
        if self.epoch == 1:
            raise KeyboardInterrupt
        return row

    monkeypatch.setattr(engine_train._Run, "finish_epoch", ctrl_c_after_epoch_1)
    capsys.readouterr()
    assert run_cli(_train(out, "-q")) == 130
    line = one_line(capsys.readouterr().err)
    assert f"interrupted; 1 of 2 epochs finished in {out}; last.pt holds the run; continue with: vattn train" in line
    assert line.endswith(" --resume"), line
    monkeypatch.undo()
    step = torch.load(out / "last.pt", weights_only=True)["step"]
    (out / "last.pt").write_bytes((out / "last.pt").read_bytes()[:1000])  # then last.pt breaks
    assert run_cli(["train", "--resume", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{out / 'last.pt'} is truncated or corrupt" in err and f"resuming from {out / 'best.pt'} instead" in err
    assert f"resuming from step {step} of {out} (epoch 2 of 2" in err
    a, b = torch.load(ref / "last.pt", weights_only=True)["model"], torch.load(out / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # it ended where the uninterrupted run did


def test_corrupt_last_pt_without_a_fallback_says_how_to_restart(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert run_cli(_train(out, "-q", "--val", "none", "--epochs", "1")) == 0
    (out / "last.pt").write_bytes(b"not a zip")
    capsys.readouterr()
    assert run_cli(["train", "--resume", "--out", str(out)]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"checkpoint {out / 'last.pt'} is not a PyTorch checkpoint" in line, line
    assert "the run keeps no other checkpoint to continue from: start it again with a new --out" in line, line


def test_resume_of_nothing_says_so(tmp_path, capsys) -> None:
    capsys.readouterr()
    assert run_cli(["train", "--resume", "--out", str(tmp_path / "nothere")]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"nothing to resume in {tmp_path / 'nothere'} (the folder does not exist)" in line, line


def test_a_dead_writers_lock_held_by_its_forked_children_is_waited_for(tmp_path) -> None:
    """SIGKILL leaves a writer's data-loader workers holding OUT/.lock for a moment: --resume waits, a
    live holder is refused at once."""
    import fcntl
    import threading

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / ".lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # stands for the orphaned workers' inherited hold
    os.write(fd, dead.stdout.strip().encode() + b"\n")
    threading.Timer(1.0, lambda: os.close(fd)).start()
    start = time.monotonic()
    with output_lock(tmp_path):
        waited = time.monotonic() - start
    assert 0.8 < waited < 20
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())  # a live holder
        start = time.monotonic()
        with pytest.raises(UsageError, match=rf"in use by another vattn \(pid {os.getpid()}\)"):
            with output_lock(tmp_path):
                pass
        assert time.monotonic() - start < 0.5
    finally:
        os.close(fd)


def test_ctrl_c_while_the_command_line_is_parsed_speaks_too(capsys, monkeypatch) -> None:
    """typer answers a Ctrl-C outside a command body with a silent 130; vattn says so in one line."""
    import typer.core

    def interrupted(self, ctx, args):
        raise KeyboardInterrupt

    monkeypatch.setattr(typer.core.TyperGroup, "parse_args", interrupted)
    code, out, err = vattn(capsys, "zoo", "--model", "tiny")
    assert code == 130 and out == ""
    assert one_line(err) == "vattn: interrupted while starting; nothing was written"
