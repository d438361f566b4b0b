"""Tile geometry and blending weights, as plain numpy.

The model sees square windows of ``tile`` pixels.  The outer ``halo`` pixels of
every window lack context and are cropped; what remains is the window's *core*.
Neighbouring cores overlap by ``overlap`` pixels, across which a raised-cosine
feather hands over from one window to the next.  Along one axis of length ``L``::

    stride S = tile - 2*halo - overlap        (must be >= overlap and >= 1)
    core i   = [i*S, i*S + S + overlap) ∩ [0, L)
    window i = [i*S - halo, i*S - halo + tile)      (may stick out of the image)

The first core's left ramp and the last core's right ramp are dropped, so the
weights of all windows sum to one at every pixel: blending needs no
renormalisation pass, and a model whose receptive field fits in the halo gives
exactly the same output tiled as on the whole image.  Parts of a window outside
the image are filled by reflection (:func:`pad_reflect`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from wsi_deepr.errors import TilingError

__all__ = [
    "AxisTiling",
    "TileGrid",
    "Window",
    "choose_tile",
    "feather_ramp",
    "pad_reflect",
]


def feather_ramp(overlap: int) -> np.ndarray:
    """Raised-cosine ramp of ``overlap`` samples rising from ~0 to ~1.

    ``ramp + ramp[::-1] == 1`` holds sample by sample, which is what makes two
    neighbouring windows' weights sum to one across their overlap.

    Parameters
    ----------
    overlap : int
        Length of the ramp in pixels (0 gives an empty ramp).

    Returns
    -------
    numpy.ndarray
        ``float64`` array of shape ``(overlap,)``.
    """
    if overlap < 0:
        raise TilingError(f"overlap must be >= 0, got {overlap}")
    t = (np.arange(overlap, dtype=np.float64) + 0.5) / max(overlap, 1)
    return 0.5 - 0.5 * np.cos(np.pi * t)


@dataclass(frozen=True)
class AxisTiling:
    """Window layout along one axis.

    Parameters
    ----------
    length : int
        Image length along the axis.
    tile : int
        Window size seen by the model.
    halo : int
        Pixels cropped from each side of a window's output.
    overlap : int
        Overlap of neighbouring cores, blended with a raised-cosine feather.
    """

    length: int
    tile: int
    halo: int
    overlap: int

    def __post_init__(self) -> None:
        for name in ("length", "tile"):
            if getattr(self, name) < 1:
                raise TilingError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("halo", "overlap"):
            if getattr(self, name) < 0:
                raise TilingError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.stride < max(1, self.overlap):
            # Only neighbouring windows may overlap, else the weights do not sum to one.
            need = 2 * self.halo + max(2 * self.overlap, self.overlap + 1)
            raise TilingError(
                f"tile {self.tile} is too small for halo {self.halo} and overlap "
                f"{self.overlap} (the stride tile - 2*halo - overlap must be >= overlap and >= 1): "
                f"raise --tile to at least {need} (or lower --halo / --overlap)"
            )

    @property
    def stride(self) -> int:
        """Distance between consecutive windows."""
        return self.tile - 2 * self.halo - self.overlap

    @property
    def count(self) -> int:
        """Number of windows needed to cover the axis."""
        return max(1, math.ceil((self.length - self.overlap) / self.stride))

    def core(self, i: int) -> tuple[int, int]:
        """``(start, stop)`` of core ``i`` in image coordinates, clipped to the image."""
        self._check(i)
        start = i * self.stride
        return start, min(start + self.stride + self.overlap, self.length)

    def window(self, i: int) -> tuple[int, int]:
        """``(start, stop)`` of window ``i`` in image coordinates (may leave the image)."""
        self._check(i)
        start = i * self.stride - self.halo
        return start, start + self.tile

    def weights(self, i: int) -> np.ndarray:
        """Blend weights over core ``i`` (``float64``, length of the clipped core)."""
        start, stop = self.core(i)
        w = np.ones(stop - start, dtype=np.float64)
        ramp = feather_ramp(self.overlap)
        if i > 0 and self.overlap:
            w[: self.overlap] = ramp
        if i < self.count - 1 and self.overlap:
            w[-self.overlap :] = ramp[::-1]
        return w

    def windows_touching(self, start: int, stop: int) -> range:
        """Indices of the windows whose core intersects ``[start, stop)``."""
        if stop <= start:
            return range(0)
        span = self.stride + self.overlap
        first = max(0, (start - span) // self.stride + 1)
        last = min(self.count - 1, (stop - 1) // self.stride)
        return range(first, last + 1)

    def _check(self, i: int) -> None:
        if not 0 <= i < self.count:
            raise IndexError(f"window index {i} out of range [0, {self.count})")


@dataclass(frozen=True)
class Window:
    """One model window of a :class:`TileGrid`.

    Attributes
    ----------
    index : tuple of int
        ``(iy, ix)`` in the window grid.
    read : tuple of int
        ``(y0, x0, y1, x1)`` read box in image coordinates; may leave the image
        (those pixels are reflected).
    core : tuple of int
        ``(y0, x0, y1, x1)`` of the valid, blended region, inside the image.
    """

    index: tuple[int, int]
    read: tuple[int, int, int, int]
    core: tuple[int, int, int, int]

    @property
    def core_in_window(self) -> tuple[slice, slice]:
        """Slices selecting the core inside the window's model output."""
        dy, dx = self.core[0] - self.read[0], self.core[1] - self.read[1]
        return (
            slice(dy, dy + self.core[2] - self.core[0]),
            slice(dx, dx + self.core[3] - self.core[1]),
        )


