"""Option parsing shared by the schemes that convolve the token grid as a 3D volume (rsa, structsa).

Their window and stride options take an int or a ``(t, h, w)`` triple; a bad value is a usage
error naming it, whether it came from Python or the command line.
"""

from __future__ import annotations

from collections.abc import Sequence

from vattn_cli.errors import UsageError


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

