"""Whole-slide defocus map: :func:`estimate_defocus` over a grid of regions.

The slide is cut into square regions of ``window_um`` (default
:data:`DEFAULT_WINDOW_UM`).  The pyramid level read is the coarsest whose
pixels are no coarser than the estimator's 0.5 µm/px (reduced further by an
integer block mean when it is still twice as fine), so the estimator never
reads more pixels than it uses.  Regions without tissue get NaN:

* brightfield: optical density, as for the refocus background test
  (:func:`wsi_deepr.tiling.background.tissue_mask`: a pixel is tissue when a
  channel's OD above the glass exceeds 0.1);
* fluorescence: a pixel is tissue when it is brighter than the background
  (the 5th percentile of the slide) by more than five noise sigmas and 5 % of
  the background-to-bright range.

Regions with less than ``min_tissue`` tissue get no estimate; the others are
estimated from the whole region (regions at the slide's edge are read shifted
inward to the full size when the slide allows).
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsi_deepr.focus.estimate import IN_FOCUS_UM, estimate_defocus
from wsi_deepr.focus.features import CANONICAL_MPP
from wsi_deepr.imaging.reduce import area_mean

__all__ = ["DEFAULT_WINDOW_UM", "DefocusMap", "defocus_map", "resample_to_grid"]

log = logging.getLogger(__name__)

#: Side of a map region in µm (128 px at the estimator's 0.5 µm/px).
DEFAULT_WINDOW_UM: float = 64.0
#: µm/px assumed when the slide does not say.
ASSUMED_MPP: float = 0.5


@dataclass(frozen=True)
class DefocusMap:
    """Per-region defocus of a slide.

    Attributes
    ----------
    slide : str
        Path of the slide.
    mpp : float or None
        Level-0 µm/px (mean of y and x); None when the slide does not say
        (0.5 was assumed, see ``method``).
    window : int
        Side of each region in level-0 pixels.
    grid_shape : tuple of int
        ``(rows, cols)``.
    boxes : numpy.ndarray
        ``(N, 4)`` int64 ``x, y, width, height`` in level-0 pixels,
        row-major over the grid; edge regions clipped to the slide.
    tissue : numpy.ndarray
        ``(N,)`` tissue fraction in ``[0, 1]``.
    defocus_um : numpy.ndarray
        ``(N,)`` ``|z|`` in µm; NaN where there is no estimate.
    confidence : numpy.ndarray
        ``(N,)`` in ``[0, 1]``.
    threshold_um : float
        :data:`~wsi_deepr.focus.estimate.IN_FOCUS_UM`.
    level : int
        Pyramid level read.
    reduction : int
        Integer block-mean reduction applied to that level.
    method : str
        One line: what was estimated how.
    seconds : float
        Wall time of :func:`defocus_map`.
    """

    slide: str
    mpp: float | None
    window: int
    grid_shape: tuple[int, int]
    boxes: np.ndarray
    tissue: np.ndarray
    defocus_um: np.ndarray
    confidence: np.ndarray
    threshold_um: float
    level: int
    reduction: int
    method: str
    seconds: float

    def grid(self, values: np.ndarray) -> np.ndarray:
        """``(rows, cols)`` view of a per-region array such as :attr:`defocus_um`."""
        arr = np.asarray(values)
        if arr.shape[0] != self.boxes.shape[0]:
            raise ValueError(f"values has {arr.shape[0]} entries; the map has {self.boxes.shape[0]} regions")
        return arr.reshape(self.grid_shape + arr.shape[1:])

    def to_dict(self) -> dict:
        """JSON-ready record (NaN written as ``None``)."""
        def num(v: float) -> float | None:
            return None if not np.isfinite(v) else round(float(v), 4)

        regions = [{"x": int(b[0]), "y": int(b[1]), "width": int(b[2]), "height": int(b[3]),
                    "tissue": round(float(t), 4), "defocus_um": num(d), "confidence": round(float(c), 4)}
                   for b, t, d, c in zip(self.boxes, self.tissue, self.defocus_um, self.confidence)]
        return {"slide": self.slide, "mpp": self.mpp, "window": self.window,
                "grid_shape": list(self.grid_shape), "threshold_um": self.threshold_um,
                "level": self.level, "reduction": self.reduction, "method": self.method,
                "seconds": round(self.seconds, 3), "regions": regions}


def _choose_level(slide, mpp0: float, level: int | str) -> tuple[int, int]:
    downs = slide.level_downsamples
    if level == "auto":
        ok = [i for i, d in enumerate(downs) if mpp0 * d <= CANONICAL_MPP * 1.15]
        lv = max(ok, key=lambda i: downs[i]) if ok else 0
    else:
        lv = int(level)
        if not 0 <= lv < len(downs):
            raise ValueError(f"level={level!r}: the slide has levels 0..{len(downs) - 1} (or use 'auto')")
    red = max(1, int(CANONICAL_MPP / (mpp0 * downs[lv]) + 1e-6))
    return lv, red


class _TissueTest:
    """Per-pixel tissue test from statistics of a thumbnail."""

    def __init__(self, thumb: np.ndarray, *, brightfield: bool, full_scale: float) -> None:
        self.brightfield = brightfield
        t = thumb.astype(np.float64)
        if brightfield:
            from wsi_deepr.tiling.background import glass_level

            od_threshold = 0.1
            self.below = (glass_level(thumb, full_scale=full_scale) + 1.0) * 10.0 ** (-od_threshold) - 1.0
        else:
            flat = t.reshape(-1, t.shape[-1])
            bg = np.percentile(flat, 5, axis=0)
            lo = flat[np.all(flat <= np.percentile(flat, 50, axis=0), axis=1)]
            sigma = 1.4826 * np.median(np.abs(lo - np.median(lo, axis=0)), axis=0) if len(lo) else 0.0
            top = np.percentile(flat, 99.9, axis=0)
            self.above = bg + np.maximum(5.0 * sigma, 0.05 * (top - bg)) + 1e-9

    def fraction(self, win: np.ndarray) -> float:
        """Tissue fraction of a window (``(H, W, C)``, sampled every 2 px)."""
        w = win[::2, ::2]
        if self.brightfield:
            return float(np.any(w < self.below, axis=-1).mean())
        return float(np.any(w > self.above, axis=-1).mean())


def _thumbnail(slide, max_side: int = 512, band: int = 32) -> np.ndarray:
    """Pixels of the coarsest level for background statistics: the whole level
    when small, else bands of ``band`` rows spread evenly (a sample, not an image)."""
    lv = len(slide.level_shapes) - 1
    h, w = slide.level_shapes[lv][:2]
    step = max(1, math.ceil(max(h, w) / max_side))
    if step <= 2:
        return slide.read_region(lv, 0, 0, h, w)[::step, ::step]
    rows = [slide.read_region(lv, y, 0, min(h, y + band), w)[:, ::step]
            for y in range(0, h, band * step)]
    return np.concatenate(rows, axis=0)


def _grid_boxes(h0: int, w0: int, win0: int) -> tuple[np.ndarray, tuple[int, int]]:
    rows, cols = math.ceil(h0 / win0), math.ceil(w0 / win0)
    ys, xs = np.meshgrid(np.arange(rows) * win0, np.arange(cols) * win0, indexing="ij")
    ys, xs = ys.ravel(), xs.ravel()
    boxes = np.stack([xs, ys, np.minimum(win0, w0 - xs), np.minimum(win0, h0 - ys)], axis=1)
    return boxes.astype(np.int64), (rows, cols)


class _RowJob:
    """Reads one row of regions as a strip and estimates its tissue regions (thread-safe:
    every row writes its own entries of the result arrays)."""

    def __init__(self, *, slide, level: int, reduction: int, side: int, cols: int, test: _TissueTest,
                 min_tissue: float, mpp: float, modality: str, full_scale: float, n: int) -> None:
        self.slide, self.level, self.red, self.side, self.cols = slide, level, reduction, side, cols
        self.test, self.min_tissue, self.mpp, self.modality, self.full = test, min_tissue, mpp, modality, full_scale
        self.shape = slide.level_shapes[level][:2]
        self.tissue = np.zeros(n)
        self.z = np.full(n, np.nan)
        self.conf = np.zeros(n)

    def __call__(self, r: int) -> None:
        hl, wl = self.shape
        side, red = self.side, self.red
        y0 = min(r * side, max(0, hl - side))  # the last row is read shifted inward to full size
        strip = self.slide.read_region(self.level, y0, 0, min(hl, y0 + side), wl)
        ry0 = r * side - y0  # this row's own rows inside the strip
        wins, idx = [], []
        for c in range(self.cols):
            i = r * self.cols + c
            x0 = min(c * side, wl)
            own = strip[ry0 : ry0 + side, x0 : x0 + side]
            self.tissue[i] = self.test.fraction(own) if own.size else 0.0
            if self.tissue[i] < self.min_tissue:
                continue
            xs = min(x0, max(0, wl - side))
            if min(strip.shape[0], wl - xs, side) // red < 16:
                continue
            wins.append(strip[:, xs : xs + side] if red == 1 else
                        area_mean(strip[:, xs : xs + side], red, edge="crop", dtype=np.float64))
            idx.append(i)
        for shape in {w.shape for w in wins}:
            sel = [k for k, w in enumerate(wins) if w.shape == shape]
            est = estimate_defocus(np.stack([wins[k] for k in sel]), mpp=self.mpp, modality=self.modality,
                                   full_scale=self.full)
            ii = np.asarray(idx)[sel]
            self.z[ii], self.conf[ii] = est.defocus_um, est.confidence


def _resolve(slide) -> tuple[object, float | None]:
    if isinstance(slide, (str, Path)):
        from wsi_deepr.readers import open_slide

        slide = open_slide(slide)
    mpp = None if slide.mpp is None else float(np.mean(slide.mpp))
    if mpp is not None and not 0.01 <= mpp <= 20:
        log.warning("%s: implausible pixel size %s µm/px ignored", slide.path, mpp)
        mpp = None
    return slide, mpp


def defocus_map(
    slide,
    *,
    window_um: float | None = None,
    level: int | str = "auto",
    max_workers: int | None = None,
    min_tissue: float = 0.1,
) -> DefocusMap:
    """Estimate the defocus of every tissue region of a slide.

    Parameters
    ----------
    slide : str, Path or Slide
        A slide path (opened with :func:`wsi_deepr.open_slide`) or an opened
        slide.
    window_um : float, optional
        Region side in µm; default :data:`DEFAULT_WINDOW_UM` (at least 32 µm).
    level : int or "auto"
        Pyramid level to read; ``"auto"`` takes the coarsest at or finer than
        0.5 µm/px.
    max_workers : int, optional
        Threads reading and estimating strips of regions; default 2.
    min_tissue : float
        Regions with a smaller tissue fraction get no estimate.

    Returns
    -------
    DefocusMap
    """
    t0 = time.perf_counter()
    window_um = DEFAULT_WINDOW_UM if window_um is None else float(window_um)
    if not window_um >= 32.0:
        raise ValueError(f"window_um={window_um!r}: give at least 32 µm (default {DEFAULT_WINDOW_UM})")
    if not 0.0 <= min_tissue <= 1.0:
        raise ValueError(f"min_tissue={min_tissue!r}: a fraction in [0, 1]")
    slide, mpp = _resolve(slide)
    mpp0 = ASSUMED_MPP if mpp is None else mpp
    lv, red = _choose_level(slide, mpp0, level)
    down = slide.level_downsamples[lv]
    h0, w0 = slide.level_shapes[0][:2]
    win0 = max(1, round(window_um / mpp0))
    boxes, grid_shape = _grid_boxes(h0, w0, win0)
    win_l = max(1, round(win0 / down))  # region side at the read level
    modality = str(getattr(slide.modality, "value", slide.modality)).lower()
    dt = np.dtype(slide.dtype)
    full = float(np.iinfo(dt).max) if dt.kind in "ui" else 1.0
    test = _TissueTest(_thumbnail(slide), brightfield=modality == "brightfield", full_scale=full)
    eff_mpp = mpp0 * down * red
    job = _RowJob(slide=slide, level=lv, reduction=red, side=win_l, cols=grid_shape[1], test=test,
                  min_tissue=min_tissue, mpp=eff_mpp, modality=modality, full_scale=full, n=len(boxes))
    with ThreadPoolExecutor(max_workers=max_workers or 2) as pool:
        list(pool.map(job, range(grid_shape[0])))
    what = (f"level {lv} ({mpp0 * down:.3g} µm/px){f' block-mean {red}x{red}' if red > 1 else ''}, "
            f"{window_um:g}-µm regions ({win0} px at level 0), every region with >= {min_tissue:.0%} tissue, "
            f"{modality} estimator at {eff_mpp:.3g} µm/px")
    if mpp is None:
        what += f"; pixel size unknown, {ASSUMED_MPP} µm/px assumed"
    return DefocusMap(slide=str(slide.path), mpp=mpp, window=win0, grid_shape=grid_shape, boxes=boxes,
                      tissue=job.tissue, defocus_um=job.z, confidence=job.conf, threshold_um=IN_FOCUS_UM, level=lv,
                      reduction=red, method=what, seconds=time.perf_counter() - t0)


def resample_to_grid(dmap: DefocusMap, boxes: np.ndarray, *, reduce: str = "max",
                     values: np.ndarray | None = None) -> np.ndarray:
    """The map's value over other regions (e.g. the refocus tile grid).

    Parameters
    ----------
    dmap : DefocusMap
        The map.
    boxes : numpy.ndarray
        ``(M, 4)`` ``x, y, width, height`` in level-0 pixels.
    reduce : {"max", "mean", "median", "min"}
        How to combine the map regions a box touches (NaN ignored).
    values : numpy.ndarray, optional
        Per-region values to combine; default ``dmap.defocus_um``.

    Returns
    -------
    numpy.ndarray
        ``(M,)`` float64; NaN where a box touches no region with a value.
    """
    funcs = {"max": np.nanmax, "mean": np.nanmean, "median": np.nanmedian, "min": np.nanmin}
    if reduce not in funcs:
        raise ValueError(f"reduce={reduce!r}: use one of {sorted(funcs)}")
    b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    if (b[:, 2:] <= 0).any():
        raise ValueError("boxes need positive width and height (x, y, width, height in level-0 px)")
    grid = dmap.grid(dmap.defocus_um if values is None else np.asarray(values, dtype=np.float64))
    rows, cols = dmap.grid_shape
    w = dmap.window
    out = np.full(len(b), np.nan)
    for k, (x, y, bw, bh) in enumerate(b):
        r0, r1 = max(0, y // w), min(rows, (y + bh - 1) // w + 1)
        c0, c1 = max(0, x // w), min(cols, (x + bw - 1) // w + 1)
        cell = grid[r0:r1, c0:c1]
        if cell.size and np.isfinite(cell).any():
            out[k] = funcs[reduce](cell)
    return out
