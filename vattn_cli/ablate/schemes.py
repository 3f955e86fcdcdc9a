"""Accuracy against compute for every scheme and token setting: the TimeSformer paper's Table 1
(attention scheme vs accuracy on an appearance-heavy and a motion-heavy dataset) crossed with
its accuracy-versus-tokens study, with the cost of each model measured beside its accuracy.

One *run* is one (dataset, scheme, frames, size, seed[, pos_embed]): train it with the engine
into ``OUT/runs/<dataset>/<name>/`` (its own checkpoints, so a run killed midway resumes from
``last.pt``), evaluate it on the val split, profile it (params, GFLOPs per view, latency, peak
memory, cheap settings), and append its row to ``OUT/<csv>`` at once (:class:`RowLog`), so a
killed study resumed with ``resume=True`` skips every finished run and redoes none.

The position-embedding study (the paper's Table 4) is the same runner over ``pos_embed`` values
of one scheme (:func:`pos_embed_plan`).

From Python::

    from vattn_cli.ablate import schemes
    runs = schemes.plan(["builtin:motion"], ["space", "divided"], frames=[4], sizes=[32])
    result = schemes.run(runs, "runs/s", schemes.StudyConfig(epochs=2))
    result.frame[["dataset", "scheme", "top1", "pair_acc", "gflops"]]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vattn_cli import measure as m
from vattn_cli.ablate.config import (  # noqa: F401 (re-exported: the torch-free home of the defaults)
    BUILTIN_DATA, DEFAULT_CLIPS, DEFAULT_FRAMES, DEFAULT_SEEDS, DEFAULT_SIZES, POS_EMBED_FRAMES, POS_EMBED_SCHEME,
    POS_EMBEDS, StudyConfig,
)
from vattn_cli.ablate.executor import Launch, describe, execute
from vattn_cli.ablate.jobs import train_job
from vattn_cli.ablate.measuring import with_concurrent
from vattn_cli.errors import UsageError
from vattn_cli.report.rowlog import RowLog

if TYPE_CHECKING:  # pragma: no cover - pandas loads where a frame is made, so planning stays instant
    import pandas as pd

CSV_NAME = "schemes.csv"
POS_CSV_NAME = "pos_embed.csv"
#: Accuracy columns after the contract's measurement columns. ``pair_acc``: percent of val clips
#: of a time-reversal class pair whose true class outscores its reversal (chance 50; empty when
#: the data has no such pairs). ``chance_top1``: 100 / classes.
ACCURACY_COLUMNS = ["top1", "top5", "views", "epochs", "dataset", "seed", "pair_acc", "chance_top1",
                    "train_loss", "train_s"]
#: Columns of every version of each file; :data:`~vattn_cli.measure.setting.PROVENANCE_COLUMNS` follow.
_FIRST_COLUMNS = m.ROW_COLUMNS + ACCURACY_COLUMNS
_FIRST_POS_COLUMNS = _FIRST_COLUMNS + ["pos_embed"]
COLUMNS = _FIRST_COLUMNS + m.PROVENANCE_COLUMNS
POS_COLUMNS = _FIRST_POS_COLUMNS + m.PROVENANCE_COLUMNS


@dataclass(frozen=True)
class Run:
    """One trained model of the study."""

    data: str  # a builtin spec or a list path, as given
    val: str | None  # the val list; None: the builtin's val split or the folder's val list
    scheme: str
    frames: int
    size: int
    seed: int = 0
    pos_embed: str | None = None  # None: the model's default (space-time)

    @property
    def dataset(self) -> str:
        return dataset_name(self.data)

    @property
    def name(self) -> str:
        pos = f"-pe{self.pos_embed}" if self.pos_embed else ""
        return f"{self.scheme}-{self.frames}x{self.size}{pos}-s{self.seed}"

    def key(self) -> tuple:
        return (self.dataset, self.scheme, self.frames, self.size, self.seed, self.pos_embed or "")


def row_key(row: dict[str, Any]) -> tuple:
    """The :meth:`Run.key` of a row read back from the CSV."""
    return (str(row["dataset"]), str(row["scheme"]), int(row["frames"]), int(row["size"]), int(row["seed"]),
            str(row.get("pos_embed") or ""))


def dataset_name(spec: str) -> str:
    """``builtin:motion`` -> ``motion``; a list path -> its file (or folder) name without suffix."""
    if spec.startswith("builtin:"):
        return spec.split(":", 1)[1]
    return Path(spec).stem or Path(spec).name


def plan(
    data: Sequence[str],
    schemes: Sequence[str],
    frames: Sequence[int] = DEFAULT_FRAMES,
    sizes: Sequence[int] = DEFAULT_SIZES,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    val: Sequence[str] | None = None,
    pos_embeds: Sequence[str | None] = (None,),
) -> list[Run]:
    """Every dataset x scheme x token setting x seed (x pos_embed), cheapest settings first
    within a dataset so an interrupted study has every scheme at the small settings."""
    if not data:
        raise UsageError("--data is empty; expected builtin:motion, builtin:appearance or video lists")
    if val and len(val) != len(data):
        raise UsageError(f"--val names {len(val)} lists for {len(data)} --data values; give one per dataset")
    names = [dataset_name(d) for d in data]
    if len(set(names)) != len(names):
        raise UsageError(f"--data values share a name ({', '.join(names)}); rename the lists")
    for pe in pos_embeds:
        if pe is not None and pe not in POS_EMBEDS:
            raise UsageError(f"invalid --pos-embeds {pe!r}; accepted: {', '.join(POS_EMBEDS)}")
    for d, v in zip(data, val or [None] * len(data)):
        if v is None and not d.startswith("builtin:") and not Path(d).is_dir():
            raise UsageError(f"--data {d} is a list file; pass --val with its validation list")
    tokens = sorted(((f, s) for f in frames for s in sizes), key=lambda fs: (fs[0] * fs[1] ** 2, fs))
    return [Run(d, v, scheme, f, s, seed, pe)
            for d, v in zip(data, val or [None] * len(data))
            for f, s in tokens for seed in seeds for pe in pos_embeds for scheme in schemes]


def pos_embed_plan(data: Sequence[str], scheme: str = POS_EMBED_SCHEME, frames: Sequence[int] = POS_EMBED_FRAMES,
                   sizes: Sequence[int] = DEFAULT_SIZES, seeds: Sequence[int] = DEFAULT_SEEDS,
                   val: Sequence[str] | None = None,
                   pos_embeds: Sequence[str] = POS_EMBEDS) -> list[Run]:
    """The paper's Table 4: one scheme, each kind of position embedding."""
    return plan(data, [scheme], frames, sizes, seeds, val, pos_embeds)


