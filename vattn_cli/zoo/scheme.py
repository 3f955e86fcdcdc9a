"""The interface every attention scheme implements: one transformer block on a token grid.

A scheme is a ``SchemeBlock`` subclass: it owns the whole block (norms, attention, MLP),
because the schemes differ in more than the attention call (divided adds a temporal residual
branch with its own norm; axial stacks three attentions). It receives the tokens and the
patch grid and returns tokens of the same shape.

Token layouts, chosen by the class attribute ``cls_token``:

* ``"shared"``: ``[B, 1 + T*H*W, D]``, one CLS token first, then patches in ``(t, h, w)``
  order (frame-major, row-major inside a frame).
* ``"per_frame"``: ``[B, T*(1 + H*W), D]``, each frame's CLS token followed by its patches.
  The backbone averages the frames' tokens before the head (TimeSformer's space-only model).
* ``"none"``: ``[B, T*H*W, D]``, no CLS token; the backbone mean-pools before the head.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal, NamedTuple

from torch import Tensor, nn

from vattn_cli.zoo.layers import Attention, DropPath, Mlp

ClsMode = Literal["shared", "per_frame", "none"]


class Grid(NamedTuple):
    """Patch-grid shape of a clip: frames, rows, columns."""

    t: int
    h: int
    w: int

    @property
    def patches(self) -> int:
        return self.t * self.h * self.w


class SchemeBlock(nn.Module):
    """Base class of a scheme: one block mapping ``(x, grid) -> x`` with ``x.shape`` kept.

    Subclasses take the standard block arguments below plus their own keyword options, and
    set the class attributes:

    * ``cls_token``: the token layout (see the module docstring).
    * ``uses_time_embed``: whether the backbone adds a temporal position embedding.
    * ``description``: one line for ``vattn zoo``.
    * ``flop_handles`` (optional): ``{"namespace::op": handle}`` fvcore op handles for custom
      ops the scheme calls (``handle(inputs, outputs) -> flops``), so FLOP counts include them.

    The contract is checked by :mod:`vattn_cli.zoo.conformance` (``vattn zoo --check``);
    ``docs/adding-a-scheme.md`` is the guide.
    """

    cls_token: ClassVar[ClsMode] = "shared"
    uses_time_embed: ClassVar[bool] = True
    description: ClassVar[str] = ""
    flop_handles: ClassVar[dict[str, Callable[..., Any]]] = {}

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads

    def forward(self, x: Tensor, grid: Grid) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class PreNormBlock(SchemeBlock):
    """A standard pre-norm block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``.

    Subclasses implement :meth:`attend`, which sees the normalised tokens and the grid.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias, norm_eps, drop, attn_drop, drop_path)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path)

    def attend(self, x: Tensor, grid: Grid) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        x = x + self.drop_path(self.attend(self.norm1(x), grid))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SoftmaxBlock(PreNormBlock):
    """A pre-norm block whose mixing is one multi-head softmax :class:`Attention` ``attn``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias, norm_eps, drop, attn_drop, drop_path)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
