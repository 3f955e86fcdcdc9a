"""Training and evaluation engine, usable from Python as well as from ``vattn train``/``vattn eval``.

    from vattn_cli.engine import TrainConfig, train, evaluate
    result = train(TrainConfig(out_dir="runs/divided", scheme="divided", data="builtin:motion",
                               frames=4, size=32, epochs=5, resume=True))
    scores = evaluate(result.model, "builtin:motion", views=(2, 3))

Names load on first use (PEP 562), so importing the package (or :class:`TrainConfig`, from the
torch-free :mod:`vattn_cli.engine.config`) does not import torch.
"""

from typing import TYPE_CHECKING

from vattn_cli._lazy import lazy_exports

_EXPORTS = {
    "PreparedData": "vattn_cli.engine.data",
    "parse_views": "vattn_cli.engine.config",
    "DistInfo": "vattn_cli.engine.distributed",
    "ShardedSampler": "vattn_cli.engine.distributed",
    "init_distributed": "vattn_cli.engine.distributed",
    "shutdown_distributed": "vattn_cli.engine.distributed",
    "EvalResult": "vattn_cli.engine.evaluate",
    "evaluate": "vattn_cli.engine.evaluate",
    "gflops_per_view": "vattn_cli.engine.evaluate",
    "ProgressEvent": "vattn_cli.engine.progress",
    "RichProgress": "vattn_cli.engine.progress",
    "TrainConfig": "vattn_cli.engine.config",
    "TrainResult": "vattn_cli.engine.train",
    "read_run_config": "vattn_cli.engine.train",
    "resume_config": "vattn_cli.engine.train",
    "train": "vattn_cli.engine.train",
}
__all__ = sorted(_EXPORTS)
# ``train`` and ``evaluate`` are functions that share their names with submodules.
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, shadowed=("train", "evaluate"))

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from vattn_cli.engine.config import TrainConfig, parse_views
    from vattn_cli.engine.data import PreparedData
    from vattn_cli.engine.distributed import DistInfo, ShardedSampler, init_distributed, shutdown_distributed
    from vattn_cli.engine.evaluate import EvalResult, evaluate, gflops_per_view
    from vattn_cli.engine.progress import ProgressEvent, RichProgress
    from vattn_cli.engine.train import TrainResult, read_run_config, resume_config, train
