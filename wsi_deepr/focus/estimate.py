"""Blind defocus estimation per window (PROVISIONAL: replaced by the estimator of issue 12 part 1).

The ratio of high- to low-frequency power of a window is compared with the
same ratio predicted by the project's optics (:mod:`wsi_deepr.optics`) for a
natural-image spectrum (``1/f^2``) blurred by the defocus OTF; the defocus
whose predicted attenuation matches the observed one is the estimate.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = ["IN_FOCUS_UM", "DefocusEstimate", "estimate_defocus"]

#: defocus (µm) below which a window is called in focus
IN_FOCUS_UM: float = 1.0

_Z_GRID = np.arange(0.0, 10.01, 0.25)
_SIDE = 128  # analysis side (px); larger windows are centre-cropped
_LOW, _HIGH = (0.03, 0.10), (0.15, 0.35)  # bands in cycles/px
_IN_FOCUS_RATIO, _SLOPE = -4.0, 1.0


@dataclass(frozen=True)
class DefocusEstimate:
    """Defocus magnitude ``|z|`` in µm (NaN = no estimate) and a confidence in [0, 1] per window."""

    defocus_um: np.ndarray
    confidence: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """Boolean mask of the windows that have an estimate."""
        return np.isfinite(self.defocus_um)


def _radial(side: int) -> np.ndarray:
    fy = np.fft.fftfreq(side)[:, None]
    fx = np.fft.rfftfreq(side)[None, :]
    return np.hypot(fy, fx)


@functools.lru_cache(maxsize=16)
def _curve(mpp: float, na: float) -> np.ndarray:
    """Predicted log power ratio (high/low band) for every z of ``_Z_GRID``."""
    from wsi_deepr.optics import OpticalSetting, otf

    setting = OpticalSetting(na=na, wavelengths_um=(0.55,), pixel_size_um=mpp)
    f = _radial(_SIDE)
    spectrum = 1.0 / np.maximum(f, 1.0 / _SIDE) ** 2
    low, high = (f >= _LOW[0]) & (f < _LOW[1]), (f >= _HIGH[0]) & (f < _HIGH[1])
    out = []
    for z in _Z_GRID:
        power = np.abs(otf(setting, float(z), (_SIDE, _SIDE))[0]) ** 2 * spectrum
        out.append(np.log(power[high].mean() + 1e-30) - np.log(power[low].mean() + 1e-30))
    out = np.minimum.accumulate(np.asarray(out))  # non-increasing in z (side lobes ignored)
    # calibrated on CMU-1-Small-Region defocused by the project's optics: real in-focus H&E sits at
    # about -3.9 and its ratio falls as the 1/f^2 model predicts
    return _IN_FOCUS_RATIO + _SLOPE * (out - out[0])


def estimate_defocus(windows: np.ndarray, *, mpp: float, modality: str = "brightfield",
                     full_scale: float | None = None, na: float | None = None) -> DefocusEstimate:
    """Estimate the defocus of each window.

    Parameters
    ----------
    windows : numpy.ndarray
        ``(N, Y, X)`` or ``(N, Y, X, C)`` pixels.
    mpp : float
        µm per pixel of the windows.
    modality : {"brightfield", "fluorescence"}
        Brightfield uses optical density, fluorescence the intensity.
    full_scale : float, optional
        Largest value of the pixel type (default from the dtype).
    na : float, optional
        Numerical aperture (default 0.75).

    Returns
    -------
    DefocusEstimate
    """
    arr = np.asarray(windows)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise ValueError(f"windows of shape {arr.shape}: expected (N, Y, X) or (N, Y, X, C)")
    if not mpp or mpp <= 0:
        raise ValueError(f"mpp={mpp!r}: give the windows' µm per pixel")
    full = float(full_scale or (np.iinfo(arr.dtype).max if arr.dtype.kind in "ui" else 1.0))
    n, h, w, _ = arr.shape
    side = min(_SIDE, h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    crop = arr[:, y0:y0 + side, x0:x0 + side].astype(np.float32) / full
    if modality == "brightfield":
        gray = -np.log10(np.clip(crop, 1.0 / 255, 1.0)).mean(axis=-1)
    else:
        gray = crop.mean(axis=-1)
    gray = gray - gray.mean(axis=(1, 2), keepdims=True)
    contrast = gray.std(axis=(1, 2))
    hann = np.outer(np.hanning(side), np.hanning(side)).astype(np.float32)
    power = np.abs(np.fft.rfft2(gray * hann, axes=(1, 2))) ** 2
    f = _radial(side)
    low, high = (f >= _LOW[0]) & (f < _LOW[1]), (f >= _HIGH[0]) & (f < _HIGH[1])
    ratio = np.log(power[:, high].mean(axis=1) + 1e-30) - np.log(power[:, low].mean(axis=1) + 1e-30)
    curve = _curve(round(float(mpp), 3), float(na or 0.75))
    keep = np.concatenate([[True], np.diff(curve) < 0])  # strictly decreasing part for interpolation
    z = np.interp(-ratio, -curve[keep], _Z_GRID[keep])
    floor = 0.01 if modality == "brightfield" else 0.002
    valid = contrast > floor
    defocus = np.where(valid, z, np.nan).astype(np.float64)
    confidence = np.where(valid, 1.0 - np.exp(-contrast / (4 * floor)), 0.0).astype(np.float64)
    return DefocusEstimate(defocus_um=defocus, confidence=np.clip(confidence, 0.0, 1.0))
