"""Per-slide intensity normalisation.

The statistics are computed ONCE per slide, from a low-resolution level, and
applied to every tile.  Per-tile statistics would make every tile's brightness
drift on its own and print the tile grid into the output.

A model card names its normalisation with one of these specs:

``zscore``
    ``(x - mean_c) / std_c`` per channel (the Deep-R paper's choice).
``percentile:LOW:HIGH``
    ``(x - p_low_c) / (p_high_c - p_low_c)`` per channel (CSBDeep style).
``range``
    ``x / max(dtype)`` (no statistics).
``none``
    ``x`` unchanged (float models trained on raw counts).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["NormStats", "parse_spec", "compute_stats", "stats_sample"]

log = logging.getLogger(__name__)

_EPS = 1e-6


def parse_spec(spec: str) -> tuple[str, tuple[float, ...]]:
    """Parse a normalisation spec into ``(method, params)``.

    Raises
    ------
    ValueError
        When the spec is not one of the documented forms.
    """
    text = str(spec).strip().lower()
    parts = text.split(":")
    method = parts[0]
    if method in ("zscore", "range", "none") and len(parts) == 1:
        return method, ()
    if method == "percentile" and len(parts) == 3:
        try:
            low, high = float(parts[1]), float(parts[2])
        except ValueError:
            low = high = float("nan")
        if 0.0 <= low < high <= 100.0:
            return method, (low, high)
    raise ValueError(
        f"unknown normalization {spec!r}: use 'zscore', 'percentile:LOW:HIGH' "
        f"(0 <= LOW < HIGH <= 100), 'range' or 'none'"
    )


@dataclass(frozen=True)
class NormStats:
    """Affine normalisation ``(x - offset) / scale``, one value per channel."""

    spec: str
    offset: tuple[float, ...]
    scale: tuple[float, ...]
    source: str = ""

    def normalize(self, block: np.ndarray) -> np.ndarray:
        """Return ``block`` (``(..., C)``) normalised as ``float32``."""
        out = block.astype(np.float32)  # always a new array: safe to work in place
        out -= np.asarray(self.offset, dtype=np.float32)
        out /= np.asarray(self.scale, dtype=np.float32)
        return out

    def denormalize(self, block: np.ndarray) -> np.ndarray:
        """Invert :meth:`normalize` (still ``float32``, not rounded)."""
        off = np.asarray(self.offset, dtype=np.float32)
        scale = np.asarray(self.scale, dtype=np.float32)
        return block * scale + off

    def to_json(self) -> str:
        """JSON form recorded in the output metadata."""
        return json.dumps(asdict(self))

    @classmethod
    def identity(cls, n_channels: int) -> NormStats:
        """No-op normalisation for ``n_channels`` channels."""
        return cls("none", (0.0,) * n_channels, (1.0,) * n_channels, "identity")


def compute_stats(spec: str, pixels: np.ndarray, *, dtype: np.dtype, source: str = "") -> NormStats:
    """Compute normalisation statistics from a pixel sample.

    Parameters
    ----------
    spec : str
        Normalisation spec from the model card (see module docstring).
    pixels : numpy.ndarray
        ``(N, C)`` sample of the slide's pixels (see :func:`stats_sample`).
    dtype : numpy.dtype
        The slide's pixel type (for ``range``).
    source : str
        Where the sample came from, recorded for provenance.

    Returns
    -------
    NormStats
    """
    method, params = parse_spec(spec)
    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise ValueError(f"pixels must be (N, C), got shape {pixels.shape}")
    n_channels = pixels.shape[1]
    if method == "none":
        return NormStats(spec, (0.0,) * n_channels, (1.0,) * n_channels, source)
    if method == "range":
        dt = np.dtype(dtype)
        top = float(np.iinfo(dt).max) if dt.kind in "ui" else 1.0
        return NormStats(spec, (0.0,) * n_channels, (top,) * n_channels, source)
    if pixels.dtype.kind in "ub" and pixels.dtype.itemsize <= 2 and pixels.size:
        offset, scale = _integer_stats(method, params, pixels)
    else:
        data = pixels.astype(np.float64)
        if method == "zscore":
            offset, scale = data.mean(axis=0), data.std(axis=0)
        else:
            low, high = np.percentile(data, params, axis=0)
            offset, scale = low, high - low
    flat = scale < _EPS
    if np.any(flat):
        log.warning(
            "channel(s) %s are constant in the statistics sample; using scale 1",
            np.flatnonzero(flat).tolist(),
        )
        scale = np.where(flat, 1.0, scale)
    return NormStats(
        spec,
        tuple(float(v) for v in offset),
        tuple(float(v) for v in scale),
        source,
    )


def _integer_stats(method: str, params: tuple[float, ...], pixels: np.ndarray):
    """Exact mean/std or percentiles of 8/16-bit pixels from per-channel histograms.

    Same numbers as ``numpy.mean``/``std``/``percentile`` (linear
    interpolation) on the float data, without a float copy of the sample.
    """
    offsets, scales = [], []
    values = None
    for c in range(pixels.shape[1]):
        counts = np.bincount(pixels[:, c].astype(np.intp, copy=False))
        values = np.arange(counts.size, dtype=np.float64)
        n = counts.sum()
        if method == "zscore":
            mean = (values * counts).sum() / n
            offsets.append(mean)
            scales.append(np.sqrt(((values - mean) ** 2 * counts).sum() / n))
        else:
            cum = np.cumsum(counts)
            qs = []
            for p in params:
                h = (n - 1) * p / 100.0
                lo, hi = int(np.floor(h)), int(np.ceil(h))
                v_lo = np.searchsorted(cum, lo, side="right")
                v_hi = np.searchsorted(cum, hi, side="right")
                qs.append(v_lo + (h - lo) * (v_hi - v_lo))
            offsets.append(qs[0])
            scales.append(qs[1] - qs[0])
    return np.asarray(offsets, dtype=np.float64), np.asarray(scales, dtype=np.float64)


def stats_sample(levels_shapes, read, *, min_side: int = 512, max_pixels: int = 4_194_304,
                 tile: int = 512) -> tuple[np.ndarray, str]:
    """Pick a low-resolution level and read a pixel sample for statistics.

    The smallest level whose shorter side is still ``>= min_side`` is read
    whole if it has at most ``max_pixels`` pixels; otherwise an evenly spread
    grid of ``tile``-sized blocks is read from it (at most ``max_pixels``).

    Parameters
    ----------
    levels_shapes : sequence of (int, int, int)
        ``(Y, X, C)`` of every level, level 0 first.
    read : callable
        ``read(level, y0, x0, y1, x1) -> (Y, X, C) array``.

    Returns
    -------
    pixels : numpy.ndarray
        ``(N, C)`` sample.
    source : str
        Human-readable description of what was read.
    """
    chosen = 0
    for i, (y, x, _) in enumerate(levels_shapes):
        if min(y, x) >= min_side:
            chosen = i
    y, x, c = levels_shapes[chosen]
    if y * x <= max_pixels:
        block = read(chosen, 0, 0, y, x)
        return block.reshape(-1, c), f"level {chosen} ({x}x{y}) whole"
    per_axis = max(1, int(np.sqrt(max_pixels / (tile * tile))))
    ys = np.linspace(0, max(0, y - tile), per_axis).astype(int)
    xs = np.linspace(0, max(0, x - tile), per_axis).astype(int)
    blocks = [
        read(chosen, int(y0), int(x0), min(y, int(y0) + tile), min(x, int(x0) + tile)).reshape(-1, c)
        for y0 in ys
        for x0 in xs
    ]
    source = f"level {chosen} ({x}x{y}), {len(blocks)} blocks of {tile}px on a regular grid"
    return np.concatenate(blocks, axis=0), source
