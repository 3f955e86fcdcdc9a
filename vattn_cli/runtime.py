"""Process-wide runtime set-up shared by the engine, the studies and the CLI: device, seeds.

It sits below ``engine`` and ``commands`` so both can use it without the engine importing the
CLI (imports follow the data flow: CLI -> engine -> zoo/data/measure). torch is imported inside
the functions, so importing this module stays instant; the device *name* is checked before torch
is loaded, so ``--device gpu`` fails at once.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from vattn_cli.errors import UsageError, one_of

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: What ``--device`` accepts, and what a command uses when it is not given.
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_DEVICE = "auto"
#: Seed of a command when ``--seed`` is not given.
DEFAULT_SEED = 0


def check_device_name(name: str) -> str:
    """Refuse a ``--device`` that is none of :data:`DEVICES` (no torch needed for that)."""
    if name not in DEVICES:
        raise one_of("--device", name, list(DEVICES))
    return name


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a usage error."""
    check_device_name(name)
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("invalid --device 'cuda': no CUDA device is available; use cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a run repeats."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
