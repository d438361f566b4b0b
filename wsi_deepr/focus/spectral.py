"""Defocus signature of a window's power spectrum (pure numpy).

Defocus multiplies an image's spectrum by the defocus OTF, whose zero rings
(and contrast reversals) sit at frequencies fixed by ``|z|``, the NA and the
wavelength.  An object that is merely smooth (large, soft nuclei; an image
upsampled from coarser pixels) has a spectrum that falls off but has no such
rings.  The blind estimator (:mod:`wsi_deepr.focus.estimate`) reads only the
spectrum's coarse shape and can take the one for the other.

:func:`spectral_fit` fits the radially averaged power spectrum ``P(f)`` of
each window with

    ``P(f) = A f**-beta |OTF_z(f)|**2 + N``

(an object spectrum that is a power law, the aberration-free defocus OTF of
``|z|``, white noise ``N`` measured from the pixels) over a grid of ``|z|``
and ``beta``, in log power, over the frequencies where the window holds
signal above the noise.  It returns the best ``|z|`` and how much worse the
best fit with ``|z|`` at most ``near_um`` is (the ratio of the mean squared
log residuals).  A ratio near 1 says the spectrum needs no defocus: in focus
fits it as well as anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["SpectralFit", "spectral_fit"]

#: |z| grid of the fit (µm).
Z_GRID_UM: np.ndarray = np.arange(0.0, 8.01, 0.25)
#: Exponents of the object's power-law spectrum tried.
BETA_GRID: np.ndarray = np.arange(0.0, 6.01, 0.5)
_FIRST_BIN = 2  # radial bins below this hold the window's mean and taper, not its structure
_SIGNAL_FACTOR = 3.0  # a bin holds signal when its power exceeds this many noise powers
_EXTRA_BINS = 6  # bins fitted beyond the last one with signal (the noise floor they reach)
_MIN_BINS = 8
_GN_STEPS = 4
_CHUNK = 32  # windows fitted at once (about 1 MB of work arrays each)


@dataclass(frozen=True)
class SpectralFit:
    """Per-window result of :func:`spectral_fit`.

    Attributes
    ----------
    defocus_um : numpy.ndarray
        ``(N,)`` the ``|z|`` of the best fit.
    near_fit_um : numpy.ndarray
        ``(N,)`` the ``|z|`` of the best fit with ``|z| <= near_um``.
    near_ratio : numpy.ndarray
        ``(N,)`` mean squared log residual of the best fit with ``|z| <=
        near_um`` over that of the best fit (``>= 1``; 1: in focus explains
        the spectrum as well as any defocus).
    ratios : numpy.ndarray
        ``(N, Z)`` the same ratio for every ``|z|`` of :data:`Z_GRID_UM`.
    """

    defocus_um: np.ndarray
    near_fit_um: np.ndarray
    near_ratio: np.ndarray
    ratios: np.ndarray

    def ratio_at(self, z_um: np.ndarray, *, tolerance_um: float = 0.5) -> np.ndarray:
        """``(N,)`` best residual ratio within ``tolerance_um`` of each window's ``z_um`` (NaN where NaN)."""
        z = np.asarray(z_um, dtype=np.float64).reshape(-1, 1)
        close = np.abs(Z_GRID_UM[None, :] - np.nan_to_num(z, nan=-99.0)) <= tolerance_um + 1e-9
        out = np.where(close, self.ratios, np.inf).min(axis=1)
        return np.where(np.isfinite(z[:, 0]) & close.any(axis=1), out, np.nan)


