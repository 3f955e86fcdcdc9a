"""The conformance suite: what ``vattn zoo --check`` and ``vattn_cli.testing.check_scheme`` run.

After the class-level check (:func:`vattn_cli.zoo.conformance.interface_problems`): build,
forward and backward, dtype, eval-mode determinism, batch independence, other frame counts and
sizes, and FLOPs with no uncounted op that carries work. Small width and depth keep it to about
a second per scheme.
"""

from __future__ import annotations

import contextlib
import copy
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from vattn_cli.measure.flops import count_flops
from vattn_cli.zoo import external, registry
from vattn_cli.zoo.conformance import _one_line, _output_problem, interface_problems, layout_tokens
from vattn_cli.zoo.scheme import Grid

CHECKS = ("interface", "build", "forward", "backward", "dtype", "deterministic", "batch", "resize", "flops")
#: Run only for a scheme that declares attention steps (:meth:`SchemeBlock.attention_steps`).
STEP_CHECK = "steps"

# -- FLOPs ------------------------------------------------------------------------------------

# aten ops that multiply-add (fvcore's convention counts only these); everything else in aten is
# elementwise, a reduction (norms included) or data movement, which the convention leaves out.
_WORK_OP = re.compile(
    r"^aten::_?(.*mm|.*matmul.*|mv|addmv|dot|vdot|outer|ger|einsum|tensordot|kron|bilinear|linear"
    r"|.*conv.*|.*attention.*|cdist|linalg_(?!.*norm).*|fft_.*)$"
)


def carries_work(op: str) -> bool:
    """Whether an op the counter could not count hides multiply-adds (custom ops are assumed to)."""
    return not op.startswith("aten::") or bool(_WORK_OP.match(op))


def uncounted_work_ops(module: nn.Module, inputs: tuple[Any, ...]) -> tuple[int, dict[str, int]]:
    """FLOPs of ``module(*inputs)`` by the shared counter (what ``vattn profile`` reports, the
    scheme's ``flop_handles`` included) and the ops carrying work that no handle counted."""
    count = count_flops(module, inputs)
    return count.total, {op: n for op, n in count.unsupported.items() if carries_work(op)}


class _AtGrid(nn.Module):
    """A block with its grid fixed, so a tracer sees a function of tensors only."""

    def __init__(self, block: nn.Module, grid: Grid) -> None:
        super().__init__()
        self.block, self.grid = block, grid

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x, self.grid)


# -- level 3: the suite -----------------------------------------------------------------------

@dataclass
class CheckResult:
    scheme: str
    check: str
    status: str  # pass, fail, skip
    detail: str = ""
    seconds: float = 0.0


class _Failed(Exception):
    """A check's own verdict (as opposed to an exception raised by the scheme)."""


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise _Failed(message)


@contextlib.contextmanager
def _registered(obj: object) -> Iterator[str]:
    """A registry name for a scheme class or instance, registering it for the duration if needed."""
    cls = obj if isinstance(obj, type) else type(obj)
    for name in registry.list_schemes():
        entry = registry._SCHEMES.get(name)
        if entry is not None and entry.cls is cls:
            yield name
            return
    name = f"{cls.__module__}:{cls.__qualname__}"
    registry.register_scheme(name, source=f"python:{cls.__module__}")(cls)
    try:
        yield name
    finally:
        registry.unregister_scheme(name)


def _resolve(scheme: str | type | nn.Module) -> tuple[str, object]:
    """``(label, object)`` for a scheme named or given; a usage error if it cannot be found."""
    if not isinstance(scheme, str):
        obj = type(scheme) if isinstance(scheme, nn.Module) else scheme
        return getattr(obj, "__qualname__", repr(obj)), obj
    registry.list_schemes()  # discovery
    if scheme in registry._SCHEMES:
        return scheme, registry._SCHEMES[scheme].cls
    if external.is_import_path(scheme):
        return scheme, external.import_object(scheme)
    return scheme, registry.scheme_entry(scheme).cls  # entry points: loaded and checked here


#: The setting the suite builds at unless told otherwise: a 4x7x7 grid, small and quick.
CHECK_FRAMES, CHECK_IMG_SIZE = 4, 112