def pair_accuracy(scores: Any, labels: Any, pairs: Sequence[Sequence[int]]) -> float | None:
    """Percent of clips in a reversal pair whose true class scores above its partner (chance 50)."""
    partner = {int(a): int(b) for a, b in pairs} | {int(b): int(a) for a, b in pairs}
    rows = [i for i, y in enumerate(labels.tolist()) if int(y) in partner]
    if not rows:
        return None
    wins = sum(bool(scores[i, int(labels[i])] > scores[i, partner[int(labels[i])]]) for i in rows)
    return 100.0 * wins / len(rows)


def builtin_options(data: str, config: StudyConfig) -> dict[str, Any]:
    """The generator options of built-in ``data`` (``{}`` for a user's list): the study's
    ``data_options`` with the task's clip counts."""
    if not data.startswith("builtin:"):
        return {}
    options = dict(zip(("train", "val"), DEFAULT_CLIPS.get(dataset_name(data), ())))
    options.update(config.data_options)
    if config.clips:
        options.update(zip(("train", "val"), config.clips))
    return options


def _reversal_pairs(run: Run, config: StudyConfig) -> list:
    if not run.data.startswith("builtin:"):
        return []
    from vattn_cli.data import resolve_data

    spec = resolve_data(run.data, split="val", cache_dir=config.cache_dir, **builtin_options(run.data, config))
    return list(spec.meta.get("reversal_pairs") or [])


ProgressFn = Callable[[Any], None]


