"""Refocus only where it helps: which model windows the defocus map sends to the network.

A model is trusted only above its card's ``min_defocus_um``: the defocus
below which its output was measured to be no better than its input
(``benchmarks/min_defocus.py``).  A window of the refocus grid goes to the
network when the defocus map says, with at least the card's
``min_confidence``, that some of the tissue its core covers is defocused by
at least that much; every other window is passed through bit
for bit, blended with its refocused neighbours by the grid's feathered
partition of unity (no seam).  Pure numpy on a
:class:`~wsi_deepr.focus.map.DefocusMap` and a
:class:`~wsi_deepr.tiling.geometry.TileGrid`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsi_deepr.focus.map import DefocusMap, resample_to_grid
from wsi_deepr.tiling.geometry import TileGrid

__all__ = ["FocusSelection", "select_windows"]


@dataclass(frozen=True)
class FocusSelection:
    """Which windows the network runs on, and why (recorded in the provenance).

    Attributes
    ----------
    refocus : numpy.ndarray
        Boolean ``grid.grid_shape``: ``True`` = run the network.
    window_defocus_um : numpy.ndarray
        The largest defocus the map gives inside each window's core (NaN: no
        estimate: glass, blank background).
    threshold_um : float
        The model's ``min_defocus_um``.
    dmap : DefocusMap
        The map it came from.
    window_median_um : numpy.ndarray or None
        The median defocus of the map regions each window's core touches
        (NaN: no estimate): the ``|z|`` a non-blind method deconvolves with.
    min_confidence : float
        Map regions less confident than this did not count.
    """

    refocus: np.ndarray
    window_defocus_um: np.ndarray
    threshold_um: float
    dmap: DefocusMap
    window_median_um: np.ndarray | None = None
    min_confidence: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready summary: threshold, counts and the map (regions, defocus, confidence)."""
        d = self.window_defocus_um
        return {
            "where": "auto", "threshold_um": self.threshold_um, "min_confidence": self.min_confidence,
            "windows": int(self.refocus.size), "refocused_windows": int(np.count_nonzero(self.refocus)),
            "passed_through_in_focus": int(np.count_nonzero(~self.refocus & np.isfinite(d))),
            "passed_through_no_estimate": int(np.count_nonzero(~self.refocus & ~np.isfinite(d))),
            # one string per window row, "1" = refocused: which windows ran, readable and compact
            "refocused_rows": ["".join("1" if v else "0" for v in row) for row in self.refocus],
            "map": self.dmap.to_dict(),
        }


def _core_boxes(grid: TileGrid, scale: tuple[float, float]) -> np.ndarray:
    """``(N, 4)`` level-0 ``x, y, width, height`` of every window's core (row-major)."""
    sy, sx = scale
    boxes = []
    for win in grid.windows():
        y0, x0, y1, x1 = win.core
        bx, by = int(np.floor(x0 * sx)), int(np.floor(y0 * sy))
        boxes.append((bx, by, max(1, int(np.ceil(x1 * sx)) - bx), max(1, int(np.ceil(y1 * sy)) - by)))
    return np.asarray(boxes, dtype=np.int64)


def select_windows(dmap: DefocusMap, grid: TileGrid, *, level0_shape: tuple[int, int],
                   threshold_um: float, min_confidence: float = 0.0) -> FocusSelection:
    """The windows of ``grid`` whose core holds tissue defocused by at least ``threshold_um``.

    Parameters
    ----------
    dmap : DefocusMap
        The slide's defocus map (level-0 coordinates).
    grid : TileGrid
        The refocus windows, at the processing pixel size.
    level0_shape : (int, int)
        ``(Y, X)`` of the slide's level 0 (maps the grid onto the map).
    threshold_um : float
        The model card's ``min_defocus_um``.
    min_confidence : float
        The card's ``min_confidence``: map regions estimated with less
        confidence do not send a window to the network (a blind estimate can
        read smooth, in-focus content as defocus; it is then less confident).
    """
    if not threshold_um >= 0:
        raise ValueError(f"threshold_um={threshold_um!r}: must be a defocus in µm, >= 0")
    if not 0 <= min_confidence <= 1:
        raise ValueError(f"min_confidence={min_confidence!r}: must lie in [0, 1]")
    scale = (level0_shape[0] / grid.shape[0], level0_shape[1] / grid.shape[1])
    cores = _core_boxes(grid, scale)
    worst = resample_to_grid(dmap, cores, reduce="max").reshape(grid.grid_shape)
    median = resample_to_grid(dmap, cores, reduce="median").reshape(grid.grid_shape)
    trusted = np.where(dmap.confidence >= min_confidence, dmap.defocus_um, np.nan)
    trusted_worst = resample_to_grid(dmap, cores, reduce="max", values=trusted).reshape(grid.grid_shape)
    with np.errstate(invalid="ignore"):
        refocus = np.isfinite(trusted_worst) & (trusted_worst >= threshold_um)
    return FocusSelection(refocus, worst, float(threshold_um), dmap, median, float(min_confidence))
