"""The measurement engine: parameters, FLOPs, latency, peak memory, per setting and per sweep.

``profile``, ``ablate tokens``, ``eval`` and CI use it through two calls::

    from vattn_cli import measure
    settings = measure.expand(schemes=["divided"], frames=[8, 32], sizes=[224])
    row = measure.run_setting(settings[0])                  # one row, in this process
    options = measure.RunOptions(warmup=1, repeats="auto", budget_s=5.0)
    frame = measure.sweep(settings, measure.MEASURES, options,  # one worker process per setting
                          on_row=append_to_csv, skip=lambda s: s.key() in done,
                          max_memory=measure.parse_size("2GB"))

Every row has the contract's columns (:data:`ROW_COLUMNS`), ``status`` being ``ok``, ``oom`` or
``error: <reason>``, then :data:`EXTRA_COLUMNS`: how it was timed, where it ran
(:data:`PROVENANCE_COLUMNS`, :mod:`vattn_cli.measure.provenance`) and every timed run (:data:`SAMPLES_COLUMN`).

Names load on first use (PEP 562): the torch-free :mod:`vattn_cli.measure.setting` (the row
contract, :class:`RunOptions`, :func:`expand`) is usable without importing torch.
"""

from typing import TYPE_CHECKING

from vattn_cli._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["FlopCount", "breakdown_frame", "count_flops", "count_model_flops"], "vattn_cli.measure.flops"),
    **dict.fromkeys(["rows_frame", "run_isolated", "sweep"], "vattn_cli.measure.isolate"),
    "parse_size": "vattn_cli.measure.parsing",
    "run_setting": "vattn_cli.measure.run",
    **dict.fromkeys(["DTYPES", "EXTRA_COLUMNS", "MEASURES", "MODES", "PROVENANCE_COLUMNS", "ROW_COLUMNS", "RunOptions",
                     "SAMPLES_COLUMN", "Setting", "csv_cells", "expand", "format_samples", "parse_samples",
                     "resume_columns", "row_key"], "vattn_cli.measure.setting"),
    "parse_repeats": "vattn_cli.measure.parsing",
    **dict.fromkeys(["Timing", "time_step"], "vattn_cli.measure.timing"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from vattn_cli.measure.flops import FlopCount, breakdown_frame, count_flops, count_model_flops
    from vattn_cli.measure.isolate import rows_frame, run_isolated, sweep
    from vattn_cli.measure.parsing import parse_repeats, parse_size
    from vattn_cli.measure.run import run_setting
    from vattn_cli.measure.setting import (
        DTYPES, EXTRA_COLUMNS, MEASURES, MODES, PROVENANCE_COLUMNS, ROW_COLUMNS, SAMPLES_COLUMN, RunOptions, Setting,
        csv_cells, expand, format_samples, parse_samples, resume_columns, row_key,
    )
    from vattn_cli.measure.timing import Timing, time_step
