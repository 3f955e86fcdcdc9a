"""Option parsing shared by the schemes that convolve the token grid as a 3D volume (rsa, structsa).

Their window and stride options take an int or a ``(t, h, w)`` triple; a bad value is a usage
error naming it, whether it came from Python or the command line.

Both also train faster on small grids through :func:`window_matrix`: on CPU, the backward pass
of a convolution with one input channel per group over a grid of a few tokens a side (the
built-in tasks' 4 x 4 grids) is several times slower than its forward, while the same sums as
a product with a token x token matrix are an ordinary GEMM both ways.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vattn_cli.errors import UsageError

#: Grids of at most this many tokens train through :func:`window_matrix` (each matrix holds at
#: most this squared numbers per kernel); larger ones, and every forward without autograd
#: and every trace (FLOP counting), convolve.
MATRIX_TOKENS = 256


def use_matrix(grid: tuple[int, int, int]) -> bool:
    """Whether a training forward on ``grid`` takes the matrix form of its window convolutions."""
    # never while traced: fvcore counts the convolution, the operator these schemes define
    return torch.is_grad_enabled() and not torch.jit.is_tracing() and grid[0] * grid[1] * grid[2] <= MATRIX_TOKENS


def window_matrix(weight: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """``[R, *window]`` kernels as ``[R, source, target]`` matrices over the ``t x h x w`` grid.

    Entry ``[r, q, n]`` is the weight a stride-1, zero-padded (``window // 2``) cross-correlation
    gives token ``q`` in output ``n``, zero where ``q`` lies outside ``n``'s window, so
    ``x @ matrix[r]`` equals ``conv3d`` of ``x`` (tokens in ``t, h, w`` order) with kernel ``r``.
    """
    window = weight.shape[1:]
    size = torch.tensor(window, device=weight.device).reshape(3, 1, 1)
    axes = (torch.arange(n, device=weight.device) for n in grid)
    pos = torch.stack(torch.meshgrid(*axes, indexing="ij")).reshape(3, -1)
    offset = pos[:, :, None] - pos[:, None, :] + size // 2  # [axis, source, target]
    inside = ((offset >= 0) & (offset < size)).all(0)
    flat = (offset[0] * window[1] + offset[1]) * window[2] + offset[2]
    table = torch.cat([weight.reshape(weight.shape[0], -1), weight.new_zeros(weight.shape[0], 1)], 1)
    return table[:, torch.where(inside, flat, table.shape[1] - 1)]


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