@dataclass
class _Setting:
    frames: int = CHECK_FRAMES
    img_size: int = CHECK_IMG_SIZE
    patch: int = 16
    device: str = "cpu"
    seed: int = 0

    def grid(self) -> Grid:
        side = self.img_size // self.patch
        return Grid(self.frames, side, side)

    def resized(self) -> list[tuple[int, int]]:
        """Other (frames, img_size) settings than the model was built at: fewer frames, larger frames.

        Larger rather than smaller frames, so a windowed scheme whose window divides the
        built grid still fits.
        """
        return [(self.frames // 2 if self.frames > 1 else 2, self.img_size), (self.frames, 2 * self.img_size)]


def _suite(name: str, cls: type, s: _Setting) -> Iterator[tuple[str, Callable[[], str]]]:
    """The checks after ``interface``, in order, as ``(check, run)``; ``run`` returns a detail."""
    torch.manual_seed(s.seed)
    device = torch.device(s.device)
    state: dict[str, Any] = {}
    grid = s.grid()
    n = layout_tokens(grid, cls.cls_token)
    tag = f"{grid.t}x{grid.h}x{grid.w}"

    def build() -> str:
        # Dropout everywhere, so 'deterministic' proves that eval mode turns it off.
        model = registry.create_model(
            name, size="tiny", depth=2, frames=s.frames, img_size=s.img_size, patch=s.patch, num_classes=5,
            drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.1,
        ).to(device)
        state["model"], state["block"] = model, model.blocks[-1]
        state["x"] = torch.randn(2, n, model.config.dim, device=device)
        return f"tiny width, depth 2, {s.frames}x{s.img_size} patch {s.patch}"

    def forward() -> str:
        block, x = state["block"].train(), state["x"]
        problem = _output_problem(x, block(x, grid))
        _expect(problem is None, f"forward(x, grid) {problem} on {tag}")
        video = torch.randn(2, 3, s.frames, s.img_size, s.img_size, device=device)
        logits = state["model"].train()(video)
        _expect(logits.shape == (2, 5) and bool(torch.isfinite(logits).all()), f"model logits {tuple(logits.shape)} not finite (2, 5)")
        return f"x {tuple(x.shape)} on a {tag} grid, cls_token={cls.cls_token!r}"

    def backward() -> str:
        block = state["block"].train()
        block.zero_grad(set_to_none=True)
        x = state["x"].clone().requires_grad_(True)
        out = block(x, grid)
        (out * torch.randn_like(out)).sum().backward()
        _expect(x.grad is not None and bool(torch.isfinite(x.grad).all()) and bool(x.grad.abs().sum() > 0),
                "no finite, non-zero gradient reaches the input tokens")
        unused = [k for k, p in block.named_parameters() if p.requires_grad and p.grad is None]
        _expect(not unused, f"parameters get no gradient (unused in forward; breaks DDP): {', '.join(unused[:4])}")
        bad = [k for k, p in block.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        _expect(not bad, f"non-finite gradients in {', '.join(bad[:4])}")
        return f"gradients reach the input and all {sum(1 for _ in block.parameters())} parameter tensors"

    def dtype() -> str:
        block = copy.deepcopy(state["block"]).to(torch.bfloat16).eval()
        x = state["x"].to(torch.bfloat16)
        with torch.no_grad():
            problem = _output_problem(x, block(x, grid))
        _expect(problem is None, f"in bfloat16, forward(x, grid) {problem}")
        return "bfloat16 in, bfloat16 out"

    def deterministic() -> str:
        block, x = state["block"].eval(), state["x"]
        with torch.no_grad():
            first, second = block(x, grid), block(x, grid)
        _expect(torch.allclose(first, second, rtol=1e-5, atol=1e-6),
                f"two eval-mode forwards differ by {float((first - second).abs().max()):.3g} (dropout left on in eval?)")
        return "two eval forwards agree (dropout 0.1 set)"

    def batch() -> str:
        block, x = state["block"].eval(), state["x"]
        with torch.no_grad():
            together, alone = block(x, grid)[1], block(x[1:2], grid)[0]
        diff = float((together - alone).abs().max())
        _expect(torch.allclose(together, alone, rtol=1e-4, atol=1e-4),
                f"a clip's output depends on the other clips of the batch (max diff {diff:.3g}); check the rearranges")
        return f"clip alone == clip in a batch of 2 (max diff {diff:.1e})"

    def resize() -> str:
        model = state["model"].eval()
        for frames, size in s.resized():
            with torch.no_grad():
                logits = model(torch.randn(1, 3, frames, size, size, device=device))
            _expect(logits.shape == (1, 5) and bool(torch.isfinite(logits).all()),
                    f"at {frames}x{size} the model gave logits {tuple(logits.shape)} or non-finite values")
        return "built at {}x{}, ran at {}".format(s.frames, s.img_size, ", ".join(f"{f}x{z}" for f, z in s.resized()))

    def flops() -> str:
        block = state["block"].eval()
        total, missing = uncounted_work_ops(_AtGrid(block, grid), (state["x"][:1],))
        stage = getattr(state["model"], "second_stage", None)
        if stage is not None:  # a second encoder (SchemeBlock.build_second_stage) is counted too
            stage_total, stage_missing = uncounted_work_ops(_AtGrid(stage.eval(), grid), (state["x"][:1],))
            missing = {**missing, **stage_missing}
        _expect(not missing, "ops carry work but have no FLOP handle: "
                + ", ".join(f"{op} x{k}" for op, k in missing.items()) + " (give the scheme flop_handles)")
        also = f", second stage {stage_total / 1e6:.1f} MFLOPs" if stage is not None else ""
        return (f"{total / 1e6:.1f} MFLOPs per block on {tag} ({total} multiply-adds, counted as vattn profile "
                f"counts){also}, no uncounted op")

    def steps() -> str:
        from vattn_cli.measure.reach import Layout, check_steps

        results = check_steps(state["block"], Layout(grid, cls.cls_token), seed=s.seed, max_keys=8)
        failed = [r for r in results if not r.passed]
        _expect(not failed, "; ".join(f"step {r.step!r} at query {r.query}: {r.detail}" for r in failed[:2]))
        names = list(dict.fromkeys(r.step for r in results))
        return (f"{len(names)} declared step(s) ({', '.join(names)}) attend exactly to their keys at "
                f"{len({r.query for r in results})} queries on {tag}")

    yield from (("build", build), ("forward", forward), ("backward", backward), ("dtype", dtype),
                ("deterministic", deterministic), ("batch", batch), ("resize", resize), ("flops", flops))
    if "block" in state and _declares_steps(state["block"]):  # declared: checked against the code
        yield STEP_CHECK, steps


def _declares_steps(block: nn.Module) -> bool:
    """Whether a block declares attention steps; one whose ``attention_steps()`` raises does (its
    step check then fails with the error)."""
    try:
        return bool(block.attention_steps())
    except Exception:
        return True


@contextlib.contextmanager
def _one_thread(device: str) -> Iterator[None]:
    """Tiny tensors gain nothing from threads, and on a busy machine OpenMP's spinning makes
    them many times slower: run the checks on one CPU thread, then restore the setting."""
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_checks(
    scheme: str | type | nn.Module,
    *,
    frames: int = CHECK_FRAMES,
    img_size: int = CHECK_IMG_SIZE,
    patch: int = 16,
    device: str = "cpu",
    seed: int = 0,
) -> list[CheckResult]:
    """Run the conformance suite on a scheme name, import path, class or block instance.

    Raises a usage error only if the scheme cannot be found; every problem of the scheme itself
    is a failed check. A check that cannot run because an earlier one failed is ``skip``.
    """
    registry.validate_setting("divided", "tiny", frames, img_size, patch)
    with _one_thread(str(device)):
        return _run_checks(scheme, _Setting(frames, img_size, patch, str(device), seed))


def _run_checks(scheme: str | type | nn.Module, setting: _Setting) -> list[CheckResult]:
    label, obj = _resolve(scheme)
    results: list[CheckResult] = []
    problems = interface_problems(obj)
    results.append(CheckResult(label, "interface", "fail" if problems else "pass",
                               "; ".join(problems) or "SchemeBlock subclass, attributes and __init__ as documented"))
    if problems:
        results += [CheckResult(label, c, "skip", "interface failed") for c in CHECKS[1:]]
        return results
    with _registered(obj) if not isinstance(scheme, str) else contextlib.nullcontext(registry.scheme_entry(scheme).name) as name:
        broken = None
        for check, run in _suite(name, obj, setting):
            if broken:
                results.append(CheckResult(label, check, "skip", f"{broken} failed"))
                continue
            start = time.perf_counter()
            try:
                status, detail = "pass", run()
            except _Failed as verdict:
                status, detail = "fail", str(verdict)
            except Exception as exc:  # the scheme raised: its message, on one line
                status, detail = "fail", _one_line(exc)
            results.append(CheckResult(label, check, status, detail, time.perf_counter() - start))
            if status == "fail" and check in ("build", "forward"):
                broken = check
    return results


def checks_frame(results: list[CheckResult]) -> pd.DataFrame:
    """The results as a table (one row per scheme and check)."""
    return pd.DataFrame([asdict(r) for r in results], columns=list(CheckResult.__dataclass_fields__))


def failures(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if r.status == "fail"]