@dataclass(frozen=True)
class TileGrid:
    """Overlapping windows over a 2-D image, with partition-of-unity weights.

    Parameters
    ----------
    shape : tuple of int
        ``(Y, X)`` of the image.
    tile : int
        Window size (the model's input size), default 512.
    halo : int
        Pixels of context cropped from every side of a window's output; take it
        from the model card (its measured receptive field).
    overlap : int
        Blend width between neighbouring cores.
    """

    shape: tuple[int, int]
    tile: int = 512
    halo: int = 32
    overlap: int = 32

    def __post_init__(self) -> None:
        if len(self.shape) != 2:
            raise TilingError(f"shape must be (Y, X), got {self.shape!r}")
        # Validates the parameters along both axes.
        _ = self.y, self.x

    @cached_property
    def y(self) -> AxisTiling:
        """Tiling along Y."""
        return AxisTiling(int(self.shape[0]), self.tile, self.halo, self.overlap)

    @cached_property
    def x(self) -> AxisTiling:
        """Tiling along X."""
        return AxisTiling(int(self.shape[1]), self.tile, self.halo, self.overlap)

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(ny, nx)`` number of windows."""
        return self.y.count, self.x.count

    @property
    def n_windows(self) -> int:
        """Total number of windows the model runs on."""
        return self.y.count * self.x.count

    def window(self, iy: int, ix: int) -> Window:
        """The window at grid position ``(iy, ix)``."""
        ry, rx = self.y.window(iy), self.x.window(ix)
        cy, cx = self.y.core(iy), self.x.core(ix)
        return Window((iy, ix), (ry[0], rx[0], ry[1], rx[1]), (cy[0], cx[0], cy[1], cx[1]))

    def weights(self, iy: int, ix: int) -> np.ndarray:
        """2-D blend weights over the core of window ``(iy, ix)`` (``float64``)."""
        return np.multiply.outer(self.y.weights(iy), self.x.weights(ix))

    def windows(self):
        """Iterate over all windows in row-major order."""
        for iy in range(self.y.count):
            for ix in range(self.x.count):
                yield self.window(iy, ix)

    def check_mask(self, mask: np.ndarray | None) -> np.ndarray:
        """Validate a skip mask (``True`` = pass the input through) and return it.

        ``None`` means "skip nothing".
        """
        if mask is None:
            return np.zeros(self.grid_shape, dtype=bool)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.grid_shape:
            raise TilingError(
                f"skip mask has shape {mask.shape}, but the window grid is "
                f"{self.grid_shape} (tile {self.tile}, halo {self.halo}, overlap "
                f"{self.overlap}); build it with TileGrid.grid_shape"
            )
        return mask


def choose_tile(shape: tuple[int, int], *, halo: int, overlap: int, smallest: int = 512,
                largest: int = 1536, multiple: int = 64, parallel: int = 1) -> int:
    """The window size that runs the model on the fewest pixels for an image.

    A window costs about ``tile**2`` of model work, but only its core of
    ``stride = tile - 2*halo - overlap`` pixels a side is new output, so a
    small window with a wide halo spends most of its work on context (512-px
    windows with halo 88 and overlap 16 compute 2.6 pixels per output
    pixel; 1536-px windows 1.3).  Along an image edge the last window sticks
    out, which penalises large windows on small images.  The cost counted is
    ``ceil(n_windows / parallel) * tile**2``: the model work of the busiest of
    ``parallel`` equal workers.

    Parameters
    ----------
    shape : tuple of int
        ``(Y, X)`` of the image.
    halo, overlap : int
        As in :class:`TileGrid`.
    smallest, largest : int
        Range of window sizes tried (``smallest`` is raised to the least
        size the halo and overlap allow; ``largest`` bounds memory).
    multiple : int
        Window sizes tried are multiples of this (the model's downsampling
        needs multiples of 16).
    parallel : int
        Windows run at the same time.

    Returns
    -------
    int
        The cheapest window size; on a tie, the smaller.
    """
    if multiple < 1 or parallel < 1:
        raise TilingError(f"multiple and parallel must be >= 1, got {multiple} and {parallel}")
    least = 2 * halo + max(2 * overlap, overlap + 1)
    lo = max(smallest, least)
    lo = -(-lo // multiple) * multiple
    hi = max(lo, largest)
    best, best_cost = lo, None
    for tile in range(lo, hi + 1, multiple):
        grid = TileGrid(shape, tile=tile, halo=halo, overlap=overlap)
        cost = -(-grid.n_windows // parallel) * tile * tile
        if best_cost is None or cost < best_cost:
            best, best_cost = tile, cost
    return best


def pad_reflect(block: np.ndarray, before: tuple[int, int], after: tuple[int, int]) -> np.ndarray:
    """Pad the first two axes of ``block`` by reflection (repeated if needed).

    Parameters
    ----------
    block : numpy.ndarray
        ``(Y, X, ...)`` array, read from the part of a window inside the image.
    before, after : tuple of int
        Pixels to add before and after along Y and X.

    Returns
    -------
    numpy.ndarray
        The padded array (``block`` itself when no padding is needed).
    """
    if not any(before) and not any(after):
        return block
    widths = [(before[0], after[0]), (before[1], after[1])] + [(0, 0)] * (block.ndim - 2)
    return np.pad(block, widths, mode="reflect")
