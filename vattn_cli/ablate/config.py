"""Defaults of the studies, without torch, pandas or matplotlib.

:mod:`vattn_cli.ablate.tokens` and :mod:`vattn_cli.ablate.schemes` take their defaults from here
(and re-export them), so ``vattn ablate ... --help`` prints the library's values, generated
rather than retyped, and stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vattn_cli.measure.setting import MEASURES

#: Schemes of a study when none are named: every registered and discovered one.
ALL_SCHEMES = ("all",)

# ----------------------------------------------------------------------------- ablate tokens
#: Frame counts and resolutions of ``ablate tokens`` (the TimeSformer paper's Figure 3 range).
TOKENS_FRAMES = (8, 32, 64, 96)
TOKENS_SIZES = (224, 336, 448, 560)
#: The paper's base setting: a sweep over one axis holds the other here when it is swept.
BASE_FRAMES, BASE_SIZE = 8, 224
#: The model ``ablate tokens`` measures.
TOKENS_MODEL = "base"
#: Seconds of timed runs per combination for ``--repeats auto``: a sweep has many combinations, so
#: less than ``profile``'s :attr:`~vattn_cli.measure.setting.RunOptions.budget_s`.
TOKENS_BUDGET_S = 2.0

# ----------------------------------------------------------------------------- ablate schemes / pos-embed
BUILTIN_DATA = ("builtin:motion", "builtin:appearance")
#: Token settings of the default study: two frame counts at one tiny resolution.
DEFAULT_FRAMES = (4, 8)
DEFAULT_SIZES = (32,)
#: Seeds of each setting when none are given.
DEFAULT_SEEDS = (0,)
POS_EMBEDS = ("none", "space", "space-time")
#: Every ``--pos-embeds`` value accepted (the default study compares :data:`POS_EMBEDS`, the paper's).
POS_EMBED_CHOICES = POS_EMBEDS + ("joint", "sincos")
#: The scheme and frame counts of the position-embedding study (the paper's Table 4).
POS_EMBED_SCHEME = "divided"
POS_EMBED_FRAMES = (8,)
#: (train, val) videos generated per built-in task when ``StudyConfig.clips`` is None.
DEFAULT_CLIPS = {"motion": (384, 96), "appearance": (160, 96)}


@dataclass
class StudyConfig:
    """How each run is trained, evaluated and profiled (the same for every run of a study).

    The defaults are sized for README's main command on a 2-core CPU (28 runs in under 20
    minutes): tiny model, patch 8 at 32 px (16 tokens a frame), 6 epochs of 384 motion clips in
    batches of 8, AdamW 5e-4, with the engine's from-scratch initialisation. At this budget the
    tiny ``divided`` model learns the motion task's reversal pairs (98-99% at 8 frames, seeds 0
    and 1); 5 epochs or 288 clips left it at chance with TimeSformer's initialisation.

    ``workers`` (None) loads built-in clips in the run's own process and a user's videos in one
    loader worker (:meth:`loader_workers`). ``data_options`` go to the built-in generator only; ``clips`` sets its (train, val) video
    counts, one pair for every built-in task (it overrides ``train``/``val`` in ``data_options``),
    or ``None`` for :data:`DEFAULT_CLIPS` (the appearance task is learnt from fewer clips, so it
    gets fewer than the motion task).
    """

    model: str = "tiny"
    epochs: int = 6
    batch: int = 8
    lr: float | None = 5e-4
    #: Data loader worker processes per run; None: 0 on built-in data, 1 on a user's videos. The
    #: built-in clips come from the frame cache in about a millisecond each, and a loader process
    #: per run, beside the other runs (``--jobs``), left training waiting on data 21-38% of
    #: each run's time (one process: 5-10%); a user's videos need decoding, which a worker hides.
    workers: int | None = None
    device: str = "cpu"
    patch: int | None = 8
    tubelet: int = 1  # frames per patch (a 3D patch embedding when > 1)
    views: str = "1x1"
    model_options: dict[str, Any] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=lambda: {"frames": 9, "size": 32})
    clips: tuple[int, int] | None = None
    cache_dir: str | None = None
    root: str | None = None
    measures: tuple[str, ...] = MEASURES
    repeats: int = 3  # latency repeats: cheap, this study's point is accuracy
    tensorboard: bool = False  # each run also logs to its runs/<dataset>/<run>/tensorboard/, the figure to OUT/tensorboard/

    def loader_workers(self, data: object) -> int:
        """Loader workers for a run on ``data`` (see ``workers``)."""
        if self.workers is not None:
            return self.workers
        return 0 if str(data).startswith("builtin:") else 1
