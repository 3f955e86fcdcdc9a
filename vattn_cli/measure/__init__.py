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
``error: <reason>``.
"""

from vattn_cli.measure.flops import FlopCount, breakdown_frame, count_flops, count_model_flops
from vattn_cli.measure.isolate import rows_frame, run_isolated, sweep
from vattn_cli.measure.memory import parse_size
from vattn_cli.measure.run import run_setting
from vattn_cli.measure.setting import (
    DTYPES, EXTRA_COLUMNS, MEASURES, MODES, ROW_COLUMNS, RunOptions, Setting, expand, row_key,
)
from vattn_cli.measure.timing import Timing, parse_repeats, time_step

__all__ = [
    "DTYPES", "EXTRA_COLUMNS", "MEASURES", "MODES", "ROW_COLUMNS", "FlopCount", "RunOptions", "Setting", "Timing",
    "breakdown_frame", "count_flops", "count_model_flops", "expand", "parse_repeats", "parse_size",
    "row_key", "rows_frame", "run_isolated", "run_setting", "sweep", "time_step",
]
