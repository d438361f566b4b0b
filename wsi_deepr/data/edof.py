"""Extended depth of field (EDOF) by wavelet max-modulus fusion with consistency checks.

The paper used a complex-wavelet EDOF (Forster et al., 2004).  This is the
standard real-valued equivalent: a shift-invariant (stationary) wavelet
transform of every plane; at each position and scale the detail coefficients
come from the plane of highest activity (sum of the three orientations'
moduli, averaged over a 3x3 window); the decision maps then pass a
*consistency check* (majority vote in a ``consistency x consistency``
neighbourhood, so isolated noisy decisions follow their neighbours); the
low-pass band is the mean over the planes.  Colour planes share one decision
map, computed on the luminance, so colours stay consistent.

Memory stays at a few planes' worth of coefficients: pass one decides, pass two
gathers the chosen coefficients plane by plane.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from wsi_deepr.data.stacks import to_gray

__all__ = ["EdofResult", "edof_wavelet"]

log = logging.getLogger(__name__)


@dataclass
class EdofResult:
    """Fused image and the decisions that made it.

    Attributes
    ----------
    image : numpy.ndarray
        ``(Y, X, C)`` float32 all-in-focus image.
    index_maps : numpy.ndarray
        ``(levels, Y, X)`` int16: the plane each level's detail came from
        (finest level first), after the consistency check.
    """

    image: np.ndarray
    index_maps: np.ndarray

    def plane_histogram(self, n_planes: int, level: int = 0) -> np.ndarray:
        """Fraction of pixels taken from each plane at ``level`` (0 = finest)."""
        counts = np.bincount(self.index_maps[level].ravel(), minlength=n_planes)
        return counts / counts.sum()


def _swt(img: np.ndarray, wavelet: str, levels: int) -> list:
    import pywt

    # [cA_n, (cH_n, cV_n, cD_n), ..., (cH_1, cV_1, cD_1)]
    return pywt.swt2(img, wavelet, level=levels, trim_approx=True, norm=True)


def edof_wavelet(
    planes: np.ndarray,
    *,
    wavelet: str = "db2",
    levels: int = 3,
    consistency: int = 5,
) -> EdofResult:
    """Fuse a registered focal series into one extended-depth-of-field image.

    Parameters
    ----------
    planes : numpy.ndarray
        ``(Z, Y, X, C)`` registered planes (any real dtype).
    wavelet : str
        PyWavelets wavelet name.
    levels : int
        Decomposition levels.
    consistency : int
        Side of the majority-vote window on the decision maps (odd, ``1``
        disables the check).

    Returns
    -------
    EdofResult
    """
    arr = np.asarray(planes)
    if arr.ndim != 4 or arr.shape[0] < 2:
        raise ValueError(f"planes of shape {arr.shape}: expected (Z, Y, X, C) with Z >= 2")
    if consistency < 1 or consistency % 2 == 0:
        raise ValueError(f"consistency={consistency!r}: an odd window side >= 1")
    z, h, w, c = arr.shape
    unit = 2**levels
    # mirror a margin wider than the coarsest filter's reach (the SWT is periodic),
    # then up to a multiple of 2**levels
    import pywt

    m = (pywt.Wavelet(wavelet).dec_len - 1) * unit
    ph, pw = m + (-(h + 2 * m)) % unit, m + (-(w + 2 * m)) % unit
    pad = ((m, ph), (m, pw))

    def prep(img: np.ndarray) -> np.ndarray:
        return np.pad(np.asarray(img, dtype=np.float64), pad, mode="symmetric")

    best = None
    index = None
    for k in range(z):
        coeffs = _swt(prep(to_gray(arr[k])), wavelet, levels)
        act = np.stack([ndimage.uniform_filter(np.abs(d[0]) + np.abs(d[1]) + np.abs(d[2]), 3)
                        for d in coeffs[1:]])  # coarsest level first
        if best is None:
            best, index = act, np.zeros(act.shape, dtype=np.int16)
        else:
            better = act > best
            best = np.where(better, act, best)
            index[better] = k
    assert index is not None
    if consistency > 1:
        votes_best = np.full(index.shape, -1.0, dtype=np.float32)
        voted = np.zeros_like(index)
        for k in range(z):
            votes = ndimage.uniform_filter((index == k).astype(np.float32), size=(1, consistency, consistency))
            better = votes > votes_best
            votes_best = np.where(better, votes, votes_best)
            voted[better] = k
        changed = float(np.mean(voted != index))
        log.debug("consistency check changed %.1f%% of decisions", 100 * changed)
        index = voted
    fused = np.empty((h, w, c), dtype=np.float32)
    for ch in range(c):
        low = None
        details = [np.zeros((3,) + index.shape[1:]) for _ in range(levels)]
        for k in range(z):
            coeffs = _swt(prep(arr[k, :, :, ch]), wavelet, levels)
            low = coeffs[0] if low is None else low + coeffs[0]
            for lev, d in enumerate(coeffs[1:]):
                take = index[lev] == k
                for o in range(3):
                    details[lev][o][take] = d[o][take]
        rec = pywt.iswt2([low / z] + [tuple(d) for d in details], wavelet, norm=True)
        fused[:, :, ch] = rec[m : m + h, m : m + w]
    # index maps: finest level first, cropped
    maps = index[::-1, m : m + h, m : m + w].copy()
    return EdofResult(image=fused, index_maps=maps)
