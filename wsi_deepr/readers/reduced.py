"""A slide level reduced by an integer factor, as a :class:`~wsi_deepr.readers.slide.RegionReader`.

Used by scale-aware inference (:mod:`wsi_deepr.tiling.scale`) when no pyramid
level matches the model's training pixel size, and for thumbnails.  Each
output pixel is the area mean of an ``f × f`` block of the source level
(:func:`wsi_deepr.imaging.reduce.area_mean`: tiled reads agree with
whole-image reads; blocks cut by the level's right/bottom edge average the
pixels they have; integers rounded half up).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsi_deepr.imaging.reduce import area_mean, reduced_shape
from wsi_deepr.readers.slide import RegionReader

__all__ = ["ReducedReader"]


@dataclass(frozen=True)
class ReducedReader:
    """Level ``level`` of ``source`` reduced ``factor``× by area mean; exposes it as level 0.

    Parameters
    ----------
    source : RegionReader
        The slide's reader (picklable, so this is too).
    level : int
        Source level to reduce.
    factor : int
        Integer reduction (>= 2).
    source_shape : (int, int, int)
        ``(Y, X, C)`` of that source level.
    dtype : numpy.dtype
        Pixel type returned (integers rounded half up, floats the exact mean).
    """

    source: RegionReader
    level: int
    factor: int
    source_shape: tuple[int, int, int]
    dtype: np.dtype

    def __post_init__(self) -> None:
        if int(self.factor) < 2:
            raise ValueError(f"factor={self.factor!r}: a reduction needs an integer factor >= 2")

    @property
    def shape(self) -> tuple[int, ...]:
        """``(Y, X, C)`` of the reduced level."""
        return reduced_shape(self.source_shape, self.factor)

    def read(self, level: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` of the reduced image (``level`` must be 0)."""
        if level != 0:
            raise ValueError(f"a reduced slide has one level; got level {level}")
        h, w = self.shape[:2]
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise ValueError(f"region [{y0}:{y1}, {x0}:{x1}] is outside the reduced level of {h}x{w}")
        f = self.factor
        sy0, sx0 = y0 * f, x0 * f
        sy1, sx1 = min(y1 * f, self.source_shape[0]), min(x1 * f, self.source_shape[1])
        src = np.asarray(self.source.read(self.level, sy0, sx0, sy1, sx1))
        return area_mean(src, f, dtype=self.dtype)[:y1 - y0, :x1 - x0]

