"""The interface every attention scheme implements: one transformer block on a token grid.

A scheme is a ``SchemeBlock`` subclass: it owns the whole block (norms, attention, MLP),
because the schemes differ in more than the attention call (divided adds a temporal residual
branch with its own norm; axial stacks three attentions). It receives the tokens and the
patch grid and returns tokens of the same shape.

The backbone hands every block the same standard arguments as one :class:`BlockArgs`; a scheme's
constructor takes ``args`` and its own keyword options only, so the registry reads the options
off the signature and nothing repeats the standard list::

    @register_scheme("mine")
    class Mine(SoftmaxBlock):
        def __init__(self, args: BlockArgs, window: int = 3) -> None:
            super().__init__(args)
            ...

Schemes written against the first interface (``__init__(self, dim, num_heads, mlp_ratio=...,
..., drop_path=...)`` or ``__init__(self, dim, num_heads, **block_args)``) keep working:
:func:`build_block` calls them the old way and :class:`SchemeBlock` accepts the old arguments.

Token layouts, chosen by the class attribute ``cls_token``:

* ``"shared"``: ``[B, 1 + T*H*W, D]``, one CLS token first, then patches in ``(t, h, w)``
  order (frame-major, row-major inside a frame).
* ``"per_frame"``: ``[B, T*(1 + H*W), D]``, each frame's CLS token followed by its patches.
  The backbone averages the frames' tokens before the head (TimeSformer's space-only model).
* ``"none"``: ``[B, T*H*W, D]``, no CLS token; the backbone mean-pools before the head.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple

from torch import Tensor, nn

from vattn_cli.zoo.layers import Attention, DropPath, Mlp

if TYPE_CHECKING:  # steps.py imports Grid from here
    from vattn_cli.zoo.steps import AttentionStep

ClsMode = Literal["shared", "per_frame", "none"]


class Grid(NamedTuple):
    """Patch-grid shape of a clip: frames, rows, columns."""

    t: int
    h: int
    w: int

    @property
    def patches(self) -> int:
        return self.t * self.h * self.w


@dataclass(frozen=True)
class BlockArgs:
    """The standard arguments of every block: the backbone's width, heads and regularisation,
    and where the block sits.

    Frozen; each block gets its own copy (via :meth:`replace`) because ``drop_path`` grows with
    depth (stochastic depth's linear rule) and ``index`` counts the blocks. ``index`` and
    ``depth`` let a scheme alternate between blocks (Swin's shifted windows on every other
    block). There is deliberately no grid here: a block learns the clip's grid in ``forward``,
    and its parameter shapes must not depend on the setting, so one checkpoint loads and runs
    at every frame count and resolution (size a table by an option and resize it on the fly).
    """

    dim: int
    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    drop: float = 0.0
    attn_drop: float = 0.0
    drop_path: float = 0.0
    index: int = 0
    depth: int = 1
    mlp_act: str = "gelu"  # the MLP's GELU variant (layers.MLP_ACTS); after the first interface's eight

    @classmethod
    def coerce(cls, args: Any, *more: Any, **named: Any) -> BlockArgs:
        """``args`` itself, or a ``BlockArgs`` from the first interface's ``(dim, num_heads, ...)``."""
        if isinstance(args, BlockArgs):
            if more or named:
                raise TypeError("pass either a BlockArgs or the separate standard arguments, not both")
            return args
        return cls(args, *more, **named)

    def replace(self, **changes: Any) -> BlockArgs:
        return dataclasses.replace(self, **changes)


#: The standard arguments of the first interface, in its positional order (``index`` and
#: ``depth`` came with the second and are not passed to first-interface schemes).
STANDARD_ARGS: tuple[str, ...] = tuple(f.name for f in fields(BlockArgs))[:8]


def takes_block_args(cls: type) -> bool:
    """Whether ``cls.__init__`` is the second interface: its first argument is ``args``."""
    try:
        params = list(inspect.signature(cls.__init__).parameters)
    except (TypeError, ValueError):
        return False
    return params[1:2] == ["args"]


def build_block(cls: type, args: BlockArgs, options: Mapping[str, Any]) -> nn.Module:
    """One block of scheme ``cls``: ``cls(args, **options)``, or the first interface's call."""
    if takes_block_args(cls):
        return cls(args, **options)
    rest = {k: getattr(args, k) for k in STANDARD_ARGS[2:]}
    block = cls(args.dim, args.num_heads, **rest, **options)
    if isinstance(block, SchemeBlock):  # it built itself from the eight; it sits where args says
        block.args = args
    return block


def own_options(cls: type) -> dict[str, Any]:
    """A scheme's own keyword options and their defaults (``None`` where it has none)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    skip = {"args"} if takes_block_args(cls) else set(STANDARD_ARGS)
    return {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in params
        if p.name not in skip and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


class SideBranch:
    """A residual side branch of a block: its own norm, attention and zero-initialised projection.

    Divided's temporal step, axial's time and width steps and local_global's local step are this
    branch, each with its own way of choosing who attends to whom (the ``attend`` callable).
    The three modules are registered on the block itself as ``<prefix>_norm1``,
    ``<prefix>_attn`` and ``<prefix>_fc`` (the official TimeSformer names), not inside a
    sub-module, so official, Hugging Face and vattn checkpoints keep their keys; this object
    only groups them, and :meth:`SchemeBlock.reset_parameters` zeroes each branch's ``fc`` so a
    fresh block starts as the image model's block.
    """

    def __init__(self, block: nn.Module, prefix: str, args: BlockArgs) -> None:
        self.prefix = prefix
        block.add_module(f"{prefix}_norm1", nn.LayerNorm(args.dim, eps=args.norm_eps))
        block.add_module(f"{prefix}_attn", Attention(args.dim, args.num_heads, args.qkv_bias, args.attn_drop, args.drop))
        block.add_module(f"{prefix}_fc", nn.Linear(args.dim, args.dim))
        self._block = block

    @property
    def norm(self) -> nn.LayerNorm:
        return getattr(self._block, f"{self.prefix}_norm1")

    @property
    def attn(self) -> Attention:
        return getattr(self._block, f"{self.prefix}_attn")

    @property
    def fc(self) -> nn.Linear:
        return getattr(self._block, f"{self.prefix}_fc")

    def __call__(self, x: Tensor, attend: Callable[[Attention, Tensor], Tensor]) -> Tensor:
        """The branch's residual ``fc(attend(attn, norm(x)))``, in ``x``'s layout.

        ``attend`` folds the tokens for the branch's attention and applies stochastic depth
        where the scheme's reference does (divided: per temporal line, as the official code).
        """
        return self.fc(attend(self.attn, self.norm(x)))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)


class SchemeBlock(nn.Module):
    """Base class of a scheme: one block mapping ``(x, grid) -> x`` with ``x.shape`` kept.

    Subclasses take ``args: BlockArgs`` plus their own keyword options (each with a default),
    and set the class attributes:

    * ``cls_token``: the token layout (see the module docstring).
    * ``uses_time_embed``: whether the backbone adds a temporal position embedding.
    * ``cls_optional`` (optional, default ``False``): a ``shared`` scheme whose block runs unchanged
      without the CLS token, so the backbone's ``pool="mean"`` (VideoMAE, no CLS) may drop it.
    * ``description``: one line for ``vattn zoo``.
    * :meth:`build_second_stage` (optional): a second encoder between the blocks and pooling.
    * ``flop_handles`` (optional): ``{"namespace::op": handle}`` fvcore op handles for custom
      ops the scheme calls (``handle(inputs, outputs) -> flops``), so FLOP counts include them.
    * :meth:`attention_steps` (optional): the block's attention steps, who attends to whom in
      each (:class:`~vattn_cli.zoo.steps.AttentionStep`), for ``vattn zoo --show`` and the step
      checks of ``vattn zoo --check``.

    The contract is checked by :mod:`vattn_cli.measure.conformance` (``vattn zoo --check``);
    ``docs/adding-a-scheme.md`` is the guide.
    """

    cls_token: ClassVar[ClsMode] = "shared"
    uses_time_embed: ClassVar[bool] = True
    cls_optional: ClassVar[bool] = False
    description: ClassVar[str] = ""
    flop_handles: ClassVar[dict[str, Callable[..., Any]]] = {}

    def __init__(self, args: BlockArgs | int, *legacy: Any, **legacy_named: Any) -> None:
        super().__init__()
        self.args = BlockArgs.coerce(args, *legacy, **legacy_named)
        self.dim = self.args.dim
        self.num_heads = self.args.num_heads
        self.branches: list[SideBranch] = []

    def add_branch(self, prefix: str) -> SideBranch:
        """A new :class:`SideBranch` on this block (modules ``<prefix>_norm1/_attn/_fc``)."""
        branch = SideBranch(self, prefix, self.args)
        self.branches.append(branch)
        return branch

    def reset_parameters(self) -> None:
        """Called by the backbone after its ViT initialisation: the block's own initial state.

        The default zeroes every side branch's projection (TimeSformer's zero ``temporal_fc``)
        and calls ``reset_temporal``, the first interface's name for this hook.
        """
        for branch in self.branches:
            branch.reset_parameters()
        self.reset_temporal()

    def reset_temporal(self) -> None:
        """The first interface's initialisation hook; override :meth:`reset_parameters` instead."""

    def attention_steps(self) -> Sequence[AttentionStep]:
        """The block's attention steps in order, each with the keys a query patch attends to.

        For ``vattn zoo --show`` (one panel per step) and the step checks (``vattn zoo --check``,
        :func:`vattn_cli.measure.reach.check_steps`), which test every declaration against the
        code. A method, not a class attribute, because patterns may depend on the block's options
        and index (Swin's shifted windows). The default declares none: ``--show`` then draws only
        the whole-block panel, measured from the code. See :mod:`vattn_cli.zoo.steps`.
        """
        return ()

    @classmethod
    def build_second_stage(cls, args: BlockArgs, grid: Grid, options: Mapping[str, Any]) -> nn.Module | None:
        """A second encoder the backbone runs after the last block and before pooling, or ``None``.

        For a scheme that is a stack of stages with different token sets (ViViT's factorised
        encoder: a spatial encoder per time index, then a temporal encoder over the time
        indices' CLS tokens). The default is ``None``: the blocks' tokens are pooled directly.

        Called once per model, with the model's standard arguments (``args.drop_path`` is the
        model's largest stochastic-depth rate, for the stage to spread over its own blocks),
        the grid the model was built for (to size position tables, which the stage must resize
        on the fly for other clips, and on load for checkpoints of another setting), and the
        scheme's options (the ones the blocks get). The module's ``forward(x, grid)`` takes the
        last block's tokens in the scheme's ``cls_token`` layout and returns ``[B, 1 + n, D]``
        in the ``shared`` layout (its own CLS token first): the backbone pools that as a
        ``shared`` scheme's tokens (final ``norm``, the CLS token, the head). It may define
        ``reset_parameters()``, called after the backbone's initialisation as blocks' are.
        FLOP counts include it (counted once; only ``blocks`` are scaled by the depth), so its
        size must come from ``options``, never from ``args.depth``.
        """
        return None

    def forward(self, x: Tensor, grid: Grid) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class PreNormBlock(SchemeBlock):
    """A standard pre-norm block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``.

    Subclasses implement :meth:`attend`, which sees the normalised tokens and the grid.
    """

    def __init__(self, args: BlockArgs | int, *legacy: Any, **legacy_named: Any) -> None:
        super().__init__(args, *legacy, **legacy_named)
        a = self.args
        self.norm1 = nn.LayerNorm(a.dim, eps=a.norm_eps)
        self.norm2 = nn.LayerNorm(a.dim, eps=a.norm_eps)
        self.mlp = Mlp(a.dim, int(a.dim * a.mlp_ratio), drop=a.drop, act=a.mlp_act)
        self.drop_path = DropPath(a.drop_path)

    def attend(self, x: Tensor, grid: Grid) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        x = x + self.drop_path(self.attend(self.norm1(x), grid))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SoftmaxBlock(PreNormBlock):
    """A pre-norm block whose mixing is one multi-head softmax :class:`Attention` ``attn``."""

    def __init__(self, args: BlockArgs | int, *legacy: Any, **legacy_named: Any) -> None:
        super().__init__(args, *legacy, **legacy_named)
        a = self.args
        self.attn = Attention(a.dim, a.num_heads, qkv_bias=a.qkv_bias, attn_drop=a.attn_drop, proj_drop=a.drop)
