"""Brightfield defocus under Köhler illumination: partially coherent imaging by Abbe's method.

A brightfield scanner lights the specimen through a condenser whose aperture
(``condenser_na``) is smaller than the objective's: the imaging is partially
coherent, not incoherent.  A thin specimen is a complex transmittance
``t = sqrt(T) exp(i phi)``: ``T`` its intensity transmittance (the in-focus
image) and ``phi`` the phase its stained tissue adds, taken here as
proportional to the optical density (``phase_per_od`` radians per unit OD at
0.55 µm, scaled by ``0.55 / lambda``).  Every point ``s`` of the condenser
disk lights it with a tilted plane wave; the objective's pupil ``P`` (defocus
and aberrations, :mod:`wsi_deepr.optics.psf`) filters the shifted spectrum
and the image is the sum of the intensities (Abbe):

    I(x) = mean_s | IFT( P(f) T_hat(f - s) ) |^2

With phase, defocus by ``+z`` and ``-z`` changes contrast differently
(phase turns into intensity with the sign of ``z``); an incoherent model
(:func:`wsi_deepr.optics.defocus`) cannot show that.  Source points lie on
the FFT frequency grid (exact spectrum shifts), thinned to about
``source_points``; the field is computed on a 2x finer grid (``|.|^2``
doubles the bandwidth) and the intensity brought back to the pixel grid
band-limited, as :func:`wsi_deepr.optics.psf` does.  Clear glass stays at
intensity 1.  Used to evaluate restoration on optics outside the training
recipe (``benchmarks/unseen_eval.py --illumination koehler``).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft as sfft

from wsi_deepr.optics.psf import OpticalSetting, _pupil, psf_radius_px

__all__ = ["defocus_koehler"]

#: Wavelength (µm) at which ``phase_per_od`` is given.
PHASE_WAVELENGTH_UM = 0.55


def _source_shifts(radius_cycles: float, df: float, points: int) -> list[tuple[int, int]]:
    """Integer spectrum shifts (ky, kx) sampling the condenser disk on a lattice of about ``points``."""
    r = radius_cycles / df  # disk radius in frequency samples
    if r < 1:
        return [(0, 0)]
    step = max(1, int(math.floor(r * math.sqrt(math.pi / max(points, 1)))))
    n = int(math.floor(r / step))
    return [(iy * step, ix * step) for iy in range(-n, n + 1) for ix in range(-n, n + 1)
            if (iy * step) ** 2 + (ix * step) ** 2 <= r * r]


def defocus_koehler(
    transmittance: np.ndarray,
    setting: OpticalSetting,
    z_um: float = 0.0,
    *,
    condenser_na: float = 0.45,
    phase_per_od: float = 1.0,
    source_points: int = 60,
    workers: int | None = None,
) -> np.ndarray:
    """Image ``transmittance`` ``z_um`` out of focus with a Köhler-illuminated brightfield microscope.

    Parameters
    ----------
    transmittance : numpy.ndarray
        ``(Y, X, C)`` (or ``(Y, X)``) intensity transmittance in ``[0, 1]``:
        the in-focus image of the specimen, glass = 1.
    setting : OpticalSetting
        Objective (NA, aberrations), one wavelength per channel, pixel size.
    z_um : float
        Defocus in µm (its sign matters once the specimen has phase).
    condenser_na : float
        Numerical aperture of the illumination, ``0 < condenser_na <= setting.na``
        (scanners: about 0.5-0.7 of the objective's).
    phase_per_od : float
        Phase (radians at 0.55 µm) the specimen adds per unit of optical
        density; 0 is a pure absorber (then ``±z`` look alike).
    source_points : int
        About how many condenser points are summed (accuracy against time).
    workers : int, optional
        Threads for :mod:`scipy.fft`.

    Returns
    -------
    numpy.ndarray
        ``float32`` intensities of the input's shape (reflected at the borders).

    Raises
    ------
    ValueError
        On a condenser aperture outside ``(0, setting.na]`` or a channel count
        that does not match the wavelengths.
    """
    if not 0 < condenser_na <= setting.na:
        raise ValueError(f"condenser_na={condenser_na!r}: must lie in (0, NA of the objective = {setting.na}]")
    arr = np.asarray(transmittance, dtype=np.float64)
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[:, :, None]
    h, w, c = arr.shape
    if setting.n_channels not in (1, c):
        raise ValueError(f"image has {c} channels but the setting has {setting.n_channels} wavelengths")
    trans = np.clip(arr, 1e-4, 1.0)
    od = -np.log10(trans).mean(axis=2)  # one specimen thickness for every wavelength
    r = psf_radius_px(setting, z_um)
    n = sfft.next_fast_len(max(h, w) + 2 * r)
    py, px = n - h - r, n - w - r
    out = np.empty((h, w, c), dtype=np.float32)
    fine, dx_fine = 2 * n, setting.pixel_size_um / 2
    for ch in range(c):
        wl = setting.wavelengths_um[ch if setting.n_channels == c else 0]
        phase = phase_per_od * od * (PHASE_WAVELENGTH_UM / wl)
        field = np.sqrt(trans[:, :, ch]) * np.exp(1j * phase)
        field = np.pad(field, ((r, py), (r, px)), mode="symmetric")
        spec = sfft.fft2(field, workers=workers)
        # 2x finer grid: the spectrum zero-padded (the object itself is band-limited to the pixel grid)
        big = np.zeros((fine, fine), dtype=np.complex128)
        half = n // 2
        rows = np.r_[0:n - half, fine - half:fine]
        big[np.ix_(rows, rows)] = spec[np.ix_(np.r_[0:n - half, n - half:n], np.r_[0:n - half, n - half:n])]
        big *= 4.0  # amplitude kept under the finer inverse transform
        pupil = _pupil(setting, wl, z_um, fine, dx_fine)
        shifts = _source_shifts(condenser_na / wl, 1.0 / (fine * dx_fine), source_points)
        intensity = np.zeros((fine, fine))
        for ky, kx in shifts:
            amp = sfft.ifft2(pupil * np.roll(big, (ky, kx), axis=(0, 1)), workers=workers)
            intensity += amp.real**2 + amp.imag**2
        intensity /= len(shifts)
        # back to the pixel grid, band-limited: keep the central n x n frequencies
        ispec = sfft.fft2(intensity, workers=workers)
        crop = ispec[np.ix_(rows, rows)] / 4.0
        coarse = sfft.ifft2(crop, workers=workers).real
        out[:, :, ch] = coarse[r:r + h, r:r + w]
    return out[:, :, 0] if squeeze else out