@lru_cache(maxsize=8)
def _radial(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin index of every rfft2 coefficient (1 / min(h, w) cycles/px wide), bin counts, bin centres (cycles/px)."""
    side = min(h, w)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    idx = np.floor(np.sqrt(fy**2 + fx**2) * side).astype(np.int64).ravel()
    nb = side // 2
    idx[idx >= nb] = nb  # corners beyond Nyquist: dropped
    counts = np.bincount(idx, minlength=nb + 1)[:nb].astype(np.float64)
    centres = (np.arange(nb) + 0.5) / side
    return idx, counts, centres


def _radial_mean(values: np.ndarray, idx: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``(N, nb)`` radial means of ``(N, h, w//2+1)`` values."""
    nb = len(counts)
    flat = values.reshape(len(values), -1)
    sums = np.zeros((len(values), nb + 1))
    for k in range(len(values)):
        sums[k] = np.bincount(idx, weights=flat[k], minlength=nb + 1)
    return sums[:, :nb] / np.maximum(counts, 1.0)[None, :]


@lru_cache(maxsize=16)
def _otf_power(na: float, wavelengths_um: tuple[float, ...], mpp: float, h: int, w: int) -> np.ndarray:
    """``(Z, nb)`` radially averaged ``|mean_c OTF_c(z)|**2`` over :data:`Z_GRID_UM`."""
    from wsi_deepr.optics import OpticalSetting, otf

    setting = OpticalSetting(na=na, wavelengths_um=wavelengths_um, pixel_size_um=mpp)
    idx, counts, _ = _radial(h, w)
    rows = [np.abs(otf(setting, float(z), (h, w)).mean(axis=0)) ** 2 for z in Z_GRID_UM]
    return _radial_mean(np.stack(rows), idx, counts)


def spectral_fit(
    gray: np.ndarray,
    *,
    sigma: np.ndarray,
    mpp: float,
    na: float,
    wavelengths_um: tuple[float, ...],
    near_um: float,
) -> SpectralFit:
    """Fit each window's power spectrum with a defocused power law.

    Parameters
    ----------
    gray : numpy.ndarray
        ``(N, H, W)`` grey windows (:func:`~wsi_deepr.focus.features.to_canonical_gray`).
    sigma : numpy.ndarray
        ``(N,)`` pixel noise of the windows, in the units of ``gray``
        (:func:`~wsi_deepr.focus.features.noise_sigma`).
    mpp : float
        µm per pixel of ``gray``.
    na : float
        Objective numerical aperture.
    wavelengths_um : tuple of float
        The channels' wavelengths (µm) averaged into ``gray``.
    near_um : float
        ``|z|`` up to which a fit counts as near focus.

    Returns
    -------
    SpectralFit
    """
    g = np.asarray(gray, dtype=np.float64)
    if g.ndim != 3 or min(g.shape[1:]) < 32:
        raise ValueError(f"gray of shape {g.shape}: give (N, H, W) windows of at least 32x32 px")
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (len(g),))
    if not len(g):
        empty = np.zeros(0)
        return SpectralFit(defocus_um=empty, near_fit_um=empty, near_ratio=empty, ratios=np.zeros((0, len(Z_GRID_UM))))
    h2 = _otf_power(float(na), tuple(float(x) for x in wavelengths_um), float(mpp), g.shape[1], g.shape[2])
    rss = np.concatenate([_fit(g[i:i + _CHUNK], sig[i:i + _CHUNK], h2, mpp) for i in range(0, len(g), _CHUNK)])
    rel = rss / np.maximum(rss.min(axis=1), 1e-12)[:, None]
    near = Z_GRID_UM <= near_um + 1e-9
    return SpectralFit(defocus_um=Z_GRID_UM[np.argmin(rel, axis=1)],
                       near_fit_um=Z_GRID_UM[near][np.argmin(rel[:, near], axis=1)],
                       near_ratio=rel[:, near].min(axis=1), ratios=rel)


def _fit(g: np.ndarray, sigma: np.ndarray, h2: np.ndarray, mpp: float) -> np.ndarray:
    """``(n, Z)`` mean squared log residual of the best power law at every ``|z|`` (one chunk of windows)."""
    n, h, w = g.shape
    idx, counts, centres = _radial(h, w)
    nb = len(counts)
    mean = np.maximum(g.reshape(n, -1).mean(axis=1), 1e-4)
    hann = np.hanning(h)[:, None] * np.hanning(w)[None, :]
    centred = (g - g.reshape(n, -1).mean(axis=1)[:, None, None]) / mean[:, None, None]
    power = _radial_mean(np.abs(np.fft.rfft2(centred * hann[None], axes=(1, 2))) ** 2, idx, counts)
    noise = np.maximum((sigma / mean) ** 2 * float((hann**2).sum()), 1e-20)  # white noise per bin
    k = np.arange(nb)
    signal = (power > _SIGNAL_FACTOR * noise[:, None]) & (k[None, :] >= _FIRST_BIN)
    last = np.where(signal.any(axis=1), nb - 1 - np.argmax(signal[:, ::-1], axis=1), _FIRST_BIN)
    kmax = np.clip(last + _EXTRA_BINS, _FIRST_BIN + _MIN_BINS, nb - 1)
    mask = (k[None, :] >= _FIRST_BIN) & (k[None, :] <= kmax[:, None])
    wts = (mask / mask.sum(axis=1, keepdims=True))[:, None, None, :]  # (n, 1, 1, K)
    logf = np.log(np.maximum(centres, 1e-6) / mpp)  # cycles/µm
    logm = -BETA_GRID[None, :, None] * logf[None, None, :] + np.log(h2[:, None, :] + 1e-12)  # (Z, B, K)
    lp = np.log(np.maximum(power, 1e-30))[:, None, None, :]
    ln = np.log(noise)[:, None, None, None]
    # start from the amplitude that matches the first bins (OTF ~1, signal dominant), then Gauss-Newton
    lo = slice(_FIRST_BIN, _FIRST_BIN + 3)
    a = (lp[..., lo] - logm[None, :, :, lo]).mean(axis=-1)  # (n, Z, B)
    for _ in range(_GN_STEPS):
        am = a[..., None] + logm[None]
        pred = np.logaddexp(am, ln)
        s = np.exp(am - pred)
        r = lp - pred
        a = a + np.clip((wts * s * r).sum(axis=-1) / ((wts * s * s).sum(axis=-1) + 1e-9), -3.0, 3.0)
    pred = np.logaddexp(a[..., None] + logm[None], ln)
    return (wts * (lp - pred) ** 2).sum(axis=-1).min(axis=2)