def run_one(run: Run, out: Path, config: StudyConfig, *, resume: bool, progress: ProgressFn | None = None) -> dict:
    """Train, evaluate and profile one run; its row (contract + accuracy columns).

    ``params_m`` and ``gflops`` are the trained model's own; latency and peak memory are timed in
    this process (few repeats) on the registry's architecture for ``config.model`` (``model_options``
    such as ``dim`` are not applied there), batch 1, inference.
    """
    from vattn_cli.engine import TrainConfig, evaluate, train

    options = dict(config.model_options)
    if run.pos_embed:
        options["pos_embed"] = run.pos_embed
    train_config = TrainConfig(
        out_dir=str(out / "runs" / run.dataset / run.name), scheme=run.scheme, data=run.data, val="none",
        root=config.root, cache_dir=config.cache_dir, data_options=builtin_options(run.data, config),
        model=config.model, frames=run.frames, size=run.size, patch=config.patch, model_options=options,
        tubelet=config.tubelet if config.tubelet != 1 else None,
        epochs=config.epochs, batch=config.batch, lr=config.lr, workers=config.loader_workers(run.data), seed=run.seed,
        device=config.device, resume=resume, tensorboard=config.tensorboard,
    )
    started = time.perf_counter()
    result = train(train_config, progress=progress)
    train_s = time.perf_counter() - started
    val_spec = run.val if run.val is not None else run.data
    ev = evaluate(result.model, val_spec, views=config.views, frames=run.frames, size=run.size, batch=16,
                  workers=config.loader_workers(val_spec), seed=run.seed, root=config.root, cache_dir=config.cache_dir,
                  data_options=builtin_options(run.data, config) if run.val is None else None,
                  progress=progress)
    device = next(result.model.parameters()).device.type
    setting = m.expand(schemes=[run.scheme], models=[config.model], frames=[run.frames], sizes=[run.size],
                       patches=[config.patch] if config.patch else None, tubelets=[config.tubelet], device=device,
                       num_classes=result.num_classes)[0]
    measures = [x for x in config.measures if x != "flops"]  # FLOPs: counted on the trained model below
    row = m.run_setting(setting, measures, m.RunOptions(warmup=1, repeats=config.repeats, seed=run.seed))
    row["params_m"] = sum(p.numel() for p in result.model.parameters()) / 1e6
    row["gflops"], row["attn_gflops"] = ev.gflops_per_view, ev.attn_gflops_per_view
    pairs = _reversal_pairs(run, config)
    row.update(
        top1=ev.top1, top5=ev.top5, views=ev.views_text, epochs=result.epochs, dataset=run.dataset, seed=run.seed,
        pair_acc=pair_accuracy(ev.scores, ev.labels, pairs) if pairs else None,
        chance_top1=100.0 / ev.num_classes, train_loss=result.final.get("train_loss"), train_s=round(train_s, 2),
        pos_embed=run.pos_embed or "",
    )
    if config.tensorboard:  # the run's results beside its training curves (its HParams metrics)
        from vattn_cli.engine import tensorboard_log

        tensorboard_log.log_result(Path(train_config.out_dir) / tensorboard_log.TB_DIR,
                                   {"eval/top1": ev.top1, "eval/top5": ev.top5, "cost/gflops": ev.gflops_per_view},
                                   step=result.epochs)
    return row


@dataclass
class Result:
    """What a study produced: its rows (read back from the CSV), counts and the files written."""

    frame: pd.DataFrame
    skipped: int
    trained: int
    files: list[Path] = field(default_factory=list)
    pareto: dict[str, list[str]] = field(default_factory=dict)


def read_rows(path: Path, runs: Sequence[Run]) -> pd.DataFrame:
    """The plan's rows of the CSV in plan order (other rows, e.g. of a wider earlier study, are left out)."""
    import pandas as pd

    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    order = {r.key(): i for i, r in enumerate(runs)}
    frame["_order"] = [order.get(row_key(row)) for row in frame.to_dict(orient="records")]
    frame = frame.dropna(subset=["_order"]).drop_duplicates("_order", keep="last").sort_values("_order")
    return frame.drop(columns="_order").reset_index(drop=True)


