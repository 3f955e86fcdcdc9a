"""Training and evaluation engine, usable from Python as well as from ``vattn train``/``vattn eval``.

    from vattn_cli.engine import TrainConfig, train, evaluate
    result = train(TrainConfig(out_dir="runs/divided", scheme="divided", data="builtin:motion",
                               frames=4, size=32, epochs=5, resume=True))
    scores = evaluate(result.model, "builtin:motion", views=(2, 3))
"""

from vattn_cli.engine.data import PreparedData, parse_views
from vattn_cli.engine.distributed import DistInfo, ShardedSampler, init_distributed, shutdown_distributed
from vattn_cli.engine.evaluate import EvalResult, evaluate, gflops_per_view
from vattn_cli.engine.progress import ProgressEvent, RichProgress
from vattn_cli.engine.train import TrainConfig, TrainResult, read_run_config, resume_config, train

__all__ = [
    "DistInfo", "EvalResult", "PreparedData", "ProgressEvent", "RichProgress", "ShardedSampler", "TrainConfig",
    "TrainResult", "evaluate", "gflops_per_view", "init_distributed", "parse_views", "read_run_config",
    "resume_config", "shutdown_distributed", "train",
]
