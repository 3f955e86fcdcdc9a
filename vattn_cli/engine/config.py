"""What defines a training or evaluation run, without torch: :class:`TrainConfig` and its defaults.

The dataclass, the optimizer names and learning rates and the ``TxS`` view parser live here,
apart from the training loop, so that ``vattn train --help`` can print the library's own
defaults and bad values fail before torch is imported. :mod:`vattn_cli.engine.train` re-exports
:class:`TrainConfig` (``from vattn_cli.engine import TrainConfig`` keeps working).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from vattn_cli.errors import UsageError, one_of
from vattn_cli.measure.setting import DTYPES
from vattn_cli.runtime import DEFAULT_DEVICE, DEFAULT_SEED

OPTIMIZERS = ("adamw", "sgd")
#: How 2D patch weights inflate into a tubelet's 3D kernel (:func:`vattn_cli.zoo.layers.inflate_patch_weight`;
#: the same names, kept here torch-free for the CLI).
TUBELET_INITS = ("central", "repeat")
#: Learning rates used when ``--lr`` is not given. AdamW: what trains the tiny model from scratch on
#: the built-in tasks (1e-3 stalls there at chance); SGD: the TimeSformer paper's (fine-tuning).
DEFAULT_LR = {"adamw": 5e-4, "sgd": 5e-3}
#: The size a run trains when neither ``model`` nor ``init`` names one.
DEFAULT_MODEL = "tiny"
#: Std of the position embeddings when training from scratch (patch tokens have std ~1).
SCRATCH_INIT = 1.0
#: ``val`` value that turns validation off even for built-in data.
NO_VAL = "none"

#: ``vattn eval`` / :func:`~vattn_cli.engine.evaluate.eval_checkpoint` defaults.
EVAL_VIEWS = "1x1"
EVAL_BATCH = 8
EVAL_DTYPE = "fp32"
EVAL_WORKERS = 0


def parse_views(text: str | tuple[int, int], flag: str = "--views") -> tuple[int, int]:
    """``"2x3"`` -> ``(2, 3)``: temporal clips x spatial crops; errors name ``flag``."""
    if isinstance(text, tuple):
        views = text
    else:
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
        if not match:
            raise UsageError(f"invalid {flag} {text!r}; expected TxS with integers >= 1, e.g. 1x1, 1x3, 2x3")
        views = (int(match.group(1)), int(match.group(2)))
    if min(views) < 1:
        raise UsageError(f"invalid {flag} {views[0]}x{views[1]}; expected TxS with integers >= 1, e.g. 1x1, 1x3, 2x3")
    return views


def views_text(views: tuple[int, int]) -> str:
    return f"{views[0]}x{views[1]}"


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` and in ``last.pt``.

    ``model`` is a size or a preset (default :data:`DEFAULT_MODEL`, or the ``init`` checkpoint's); ``frames``/``size``/``patch`` default to the
    preset's or the registry defaults. ``model_options`` go to ``create_model`` (``dim``,
    ``depth``, ``drop_path_rate``, a scheme's own options). ``val=None`` uses the built-in
    val split when ``data`` is built-in, and no validation otherwise; ``"none"`` turns it off.
    ``lr=None`` takes the optimizer's default (:data:`DEFAULT_LR`).
    ``scratch_init``: std of the position embeddings of a model trained from scratch, which also
    switches on the rest of :func:`~vattn_cli.engine.train.init_from_scratch_`; 0 keeps the zoo's initialisation.
    """

    out_dir: str
    scheme: str | None = None
    data: str = "builtin:appearance"
    val: str | None = None
    root: str | None = None
    cache_dir: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    frames: int | None = None
    size: int | None = None
    patch: int | None = None
    tubelet: int | None = None  # frames per patch (3D patch embedding when > 1); None: 1, or the --init file's
    tubelet_init: str | None = None  # how --init's 2D patch weights inflate: central (None) or repeat
    model_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch: int = 8
    lr: float | None = None
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    clip_grad: float | None = 1.0
    optimizer: str = "adamw"
    momentum: float = 0.9
    dtype: str = "fp32"
    workers: int = 0
    init: str | None = None
    save_every: int = 0
    val_views: str = "1x1"
    val_batch: int | None = None
    sampling: str = "uniform"
    sample_rate: int = 4
    hflip: bool = False
    train_scale: tuple[float, float] | None = None  # short side / crop at training; None: see train._train_scale
    scratch_init: float = SCRATCH_INIT
    resume: bool = False
    seed: int = DEFAULT_SEED
    device: str = DEFAULT_DEVICE
    tensorboard: bool = False  # also write OUT/tensorboard/ (engine.tensorboard_log); logging only

    def __post_init__(self) -> None:
        if self.train_scale is not None:  # a list from JSON and a tuple compare unequal on resume
            self.train_scale = tuple(float(x) for x in self.train_scale)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR.get(self.optimizer, 1e-3)

    def validate(self) -> None:
        """Usage errors for values no run can use, each naming the flag."""
        checks = [("--epochs", self.epochs, 1), ("--batch", self.batch, 1), ("--workers", self.workers, 0),
                  ("--save-every", self.save_every, 0)]
        for flag, value, low in checks:
            if not isinstance(value, int) or value < low:
                raise UsageError(f"invalid {flag} {value!r}; expected an integer >= {low}")
        if self.optimizer not in OPTIMIZERS:
            raise one_of("--optimizer", self.optimizer, list(OPTIMIZERS))
        if self.dtype not in DTYPES:
            raise one_of("--dtype", self.dtype, list(DTYPES))
        if self.lr is not None and not self.lr > 0:
            raise UsageError(f"invalid --lr {self.lr}; expected a number > 0")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"invalid --label-smoothing {self.label_smoothing}; expected 0 <= value < 1")
        for flag, value in (("--weight-decay", self.weight_decay), ("--warmup-epochs", self.warmup_epochs)):
            if value < 0:
                raise UsageError(f"invalid {flag} {value:g}; expected a number >= 0")
        parse_views(self.val_views, flag="--val-views")
        if self.tubelet_init is not None and self.tubelet_init not in TUBELET_INITS:
            raise one_of("--tubelet-init", self.tubelet_init, list(TUBELET_INITS))
        if self.tubelet is not None:
            from vattn_cli.zoo.catalog import check_tubelet

            check_tubelet(self.frames if self.frames is not None else 0, self.tubelet)
        if self.scratch_init < 0:
            raise UsageError(f"invalid --scratch-init {self.scratch_init}; expected a number >= 0")
        if self.train_scale is not None and not (len(self.train_scale) == 2 and 0 < self.train_scale[0] <= self.train_scale[1]):
            raise UsageError(f"invalid --train-scale {self.train_scale}; expected LO,HI with 0 < LO <= HI, e.g. 1,1.15")
