"""Option parsing shared by the schemes that convolve the token grid as a 3D volume (rsa, structsa).

Their window and stride options take an int or a ``(t, h, w)`` triple; a bad value is a usage
error naming it, whether it came from Python or the command line.

Both also train faster on small grids through :func:`window_matrix`: on CPU, the backward pass
of a convolution with one input channel per group over a grid of a few tokens a side (the
built-in tasks' 4 x 4 grids) is several times slower than its forward, while the same sums as
a product with a token x token matrix are an ordinary GEMM both ways. A convolution with many
kernels per channel (rsa's key convolution) would need too many such matrices; it trains
through :func:`frames_conv`, which takes the matrices over each frame's few tokens only and
shifts along time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from vattn_cli.errors import UsageError

#: Grids of at most this many tokens train through :func:`window_matrix` (each matrix holds at
#: most this squared numbers per kernel), and trajectory's step 1 through one score matrix;
#: larger ones, and every forward without autograd and every trace (FLOP counting), convolve
#: (trajectory: its chunked kernel calls).
MATRIX_TOKENS = 256

#: :func:`frames_conv` is taken only while its matrices hold at most this many numbers (64 MB in
#: float32): the tiny model on 4 x 4 grids needs 1.3 M, a base model on 7 x 7 grids would need 49 M.
FRAMES_MATRIX_NUMBERS = 2**24


def use_matrix(grid: tuple[int, int, int]) -> bool:
    """Whether a training forward on ``grid`` takes the matrix form of its window convolutions."""
    # never while traced: fvcore counts the convolution, the operator these schemes define
    return torch.is_grad_enabled() and not torch.jit.is_tracing() and grid[0] * grid[1] * grid[2] <= MATRIX_TOKENS


def window_index(window: Sequence[int], grid: Sequence[int]) -> Tensor:
    """``[source, target]`` flat offsets into ``window`` between the grid's tokens.

    Entry ``[q, n]`` is the index (row-major over ``window``) of the kernel weight a stride-1,
    zero-padded (``window // 2``) cross-correlation gives token ``q`` in output ``n``, and
    ``prod(window)`` (one past the last weight) where ``q`` lies outside ``n``'s window.
    """
    size = torch.tensor(window).reshape(-1, 1, 1)
    pos = torch.stack(torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij")).reshape(len(grid), -1)
    offset = pos[:, :, None] - pos[:, None, :] + size // 2
    inside = ((offset >= 0) & (offset < size)).all(0)
    flat = torch.zeros_like(offset[0])
    for axis, extent in enumerate(window):
        flat = flat * extent + offset[axis]
    return torch.where(inside, flat, math.prod(window))


def window_matrix(weight: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """``[R, *window]`` kernels as ``[R, source, target]`` matrices over the ``t x h x w`` grid.

    Entry ``[r, q, n]`` is the weight kernel ``r`` gives token ``q`` in output ``n``
    (:func:`window_index`), zero outside the window, so ``x @ matrix[r]`` equals ``conv3d`` of
    ``x`` (tokens in ``t, h, w`` order) with kernel ``r``.
    """
    table = torch.cat([weight.reshape(weight.shape[0], -1), weight.new_zeros(weight.shape[0], 1)], 1)
    return table[:, window_index(weight.shape[1:], grid).to(weight.device)]


def frames_conv_fits(weight: Tensor, grid: tuple[int, int, int]) -> bool:
    """Whether :func:`frames_conv` beats the convolution for ``weight`` on ``grid`` while training.

    Fewer multiplies when a frame has fewer tokens than a window slice has offsets, and the
    matrices must stay small (:data:`FRAMES_MATRIX_NUMBERS`).
    """
    kt, kh, kw = weight.shape[2:]
    frame = grid[1] * grid[2]
    return use_matrix(grid) and frame <= kh * kw and weight.shape[0] * kt * frame * frame <= FRAMES_MATRIX_NUMBERS


def frames_conv(x: Tensor, weight: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """``conv3d(x, weight, groups=C)`` (stride 1, zero padding ``window // 2``) as one batched GEMM.

    ``x`` is ``[B, C, T, H, W]`` and ``weight`` ``[C * R, 1, kt, kh, kw]`` (``R`` kernels per input
    channel); the result is laid out ``[C, (B T H W), R]``: channel-major, as the product leaves
    it, because moving ``C`` inwards is a strided copy that cost more than the product (a caller
    contracts over ``C`` with an einsum that reads this layout). Each ``(time offset, kernel)``
    becomes an ``H*W x H*W`` matrix over one frame's tokens (:func:`window_index` of the 2D
    slice), gathered straight into the product's layout; the ``kt`` time offsets are the padded
    frames beside each frame. Per channel one product ``[B*T, kt*HW] @ [kt*HW, HW*R]``: the same
    sums as the convolution, whose CPU backward for one input channel per group is slow.
    """
    b, c, t = x.shape[:3]
    kt, kh, kw = weight.shape[2:]
    kernels, frame = weight.shape[0] // c, grid[1] * grid[2]
    table = weight.reshape(c, kernels, kt, kh * kw).permute(0, 2, 3, 1)  # [C, kt, offset, R]
    table = torch.cat([table, table.new_zeros(c, kt, 1, kernels)], 2)  # a zero weight for "outside"
    matrix = table[:, :, window_index((kh, kw), grid[1:]).to(x.device)]  # [C, kt, source, target, R]
    shifted = F.pad(x.reshape(b, c, t, frame), (0, 0, kt // 2, kt // 2)).unfold(2, kt, 1)  # [B, C, T, HW, kt]
    shifted = shifted.permute(1, 0, 2, 4, 3).reshape(c, b * t, kt * frame)
    out = torch.bmm(shifted, matrix.reshape(c, kt * frame, frame * kernels))  # [C, B*T, HW*R]
    return out.reshape(c, b * t * frame, kernels)


def triple(name: str, value: int | Sequence[int], *, odd: bool = False, spatial_int: bool = False) -> tuple[int, int, int]:
    """``value`` as a ``(t, h, w)`` triple of positive ints.

    An int means the same size on all three axes, or with ``spatial_int`` ``(1, value, value)``
    (a stride that leaves time alone). ``odd`` demands odd sizes (windows centred on a token).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        out = (1, value, value) if spatial_int else (value, value, value)
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3:
        out = tuple(value)
    else:
        raise UsageError(f"invalid {name} {value!r}; expected an integer or three integers (t, h, w)")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in out):
        raise UsageError(f"invalid {name} {value!r}; expected positive integers")
    if odd and not all(v % 2 for v in out):
        raise UsageError(f"invalid {name} {value!r}; expected odd sizes (a window centred on its token)")
    return out  # type: ignore[return-value]

