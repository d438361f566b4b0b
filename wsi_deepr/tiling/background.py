"""Blank glass: which model windows have no tissue, so the input can pass through.

Most of a brightfield whole-slide image is empty glass.  Refocusing it costs
as much as refocusing tissue and changes nothing worth having, so by default
windows whose whole read area (core and halo) holds no tissue are passed
through unchanged (:func:`wsi_deepr.inference.kernel.infer_windows` with ``skip``).

Tissue is found on a low-resolution thumbnail by optical density, the
standard brightfield background test (as in Macenko stain normalisation):
``OD = -log10(I / I0)`` per channel, with ``I0`` the brightness of the
glass, and a pixel is tissue when its largest channel OD exceeds
``od_threshold`` (0.1 by default, below the 0.15 usually used to drop
background before stain estimation: a window is skipped only when it is
certainly empty).  The mask is then grown by ``dilate`` thumbnail pixels, so
faint tissue edges lost to the thumbnail's averaging keep their windows.

Everything here is pure numpy on arrays; reading the thumbnail is the
caller's business (:func:`wsi_deepr.tiling.plan.plan_refocus`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from wsi_deepr.tiling.geometry import TileGrid

__all__ = ["OD_THRESHOLD", "BackgroundMask", "glass_level", "tissue_mask", "window_skip_mask"]

#: optical density above which a thumbnail pixel is tissue
OD_THRESHOLD = 0.1


@dataclass(frozen=True)
class BackgroundMask:
    """What background detection decided (recorded in the provenance).

    Attributes
    ----------
    skip : numpy.ndarray
        Boolean ``grid.grid_shape`` mask: ``True`` = no tissue, passed through.
    tissue_fraction : float
        Fraction of thumbnail pixels taken for tissue (before dilation).
    glass : tuple of float
        ``I0`` per channel, in the slide's intensity units.
    source : str
        Which level was read, and its size.
    od_threshold : float
        The optical-density threshold used.
    """

    skip: np.ndarray
    tissue_fraction: float
    glass: tuple[float, ...]
    source: str
    od_threshold: float

    def to_dict(self) -> dict:
        """JSON-ready summary (the mask itself is summarised by counts)."""
        return {"skipped_windows": int(np.count_nonzero(self.skip)), "windows": int(self.skip.size),
                "tissue_fraction": round(self.tissue_fraction, 4), "glass": [round(g, 2) for g in self.glass],
                "od_threshold": self.od_threshold, "thumbnail": self.source}


def glass_level(thumb: np.ndarray, *, full_scale: float, percentile: float = 99.0,
                min_fraction: float = 0.6) -> np.ndarray:
    """Brightness of the glass, per channel: a high percentile of the thumbnail.

    On a slide that is all tissue the percentile is tissue, not glass; it is
    then floored at ``min_fraction`` of ``full_scale`` so that dark tissue
    still counts as tissue.
    """
    flat = np.asarray(thumb).reshape(-1, thumb.shape[-1])
    step = max(1, flat.shape[0] // 250_000)  # an even subsample of <= ~250 k pixels is plenty for a percentile
    level = np.percentile(flat[::step].astype(np.float64), percentile, axis=0)
    return np.maximum(level, min_fraction * full_scale)


def tissue_mask(thumb: np.ndarray, *, full_scale: float, od_threshold: float = OD_THRESHOLD,
                glass: np.ndarray | None = None) -> np.ndarray:
    """Boolean ``(Y, X)`` mask of tissue on a brightfield thumbnail ``(Y, X, C)``.

    Parameters
    ----------
    thumb : numpy.ndarray
        Thumbnail pixels in the slide's units (e.g. 0-255).
    full_scale : float
        The largest value of the slide's type (255 for 8-bit).
    od_threshold : float
        A pixel is tissue when ``max_c -log10(I_c / I0_c) > od_threshold``.
    glass : numpy.ndarray, optional
        ``I0`` per channel; default :func:`glass_level`.
    """
    if thumb.ndim != 3:
        raise ValueError(f"thumbnail must be (Y, X, C), got shape {thumb.shape}")
    if od_threshold <= 0:
        raise ValueError(f"od_threshold={od_threshold!r}: must be > 0 (0.1 is a safe default)")
    i0 = glass_level(thumb, full_scale=full_scale) if glass is None else np.asarray(glass, dtype=np.float64)
    # max_c -log10((I_c + 1) / (I0_c + 1)) > t  <=>  some channel has I_c < (I0_c + 1) 10^-t - 1: no logarithms
    below = (i0 + 1.0) * 10.0 ** (-od_threshold) - 1.0
    thumb = np.asarray(thumb)
    mask = thumb[..., 0] < below[0]
    for c in range(1, thumb.shape[-1]):
        mask |= thumb[..., c] < below[c]
    return mask


def window_skip_mask(tissue: np.ndarray, grid: TileGrid, *, dilate: int = 2) -> np.ndarray:
    """Windows of ``grid`` whose read area holds no tissue.

    Parameters
    ----------
    tissue : numpy.ndarray
        Boolean ``(y, x)`` tissue mask of the whole image at any lower
        resolution (the scale is taken from ``grid.shape``; both axes may
        differ).
    grid : TileGrid
        The window grid at processing resolution.
    dilate : int
        Grow the tissue by this many mask pixels first.

    Returns
    -------
    numpy.ndarray
        Boolean ``grid.grid_shape`` mask, ``True`` = skip (no tissue anywhere
        in the window, halo included, after dilation).
    """
    tissue = np.asarray(tissue, dtype=bool)
    if tissue.ndim != 2 or 0 in tissue.shape:
        raise ValueError(f"tissue mask must be a non-empty (Y, X) array, got shape {tissue.shape}")
    if dilate > 0:
        tissue = ndimage.binary_dilation(tissue, iterations=int(dilate))
    my, mx = tissue.shape
    sy, sx = grid.shape[0] / my, grid.shape[1] / mx
    # summed-area table: the tissue count of any box in O(1)
    sat = np.zeros((my + 1, mx + 1), dtype=np.int64)
    sat[1:, 1:] = tissue.cumsum(0).cumsum(1)
    skip = np.zeros(grid.grid_shape, dtype=bool)
    for win in grid.windows():
        y0, x0, y1, x1 = win.read
        # the window's part inside the image, widened to whole mask pixels
        a0 = min(max(int(np.floor(max(y0, 0) / sy)), 0), my - 1)
        b0 = min(max(int(np.floor(max(x0, 0) / sx)), 0), mx - 1)
        a1 = min(max(int(np.ceil(min(y1, grid.shape[0]) / sy)), a0 + 1), my)
        b1 = min(max(int(np.ceil(min(x1, grid.shape[1]) / sx)), b0 + 1), mx)
        count = sat[a1, b1] - sat[a0, b1] - sat[a1, b0] + sat[a0, b0]
        skip[win.index] = count == 0
    return skip
