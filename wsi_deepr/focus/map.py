"""Whole-slide defocus map (PROVISIONAL: replaced by the map of issue 12 part 1).

Windows tile level 0 in a grid; each is read at a level of at most 1 µm/px
(level 0 when the pixel size is unknown), tissue is found by optical density
on a low-resolution copy (brightfield) or by brightness (fluorescence), and
windows with tissue get :func:`~wsi_deepr.focus.estimate.estimate_defocus`.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from wsi_deepr.focus.estimate import IN_FOCUS_UM, estimate_defocus

__all__ = ["DefocusMap", "defocus_map"]

log = logging.getLogger(__name__)

_MIN_TISSUE = 0.1  # windows with less tissue get no estimate


@dataclass(frozen=True)
class DefocusMap:
    """Per-window defocus of a slide; ``boxes`` are ``x, y, width, height`` in level-0 px, row-major."""

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
    method: str
    seconds: float

    def grid(self, values) -> np.ndarray:
        """``values`` (one per window) as a ``grid_shape`` array."""
        return np.asarray(values).reshape(self.grid_shape)

    def to_dict(self) -> dict:
        """JSON-ready description."""
        return {"slide": self.slide, "mpp": self.mpp, "window": self.window, "grid_shape": list(self.grid_shape),
                "level": self.level, "method": self.method, "threshold_um": self.threshold_um,
                "seconds": round(self.seconds, 3),
                "boxes": self.boxes.tolist(), "tissue": self.tissue.round(4).tolist(),
                "defocus_um": [None if not np.isfinite(v) else round(float(v), 3) for v in self.defocus_um],
                "confidence": self.confidence.round(4).tolist()}


def _tissue_fractions(slide, boxes: np.ndarray) -> np.ndarray:
    from wsi_deepr.tiling.background import tissue_mask

    coarse = len(slide.level_shapes) - 1
    ly, lx, _ = slide.level_shapes[coarse]
    step = max(1, int(np.ceil(np.sqrt(ly * lx / 4_000_000))))
    thumb = slide.read_region(coarse, 0, 0, ly, lx)[::step, ::step]
    dt = np.dtype(slide.dtype)
    full = float(np.iinfo(dt).max) if dt.kind in "ui" else 1.0
    if slide.modality.value == "brightfield" and thumb.shape[-1] == 3:
        mask = tissue_mask(thumb, full_scale=full)
    else:
        from skimage.filters import threshold_otsu

        mean = thumb.astype(np.float32).mean(axis=-1)
        mask = mean > threshold_otsu(mean) if np.ptp(mean) > 0 else np.zeros(mean.shape, bool)
    h0, w0 = slide.level_shapes[0][:2]
    sy, sx = mask.shape[0] / h0, mask.shape[1] / w0
    out = np.zeros(len(boxes))
    for i, (x, y, w, h) in enumerate(boxes):
        a0, b0 = int(y * sy), int(x * sx)
        a1, b1 = max(a0 + 1, int(np.ceil((y + h) * sy))), max(b0 + 1, int(np.ceil((x + w) * sx)))
        out[i] = mask[a0:a1, b0:b1].mean()
    return out


def _pick_level(slide) -> tuple[int, float]:
    """Coarsest level of at most 1 µm/px and its downsample (level 0 when µm/px is unknown)."""
    if slide.mpp is None:
        return 0, 1.0
    base = 0.5 * (slide.mpp[0] + slide.mpp[1])
    best = 0
    for i, d in enumerate(slide.level_downsamples):
        if base * d <= 1.0:
            best = i
    return best, slide.level_downsamples[best]


def defocus_map(slide, *, window_um: float | None = None, level: int | str = "auto",
                max_workers: int | None = None) -> DefocusMap:
    """Estimate the defocus of every window of ``slide``.

    Parameters
    ----------
    slide : Slide
        An opened slide.
    window_um : float, optional
        Window side in µm (default 256 px of the analysed level).
    level : int or "auto"
        Pyramid level analysed (``"auto"``: the coarsest of at most 1 µm/px).
    max_workers : int, optional
        Threads reading and estimating windows (default 2).

    Returns
    -------
    DefocusMap
    """
    start = time.perf_counter()
    lvl, down = _pick_level(slide) if level == "auto" else (int(level), slide.level_downsamples[int(level)])
    mpp0 = None if slide.mpp is None else 0.5 * (slide.mpp[0] + slide.mpp[1])
    lmpp = None if mpp0 is None else mpp0 * down
    side = 256 if window_um is None or lmpp is None else max(32, int(round(window_um / lmpp)))
    window = int(round(side * down))
    h0, w0 = slide.level_shapes[0][:2]
    rows, cols = -(-h0 // window), -(-w0 // window)
    boxes = np.array([(c * window, r * window, min(window, w0 - c * window), min(window, h0 - r * window))
                      for r in range(rows) for c in range(cols)], dtype=np.int64).reshape(-1, 4)
    tissue = _tissue_fractions(slide, boxes)
    defocus = np.full(len(boxes), np.nan)
    confidence = np.zeros(len(boxes))
    ly, lx = slide.level_shapes[lvl][:2]

    def work(i: int) -> tuple[int, float, float]:
        x, y, w, h = boxes[i]
        y0, x0 = int(y / down), int(x / down)
        y1, x1 = min(ly, max(y0 + 1, int(round((y + h) / down)))), min(lx, max(x0 + 1, int(round((x + w) / down))))
        pix = slide.read_region(lvl, y0, x0, y1, x1)
        if pix.shape[0] < side or pix.shape[1] < side:
            pix = np.pad(pix, ((0, side - pix.shape[0]), (0, side - pix.shape[1]), (0, 0)), mode="reflect")
        est = estimate_defocus(pix[None], mpp=lmpp or 0.5, modality=slide.modality.value)
        return i, float(est.defocus_um[0]), float(est.confidence[0])

    todo = [i for i in range(len(boxes)) if tissue[i] >= _MIN_TISSUE]
    with ThreadPoolExecutor(max_workers or 2) as pool:
        for i, d, c in pool.map(work, todo):
            defocus[i], confidence[i] = d, c
    log.debug("defocus map of %s: %d windows, %d with tissue", slide.path, len(boxes), len(todo))
    return DefocusMap(slide=str(slide.path), mpp=mpp0, window=window, grid_shape=(rows, cols), boxes=boxes,
                      tissue=tissue, defocus_um=defocus, confidence=confidence, threshold_um=IN_FOCUS_UM,
                      level=lvl, method="provisional gradient-energy ratio", seconds=time.perf_counter() - start)
