"""Blur features of image windows in physical units (pure numpy).

Every window is first brought to the canonical pixel size
:data:`CANONICAL_MPP` (anti-aliased reduction when finer, linear interpolation
when coarser), so the features mean the same thing at any µm/px:

* the radially averaged power spectrum of the Hann-tapered, mean-normalised
  grey window, averaged in :data:`BAND_EDGES` (cycles/µm) and expressed as
  log10 power relative to the lowest bands (the shape of the spectrum, not
  the amount of stain or light);
* edges across scales: the 75th percentile of the gradient magnitude of the
  window averaged over 0.5, 1 and 2 µm blocks, relative to 4 µm blocks;
* the white-noise level (from the 4-neighbour residual) on the same scale,
  so that noise is not mistaken for sharpness;
* the window's contrast (log10 variance / mean²);
* the log of the pixel size relative to the canonical one (coarser pixels
  lose the highest bands) and the numerical aperture (the same ``|z|`` blurs
  more at a higher NA).

:func:`texture_snr` decides whether there is anything to measure: structure
(the grey window smoothed over 1 µm) compared with the pixel noise, plus the
relative contrast; glass and blank background fall below both.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from wsi_deepr.imaging.reduce import area_mean
from wsi_deepr.optics.randomize import resample

__all__ = [
    "BAND_EDGES",
    "CANONICAL_MPP",
    "N_FEATURES",
    "band_features",
    "noise_sigma",
    "to_canonical_gray",
    "quantum",
    "texture_snr",
]

#: Pixel size (µm/px) at which every window is analysed.
CANONICAL_MPP: float = 0.5
#: Radial frequency band edges in cycles/µm (Nyquist at the canonical size is 1.0;
#: the last band is the spectrum's corners, 1.0-1.41).
BAND_EDGES: np.ndarray = np.array(
    [0.03, 0.06, 0.1, 0.15, 0.2, 0.26, 0.33, 0.41, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.42]
)
_REF_BANDS = 2  # bands averaged as the reference level of the spectrum
_EDGE_FACTORS = (1, 2, 4, 8)  # block-average factors (canonical px) of the edge features
_EDGE_Q = 0.75  # quantile of the gradient magnitude (0.99 follows saturated specks, not blur)
#: spectral shape (bands minus reference) + edge ratios + noise level + contrast + log pixel ratio + NA
N_FEATURES: int = (len(BAND_EDGES) - 1 - _REF_BANDS) + (len(_EDGE_FACTORS) - 1) + 4


def quantum(dtype: np.dtype, full_scale: float | None = None) -> float:
    """One grey level of ``dtype`` relative to full scale (0 for floats)."""
    return 1.0 / _full_scale(dtype, full_scale) if np.dtype(dtype).kind in "ui" else 0.0


def _full_scale(dtype: np.dtype, full_scale: float | None) -> float:
    if full_scale is not None:
        if not full_scale > 0:
            raise ValueError(f"full_scale={full_scale!r}: give the largest value of the pixel type (e.g. 255)")
        return float(full_scale)
    if np.dtype(dtype).kind in "ui":
        return float(np.iinfo(dtype).max)
    return 1.0


def to_canonical_gray(windows: np.ndarray, *, mpp: float, full_scale: float | None = None) -> np.ndarray:
    """Grey ``(N, S, S')`` float32 windows in ``[0, 1]`` at :data:`CANONICAL_MPP`.

    Parameters
    ----------
    windows : numpy.ndarray
        ``(N, H, W, C)`` pixels in the slide's type.
    mpp : float
        µm per pixel of ``windows``.
    full_scale : float, optional
        Value of a saturated pixel; default the integer type's maximum (1.0
        for floats).

    Returns
    -------
    numpy.ndarray
        The channel mean, divided by ``full_scale`` and resampled.
    """
    if not 0.01 <= mpp <= 20:
        raise ValueError(f"mpp={mpp!r}: give the windows' pixel size in µm/px (e.g. 0.5 for a 20x scan)")
    fs = _full_scale(windows.dtype, full_scale)
    gray = windows[..., 0].astype(np.float32)
    for c in range(1, windows.shape[3]):
        gray += windows[..., c]
    gray *= np.float32(1.0 / (fs * windows.shape[3]))
    n, h, w = gray.shape
    ratio = mpp / CANONICAL_MPP
    if abs(ratio - 1.0) < 0.02:
        return gray
    oh, ow = max(8, round(h * ratio)), max(8, round(w * ratio))
    # resample handles (Y, X, C): stack windows as channels
    out = resample(np.moveaxis(gray, 0, -1), (oh, ow))
    return np.ascontiguousarray(np.moveaxis(out.reshape(oh, ow, n), -1, 0))


def _hann(h: int, w: int) -> np.ndarray:
    return (np.hanning(h)[:, None] * np.hanning(w)[None, :]).astype(np.float32)


@lru_cache(maxsize=16)
def _band_matrix(h: int, w: int) -> np.ndarray:
    """``(h * (w // 2 + 1), n_bands)`` float32: averages rfft2 bins per radial band."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f_um = (np.sqrt(fy**2 + fx**2) / CANONICAL_MPP).ravel()  # cycles/µm
    idx = np.digitize(f_um, BAND_EDGES) - 1  # -1 below the first edge, len-1 above the last
    nb = len(BAND_EDGES) - 1
    m = np.zeros((f_um.size, nb), np.float32)
    keep = (idx >= 0) & (idx < nb)
    m[np.flatnonzero(keep), idx[keep]] = 1.0
    return m / np.maximum(m.sum(axis=0), 1.0)[None, :]


def band_features(gray: np.ndarray, *, mpp: float, na: float, sigma: np.ndarray | None = None) -> np.ndarray:
    """Feature matrix ``(N, N_FEATURES)`` of canonical grey windows.

    Parameters
    ----------
    gray : numpy.ndarray
        Output of :func:`to_canonical_gray`.
    mpp : float
        The original pixel size (µm/px), recorded as ``log2(mpp / 0.5)``.
    na : float
        Numerical aperture (given or from the prior).
    sigma : numpy.ndarray, optional
        :func:`noise_sigma` of ``gray`` when already computed.
    """
    n, h, w = gray.shape
    mean = gray.reshape(n, -1).mean(axis=1)
    safe = np.maximum(mean, 1e-4)
    centred = (gray - mean[:, None, None]) / safe[:, None, None]
    spec = np.abs(np.fft.rfft2(centred * _hann(h, w)[None], axes=(1, 2))) ** 2
    onehot = _band_matrix(h, w)
    power = spec.reshape(n, -1) @ onehot + 1e-12  # mean power per band
    logp = np.log10(power)
    ref = logp[:, :_REF_BANDS].mean(axis=1, keepdims=True)
    var = centred.reshape(n, -1).var(axis=1)
    hann2 = float((_hann(h, w) ** 2).sum())
    sigma = noise_sigma(gray) if sigma is None else np.asarray(sigma)
    noise = (sigma / safe) ** 2 * hann2  # white-noise power per frequency bin
    feats = np.concatenate(
        [logp[:, _REF_BANDS:] - ref,
         _edge_features(centred),
         np.log10(noise + 1e-12)[:, None] - ref,
         np.log10(var + 1e-8)[:, None],
         np.full((n, 1), np.log2(mpp / CANONICAL_MPP)),
         np.full((n, 1), float(na))], axis=1)
    return feats.astype(np.float64)


def noise_sigma(gray: np.ndarray) -> np.ndarray:
    """Pixel noise of each window: robust spread of the 4-neighbour residual.

    The median absolute deviation is robust to texture but vanishes on low
    counts (mostly equal grey levels), so it is floored by half the
    residual's standard deviation.
    """
    g = gray
    resid = g[:, 1:-1, 1:-1] - 0.25 * (g[:, :-2, 1:-1] + g[:, 2:, 1:-1] + g[:, 1:-1, :-2] + g[:, 1:-1, 2:])
    sub = resid[:, ::2, ::2].reshape(len(g), -1)  # a quarter of the pixels is plenty for a median
    med = np.median(sub, axis=1)
    mad = np.median(np.abs(sub - med[:, None]), axis=1)
    sd_r = resid.reshape(len(g), -1).std(axis=1)
    return np.maximum(1.4826 * mad, 0.5 * sd_r) / 1.118  # residual of white noise has 1.25x its variance


def _edge_features(centred: np.ndarray) -> np.ndarray:
    """Edges across scales: log10 of the 75th percentile of the gradient
    magnitude (per original pixel) of the window block-averaged by 1, 2 and 4,
    each relative to 8 (blur flattens the ratios; content mostly cancels)."""
    n, h, w = centred.shape
    out = []
    img = centred[:, : h // 8 * 8, : w // 8 * 8]
    for f in _EDGE_FACTORS:
        if f > 1:
            hh, ww = img.shape[1] // 2, img.shape[2] // 2
            img = img.reshape(n, hh, 2, ww, 2).mean(axis=(2, 4))
        gy = np.diff(img, axis=1)[:, :, :-1]
        gx = np.diff(img, axis=2)[:, :-1, :]
        mag2 = (gy * gy + gx * gx).reshape(n, -1)
        k = int(_EDGE_Q * (mag2.shape[1] - 1))
        p99 = np.sqrt(np.partition(mag2, k, axis=1)[:, k])
        out.append(np.log10(p99 / f + 1e-6))
    return np.stack([o - out[-1] for o in out[:-1]], axis=1)


def texture_snr(gray: np.ndarray, *, step: float = 1.0 / 255.0, sigma: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Structure-to-noise ratio and relative contrast of canonical grey windows.

    ``step`` is one grey level of the original pixels in the units of ``gray``
    (``1 / full_scale`` for integers, 0 for floats): its quantisation noise is
    part of the noise floor.  ``sigma``: :func:`noise_sigma` when already computed.

    Returns
    -------
    snr : numpy.ndarray
        ``(N,)``: standard deviation of the window smoothed over 1 µm (a 2x2
        box at 0.5 µm/px, applied twice) divided by what pixel noise alone
        would leave after the same smoothing (noise from the median absolute
        4-neighbour residual, at least half its standard deviation).
    contrast : numpy.ndarray
        ``(N,)``: that smoothed standard deviation over the window's mean.
    od_range : numpy.ndarray
        ``(N,)``: ``log10(p98 / p2)`` of the window's 2-µm block means, the
        spread of its optical density (brightfield: glass with a shading step
        or noise stays below 0.05, tissue does not).
    """
    g = gray.astype(np.float32)
    sigma_n = noise_sigma(g) if sigma is None else np.asarray(sigma)
    s = 0.25 * (g[:, 1:, 1:] + g[:, :-1, 1:] + g[:, 1:, :-1] + g[:, :-1, :-1])
    s = 0.25 * (s[:, 1:, 1:] + s[:, :-1, 1:] + s[:, 1:, :-1] + s[:, :-1, :-1])
    sd = s.reshape(len(g), -1).std(axis=1)
    # two 2x2 box filters: weights 1,2,1 x 1,2,1 / 16 -> noise std factor sqrt(36)/16 = 0.375
    floor = 0.375 * sigma_n + 0.5 * step / np.sqrt(12.0) + 1e-9  # plus quantisation of one grey level
    snr = sd / floor
    contrast = sd / np.maximum(g.reshape(len(g), -1).mean(axis=1), 1e-4)
    n, h, w = g.shape
    blocks = area_mean(g.transpose(1, 2, 0), 4, edge="crop", dtype=np.float64).transpose(2, 0, 1).reshape(n, -1)
    lo, hi = np.percentile(blocks, [2, 98], axis=1)
    od_range = np.log10(np.maximum(hi, 1e-4) / np.maximum(lo, 1e-4))
    return snr.astype(np.float64), contrast.astype(np.float64), od_range.astype(np.float64)
