"""The scheme contract at the class level, checked where the zoo accepts or builds a scheme.

Two cheap levels (the full suite, ``vattn zoo --check``, is :mod:`vattn_cli.measure.conformance`,
which sits above the FLOP counter it uses):

* :func:`interface_problems` reads the class only (base class, class attributes, constructor
  signature). The registry runs it before accepting an external scheme, so a class that cannot
  work is refused with one line naming it.
* :func:`probe_first_forward` runs the first block once, batch 1, when ``create_model``
  builds a model of an external scheme, so a wrong output shape or a crash in ``forward`` is
  reported as the scheme's fault in one line instead of a traceback from a later block.
  Built-in schemes skip it, and the forward pass is never wrapped, so normal runs pay nothing.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from vattn_cli.errors import UsageError
from vattn_cli.zoo.scheme import STANDARD_ARGS, BlockArgs, Grid, PreNormBlock, SchemeBlock, build_block, takes_block_args

CLS_MODES = ("shared", "per_frame", "none")


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(obj: object) -> str:
    if isinstance(obj, type):
        return obj.__qualname__
    name = getattr(obj, "__name__", None)
    return f"{name!r} (a {type(obj).__name__})" if name else f"a {type(obj).__name__}"


def layout_tokens(grid: Grid, cls_token: str) -> int:
    """Length of the token sequence a block receives for ``grid`` in the ``cls_token`` layout."""
    return grid.patches + {"shared": 1, "per_frame": grid.t, "none": 0}[cls_token]


# -- level 1: the class ------------------------------------------------------------------------

def _signature_problems(cls: type) -> list[str]:
    """The constructor, either interface: ``(args, **options)`` or ``(dim, num_heads, <standard>, **options)``."""
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop self
    except (TypeError, ValueError):  # a C-implemented __init__: nothing to read
        return []
    kinds = inspect.Parameter
    variadic = (kinds.VAR_KEYWORD, kinds.VAR_POSITIONAL)
    problems = []
    if takes_block_args(cls):
        own = [p for p in params[1:] if p.kind not in variadic]
    else:
        var_kw = any(p.kind is kinds.VAR_KEYWORD for p in params)
        var_pos = any(p.kind is kinds.VAR_POSITIONAL for p in params)
        positional = [p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
        if len(positional) < 2 and not var_pos:
            problems.append("__init__ must take args (a BlockArgs) first, or dim and num_heads as its first "
                            "two positional arguments")
        named = {p.name for p in params if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)}
        missing = [a for a in STANDARD_ARGS[2:] if a not in named]
        if missing and not var_kw:
            problems.append(f"__init__ does not accept the standard block argument(s) {', '.join(missing)}")
        own = [p for p in params if p not in positional[:2] and p.kind not in variadic]
    required = [p.name for p in own if p.default is kinds.empty]
    if required:
        problems.append(
            f"__init__ argument(s) {', '.join(required)} have no default "
            "(a scheme's own options need defaults, so every command can build it)"
        )
    return problems


def interface_problems(obj: object) -> list[str]:
    """What is wrong with ``obj`` as a scheme class, read from the class alone (nothing is called)."""
    if not (isinstance(obj, type) and issubclass(obj, SchemeBlock)):
        return [f"{_describe(obj)} is not a SchemeBlock subclass (see docs/adding-a-scheme.md)"]
    problems = []
    if obj.cls_token not in CLS_MODES:
        problems.append(f"cls_token is {obj.cls_token!r}; accepted: {', '.join(CLS_MODES)}")
    if not isinstance(obj.uses_time_embed, bool):
        problems.append(f"uses_time_embed is {obj.uses_time_embed!r}; expected True or False")
    if not isinstance(obj.description, str):
        problems.append("description must be a string")
    handles = getattr(obj, "flop_handles", {})
    if not (isinstance(handles, dict) and all(isinstance(k, str) and callable(v) for k, v in handles.items())):
        problems.append("flop_handles must be a dict of op name -> callable fvcore handle")
    if obj.forward is SchemeBlock.forward or (
        issubclass(obj, PreNormBlock) and obj.forward is PreNormBlock.forward and obj.attend is PreNormBlock.attend
    ):
        problems.append("it implements neither forward(x, grid) nor attend(x, grid)")
    return problems + _signature_problems(obj)


# -- level 2: one block, once, when a model of an external scheme is built ---------------------

def _output_problem(x: Tensor, out: object) -> str | None:
    if not isinstance(out, Tensor):
        return f"returned a {type(out).__name__}, expected a Tensor"
    if tuple(out.shape) != tuple(x.shape):
        return f"returned shape {tuple(out.shape)}, expected the input's shape {tuple(x.shape)}"
    if out.dtype != x.dtype:
        return f"returned dtype {out.dtype}, expected the input's {x.dtype}"
    if out.device != x.device:
        return f"returned a tensor on {out.device}, expected the input's device {x.device}"
    return None


def _fresh_block(entry: Any, config: Any, args: BlockArgs) -> nn.Module:
    return build_block(entry.cls, args, config.scheme_options)


def probe_first_forward(entry: Any, model: nn.Module) -> None:
    """Run ``model``'s first block once at its grid, batch 1; a one-line usage error if it breaks.

    Costs a fraction of one forward pass, once per model build, for external schemes only. A
    model built on the ``meta`` device (``vattn zoo`` counts parameters that way) is probed
    with one fresh CPU block: meta kernels load slowly the first time and cannot run every op.
    """
    config = model.config
    side = config.img_size // config.patch
    grid = Grid(config.frames, side, side)
    where = f"scheme {entry.name!r} ({entry.source})"
    block = model.blocks[0]
    param = next(block.parameters(), None)
    try:
        if param is not None and param.is_meta:
            with torch.device("cpu"):
                block = _fresh_block(entry, config, model.blocks[0].args)
            param = next(block.parameters(), None)
        device, dtype = (param.device, param.dtype) if param is not None else (torch.device("cpu"), torch.float32)
        x = torch.zeros(1, layout_tokens(grid, entry.cls.cls_token), config.dim, device=device, dtype=dtype)
        was_training = block.training
        block.eval()
        try:
            with torch.no_grad():
                out = block(x, grid)
        finally:
            block.train(was_training)
    except Exception as exc:
        raise UsageError(f"{where}: forward(x, grid) failed on a {grid.t}x{grid.h}x{grid.w} grid: {_one_line(exc)}") from None
    problem = _output_problem(x, out)
    if problem:
        raise UsageError(f"{where}: forward(x, grid) {problem} (grid {grid.t}x{grid.h}x{grid.w}, cls_token={entry.cls.cls_token!r})")
