"""What every writer checks of the pyramid it is given, before it creates anything.

The levels are ``(Y, X, C)`` array-likes (zarr arrays in practice), level 0
first, one dtype, each no larger than the one before; the pixel size, when
given, is two positive finite numbers ``(y, x)`` in µm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["check_levels", "check_mpp"]


def check_levels(levels: Sequence[Any], *, rgb: bool = False) -> tuple[int, np.dtype]:
    """``(channels, dtype)`` of a valid pyramid, or ``ValueError`` naming the bad level.

    With ``rgb`` the levels must be brightfield RGB: three uint8 channels.
    """
    if len(levels) == 0:
        raise ValueError("levels must contain at least level 0")
    first = levels[0]
    if len(first.shape) != 3:
        raise ValueError(f"levels[0] must be (Y, X, C), got shape {first.shape}")
    channels, dtype = int(first.shape[2]), np.dtype(first.dtype)
    if dtype.kind not in "uif":
        raise ValueError(f"levels must be numeric, got dtype {dtype}")
    previous = tuple(int(v) for v in first.shape)
    for i, level in enumerate(levels[1:], start=1):
        shape = tuple(int(v) for v in level.shape)
        if len(shape) != 3 or shape[2] != channels or np.dtype(level.dtype) != dtype:
            raise ValueError(f"levels[{i}] has shape {shape} and dtype {level.dtype}; expected "
                             f"(Y, X, {channels}) {dtype} like levels[0]")
        if shape[0] > previous[0] or shape[1] > previous[1] or min(shape[:2]) < 1:
            raise ValueError(f"levels[{i}] shape {shape} is not smaller than levels[{i - 1}] shape {previous}")
        previous = shape
    if rgb and (channels != 3 or dtype != np.uint8):
        raise ValueError(f"rgb=True needs uint8 levels with 3 channels, got {channels} channel(s) of {dtype}")
    return channels, dtype


def check_mpp(mpp: tuple[float, float] | None) -> tuple[float, float] | None:
    """``mpp`` as two floats ``(y, x)``, or ``ValueError`` unless both are positive and finite."""
    if mpp is None:
        return None
    value = (float(mpp[0]), float(mpp[1]))
    if not (value[0] > 0 and value[1] > 0 and all(map(math.isfinite, value))):
        raise ValueError(f"mpp must be two positive numbers (y, x), got {mpp!r}")
    return value
