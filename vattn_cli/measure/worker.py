"""Worker process: measure one setting and write its row as JSON.

``python -m vattn_cli.measure.worker JOB.json RESULT.json``. The parent
(:mod:`vattn_cli.measure.isolate`) writes the job and reads the result; a worker that dies
(segfault, killed) leaves no result, which the parent turns into ``status=error: ...``.

Order matters twice. The die-with-parent guard is armed first, before any heavy import: a
parent killed while the worker is still importing torch (seconds) would otherwise leave an
orphan that runs its whole job. And for the memory cap, torch is imported and its thread pools
are started (a small forward and backward) *before* the baseline address space is read, so the
cap counts what the run maps, not what the runtime maps once for good.

Ctrl-C is the parent's business: the worker ignores SIGINT (a terminal sends it to the whole
process group), and the parent stops it and turns the interrupt into its own message, rather
than recording a row for a setting that was merely interrupted.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Environment variable through which the parent passes its PID (see :func:`die_with_parent`).
PARENT_ENV = "VATTN_WORKER_PARENT"


def import_scheme_modules(modules: list[list[str | None]]) -> None:
    """Import the modules that register non-built-in schemes, by name or else by file."""
    for name, path in modules:
        if name and name != "__main__":
            try:
                importlib.import_module(name)
                continue
            except ImportError:
                if not path:
                    raise
        if path:
            spec = importlib.util.spec_from_file_location(f"_vattn_scheme_{abs(hash(path))}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)


def warm_runtime(device: torch.device) -> None:
    """Start the thread pools and kernels' one-time state, outside the measured memory."""
    import torch

    layer = torch.nn.Linear(64, 64).to(device)
    x = torch.randn(8, 16, 64, device=device, requires_grad=True)
    y = torch.nn.functional.scaled_dot_product_attention(layer(x)[None], x[None], x[None])
    conv = torch.nn.Conv2d(3, 8, 4, stride=4).to(device)
    (y.sum() + conv(torch.randn(2, 3, 16, 16, device=device)).sum()).backward()


def die_with_parent() -> bool:
    """Linux: have the kernel stop this worker if the parent dies (killed, not just Ctrl-C).

    Returns False if the parent is already gone: it died before the guard was armed (the
    guard only covers deaths after it), so the worker must not start its job.
    """
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    parent = os.environ.get(PARENT_ENV)
    return not (parent and parent.isdigit() and os.getppid() != int(parent))


def main(argv: list[str]) -> int:
    job_path, result_path = argv
    if not die_with_parent():
        return 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Heavy imports only now that the guard holds.
    from dataclasses import asdict

    import torch

    from vattn_cli.measure.flops import FlopCount
    from vattn_cli.measure.memory import cap_address_space, cap_cuda
    from vattn_cli.measure.run import run_setting
    from vattn_cli.measure.setting import RunOptions, Setting

    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    options = RunOptions(**job["options"])
    if options.threads:  # before the runtime warms up, so its pools have this size
        torch.set_num_threads(int(options.threads))
    import_scheme_modules(job.get("scheme_modules", []))
    setting = Setting.from_dict(job["setting"])
    device = torch.device(setting.device)
    warm_runtime(device)
    if job.get("max_memory"):
        if device.type == "cuda":
            cap_cuda(device, int(job["max_memory"]))
        else:
            cap_address_space(int(job["max_memory"]))
    counted: list[FlopCount] = []
    flops = FlopCount(**job["flops"]) if job.get("flops") else None
    row = run_setting(setting, job["measures"], options, flops=flops, on_flops=counted.append)
    result = {"row": row, "flops": asdict(counted[0]) if counted and flops is None else None}
    tmp = f"{result_path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    os.replace(tmp, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