def run(
    runs: Sequence[Run],
    out: str | Path,
    config: StudyConfig | None = None,
    *,
    resume: bool = False,
    csv_name: str = CSV_NAME,
    title: str = "Accuracy against compute",
    progress: Any = None,
    log: Callable[[str], None] | None = None,
    launch: Launch | None = None,
) -> Result:
    """Run the plan into ``out/<csv_name>``, then plot and summarise it.

    ``progress`` is a :class:`~vattn_cli.ablate.progress.StudyProgress` (or None). Without
    ``resume`` an existing CSV is refused; with it, finished runs are skipped and a run killed
    midway continues from its ``last.pt``. ``launch``: how the runs are run
    (:class:`~vattn_cli.ablate.executor.Launch`; default one after another in this process).
    """
    config = config or StudyConfig()
    say = log or (lambda _msg: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pos = csv_name == POS_CSV_NAME
    columns, first = (POS_COLUMNS, _FIRST_POS_COLUMNS) if pos else (COLUMNS, _FIRST_COLUMNS)
    if resume:  # a file of an earlier version (without provenance) resumes with its own header
        columns = m.resume_columns(out / csv_name, columns, first)
    if "tubelet" not in columns and config.tubelet != 1:
        raise UsageError(f"{out / csv_name} was written before the tubelet column (its rows are tubelet 1); "
                         "resume it without --tubelet, or choose another --out")
    launch = launch or Launch()
    columns = with_concurrent(out / csv_name, columns, launch, resume=resume,
                              timed=bool({"latency", "memory"} & set(config.measures)))
    rowlog = RowLog(out / csv_name, columns)
    done = {row_key(row) for row in rowlog.open(resume=resume)}
    todo = [r for r in runs if r.key() not in done]
    skipped = len(runs) - len(todo)
    if resume:
        say(f"resuming {rowlog.path}: {skipped} of {len(runs)} runs already there, skipped")
    if todo and (launch.launcher != "pool" or launch.jobs > 1):
        say(f"runs: {describe(launch)}")
    threads = launch.threads if launch.launcher == "pool" and launch.jobs <= 1 else None
    jobs = [train_job(r, str(out), config, resume=True if resume else _fresh_or_error(out, r), threads=threads)
            for r in todo]
    one_by_one = launch.launcher == "pool" and launch.jobs <= 1

    def started(job) -> None:
        if progress is not None and one_by_one:
            progress.begin(job.label)

    def finished(job, row: dict) -> None:
        rowlog.append(row)
        if progress is not None:
            if one_by_one:
                progress.end()
            else:
                progress.finished(job.label)
        say(f"{job.label}: top1 {row['top1']:.1f}"
            + (f", pair {row['pair_acc']:.1f}" if row.get("pair_acc") is not None else "")
            + f", {row['gflops']:.4g} GFLOPs, trained in {row['train_s']:.0f} s")

    if not one_by_one:
        _generate_builtin(todo, config)
    try:
        if progress is not None:
            progress.start(len(runs), skipped)
        execute(jobs, launch, finished, out=out, on_start=started, progress=progress if one_by_one else None)
    finally:
        rowlog.close()
        if progress is not None:
            progress.stop()
    frame = read_rows(rowlog.path, runs)
    from vattn_cli.report import accuracy_plots

    stem = out / ("pos_embed" if pos else "accuracy_vs_gflops")
    figures = accuracy_plots.accuracy_vs_gflops(frame, stem, title=title, label_by="pos_embed" if pos else "scheme")
    pareto = accuracy_plots.pareto_by_dataset(frame, "pos_embed" if pos else "scheme")
    summary = out / ("pos_embed.md" if pos else "summary.md")
    from vattn_cli.report.tables import atomic_write_text

    atomic_write_text(summary, accuracy_plots.summary_markdown(frame, pareto, title, figures,
                                                               label_by="pos_embed" if pos else "scheme"))
    if config.tensorboard:  # OUT/tensorboard/: the study's figure; each run has its own folder under runs/
        from vattn_cli.engine import tensorboard_log

        tensorboard_log.log_figures(out / tensorboard_log.TB_DIR, {stem.name: p for p in figures if p.suffix == ".png"})
    return Result(frame, skipped, len(todo), [rowlog.path, summary, *figures], pareto)


def _generate_builtin(runs: Sequence[Run], config: StudyConfig) -> None:
    """Generate the built-in data of ``runs`` here, once, before jobs run elsewhere: two pool slots
    (or Slurm jobs) starting on a fresh install would otherwise both write the same set (safe, the
    second is discarded, but twice the time)."""
    from vattn_cli.data import resolve_data

    for data in dict.fromkeys(r.data for r in runs if r.data.startswith("builtin:")):
        resolve_data(data, split="train", cache_dir=config.cache_dir, **builtin_options(data, config))


def _fresh_or_error(out: Path, r: Run) -> bool:
    """Without --resume a run folder holding a run is the user's earlier work: refuse, never mix."""
    last = out / "runs" / r.dataset / r.name / "last.pt"
    if last.exists():
        raise UsageError(f"{last.parent} already holds a run; pass --resume or choose another --out")
    return False


def nan_to_none(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value
