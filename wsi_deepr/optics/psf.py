"""Scalar-diffraction defocus PSF and OTF of an incoherent microscope.

The pupil is a disc of radius ``NA / lambda`` in spatial frequency.  Defocus by
``z`` multiplies it by ``exp(i 2 pi z (kz - n / lambda))`` with the axial wave
number ``kz = sqrt((n / lambda)^2 - f^2)`` (no paraxial approximation), and
primary spherical aberration by ``exp(i 2 pi a Z11(rho))`` with the Noll-11
Zernike polynomial ``sqrt(5) (6 rho^4 - 6 rho^2 + 1)`` and ``a`` in waves RMS.
The incoherent intensity PSF is ``|IFT(pupil)|^2``.

The PSF is computed on an oversampled grid (so that squaring the amplitude does
not alias), and brought to the pixel grid *band-limited*: its spectrum (the
continuous OTF) is cropped to the pixel grid's Nyquist band.  Applied to an
already sampled image it is then the continuous OTF at the image's frequencies,
with no extra pixel-integration blur.  Like any band-limited kernel sampled at
coarse pixels, such a PSF may ring slightly negative; its OTF never exceeds 1.
FFTs run in single precision (relative error ~1e-6).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

__all__ = [
    "OpticalSetting",
    "otf",
    "psf",
    "psf_fwhm_um",
    "psf_radius_px",
    "pupil_energy",
]

log = logging.getLogger(__name__)

#: Half-width of the PSF window beyond the geometric blur, in units of lambda/NA.
_DIFFRACTION_REACH = 4.0
#: Transverse reach of Noll-11 spherical aberration per wave RMS, in lambda/NA
#: (maximum of d/d rho of sqrt(5)(6 rho^4 - 6 rho^2 + 1), i.e. 12 sqrt(5)).
_SPHERICAL_REACH = 12.0 * math.sqrt(5.0)


@dataclass(frozen=True)
class OpticalSetting:
    """One optical configuration: objective, wavelengths and sampling.

    Parameters
    ----------
    na : float
        Numerical aperture of the objective, ``0 < na <= refractive_index``.
    wavelengths_um : tuple of float
        One wavelength per image channel in µm: the centre wavelengths of the
        R, G, B filters for brightfield, the emission wavelength for
        fluorescence.
    pixel_size_um : float
        Sample-plane pixel size in µm.
    refractive_index : float
        Refractive index ``n`` of the immersion medium (1.0 dry, 1.518 oil).
    spherical_waves : float
        Primary spherical aberration: Noll-11 Zernike coefficient in waves RMS.
        Zero makes the PSF symmetric in ``±z``.
    astigmatism_waves : float
        Primary astigmatism along the image axes: Noll-6 coefficient
        (``sqrt(6) rho^2 cos 2 theta``) in waves RMS.
    coma_waves : float
        Primary coma along x: Noll-8 coefficient (``sqrt(8) (3 rho^3 - 2 rho)
        cos theta``) in waves RMS.
    """

    na: float
    wavelengths_um: tuple[float, ...]
    pixel_size_um: float
    refractive_index: float = 1.0
    spherical_waves: float = 0.0
    astigmatism_waves: float = 0.0
    coma_waves: float = 0.0

    def __post_init__(self) -> None:
        wl = self.wavelengths_um
        if np.isscalar(wl):
            wl = (float(wl),)
        wl = tuple(float(w) for w in wl)
        object.__setattr__(self, "wavelengths_um", wl)
        if not wl or any(not (0.1 <= w <= 5.0) for w in wl):
            raise ValueError(
                f"wavelengths_um={wl!r}: give one wavelength per channel in µm "
                "(e.g. 0.52 for green; 0.1 to 5 µm accepted)"
            )
        if not (0 < self.pixel_size_um < 100):
            raise ValueError(
                f"pixel_size_um={self.pixel_size_um!r}: give the sample-plane pixel size "
                "in µm (e.g. 0.5 for a 20x scan)"
            )
        if not (self.refractive_index >= 1.0):
            raise ValueError(
                f"refractive_index={self.refractive_index!r}: must be >= 1 "
                "(1.0 for dry objectives, 1.518 for oil)"
            )
        for name in ("spherical_waves", "astigmatism_waves", "coma_waves"):
            value = getattr(self, name)
            if not (np.isfinite(value) and abs(value) <= 2.0):
                raise ValueError(f"{name}={value!r}: give a Zernike coefficient in waves RMS within ±2 "
                                 "(real objectives: below 0.1)")
        if not (0 < self.na <= self.refractive_index):
            raise ValueError(
                f"na={self.na!r}: the numerical aperture must lie in "
                f"(0, refractive_index={self.refractive_index}]"
            )

    @property
    def n_channels(self) -> int:
        """Number of channels (one per wavelength)."""
        return len(self.wavelengths_um)

    def to_dict(self) -> dict:
        """Plain-JSON description, for provenance (astigmatism and coma only when not zero)."""
        d = {
            "na": self.na,
            "wavelengths_um": list(self.wavelengths_um),
            "pixel_size_um": self.pixel_size_um,
            "refractive_index": self.refractive_index,
            "spherical_waves": self.spherical_waves,
        }
        for name in ("astigmatism_waves", "coma_waves"):
            if getattr(self, name):
                d[name] = getattr(self, name)
        return d


def _oversampling(setting: OpticalSetting, wavelength: float) -> int:
    """Odd oversampling factor so the intensity OTF (cutoff 2 NA/lambda) fits."""
    need = 4.0 * setting.na * setting.pixel_size_um / wavelength
    os_ = max(1, math.ceil(need * 1.05))
    return os_ if os_ % 2 else os_ + 1


def psf_radius_px(setting: OpticalSetting, z_um: float) -> int:
    """Half-width in pixels of the window that holds the PSF at defocus ``z_um``.

    Geometric blur ``|z| tan(asin(NA/n))`` plus the reach of the
    aberrations (the spherical term's, for their summed coefficients) plus :data:`_DIFFRACTION_REACH` ``lambda/NA`` of diffraction
    tails, for the longest wavelength.
    """
    wl = max(setting.wavelengths_um)
    sin_t = min(setting.na / setting.refractive_index, 0.999)
    geometric = abs(float(z_um)) * sin_t / math.sqrt(1.0 - sin_t**2)
    aberration = abs(setting.spherical_waves) + abs(setting.astigmatism_waves) + abs(setting.coma_waves)
    spread = (_DIFFRACTION_REACH + _SPHERICAL_REACH * aberration) * wl / setting.na
    return math.ceil((geometric + spread) / setting.pixel_size_um) + 2


@functools.lru_cache(maxsize=16)
def _freq_xy(n_fine: int, dx_fine: float) -> tuple[np.ndarray, np.ndarray]:
    """``(fy, fx)`` spatial frequencies of every sample of an ``n_fine`` FFT grid (read-only)."""
    f = sfft.fftfreq(n_fine, d=dx_fine)
    fy = np.broadcast_to(f[:, None], (n_fine, n_fine))
    fx = np.broadcast_to(f[None, :], (n_fine, n_fine))
    return fy, fx


@functools.lru_cache(maxsize=16)
def _freq2(n_fine: int, dx_fine: float) -> np.ndarray:
    """Squared spatial frequency of every sample of an ``n_fine`` FFT grid (read-only)."""
    f = sfft.fftfreq(n_fine, d=dx_fine)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    f2.setflags(write=False)
    return f2


def _pupil(
    setting: OpticalSetting, wavelength: float, z_um: float, n_fine: int, dx_fine: float
) -> np.ndarray:
    """Complex pupil (complex64) sampled on the FFT grid of ``n_fine`` samples at ``dx_fine``."""
    f2 = _freq2(n_fine, dx_fine)
    cutoff = setting.na / wavelength
    inside = f2 <= cutoff**2
    fi = f2[inside]
    k = setting.refractive_index / wavelength
    phase = np.zeros_like(fi)
    if z_um:
        phase += 2.0 * np.pi * float(z_um) * (np.sqrt(np.maximum(k**2 - fi, 0.0)) - k)
    if setting.spherical_waves:
        rho2 = fi / cutoff**2
        phase += 2.0 * np.pi * setting.spherical_waves * math.sqrt(5.0) * (6.0 * rho2**2 - 6.0 * rho2 + 1.0)
    if setting.astigmatism_waves or setting.coma_waves:
        fy, fx = _freq_xy(n_fine, dx_fine)
        u, v = fx[inside] / cutoff, fy[inside] / cutoff  # rho cos(theta), rho sin(theta)
        if setting.astigmatism_waves:
            phase += 2.0 * np.pi * setting.astigmatism_waves * math.sqrt(6.0) * (u * u - v * v)
        if setting.coma_waves:
            phase += 2.0 * np.pi * setting.coma_waves * math.sqrt(8.0) * (3.0 * (u * u + v * v) - 2.0) * u
    pupil = np.zeros(f2.shape, dtype=np.complex64)
    pupil[inside] = np.exp(1j * phase)
    return pupil


def pupil_energy(setting: OpticalSetting, z_um: float = 0.0, *, size: int | None = None) -> np.ndarray:
    """Energy ``sum |P|^2 / N^2`` of each channel's sampled pupil (Parseval reference).

    With ``normalize=False``, :func:`psf` returns intensity PSFs whose sums on
    the oversampled grid equal this energy for every ``z``: defocus and
    aberrations are pure phases and redistribute light without losing any.
    """
    m = size if size is not None else 2 * psf_radius_px(setting, z_um) + 1
    out = []
    for wl in setting.wavelengths_um:
        os_ = _oversampling(setting, wl)
        n_fine = m * os_
        p = _pupil(setting, wl, 0.0, n_fine, setting.pixel_size_um / os_)
        out.append(float(np.sum(np.abs(p.astype(np.complex128)) ** 2)) / n_fine**2)
    return np.asarray(out)


def psf(
    setting: OpticalSetting,
    z_um: float = 0.0,
    *,
    size: int | None = None,
    normalize: bool = True,
    workers: int | None = None,
) -> np.ndarray:
    """Intensity PSF of every channel at defocus ``z_um``.

    Parameters
    ----------
    setting : OpticalSetting
        Objective, wavelengths and pixel size.
    z_um : float
        Defocus distance in µm (object to focal plane, along the optical axis).
    size : int, optional
        Odd window side in pixels; default ``2 * psf_radius_px + 1``.
    normalize : bool
        Scale each channel to unit sum (the default).  With ``False`` the
        per-channel sum over the oversampled window is the pupil energy
        (see :func:`pupil_energy`), independent of ``z``.
    workers : int, optional
        Threads for :mod:`scipy.fft`.

    Returns
    -------
    numpy.ndarray
        ``(C, size, size)`` float64, centred at ``[size // 2, size // 2]``.

    Raises
    ------
    ValueError
        When ``size`` is even or smaller than 3.
    """
    m = size if size is not None else 2 * psf_radius_px(setting, z_um) + 1
    if m < 3 or m % 2 == 0:
        raise ValueError(f"size={size!r}: the PSF window must be odd and >= 3 pixels")
    out = np.empty((setting.n_channels, m, m), dtype=np.float64)
    for c, wl in enumerate(setting.wavelengths_um):
        os_ = _oversampling(setting, wl)
        n_fine = m * os_
        pupil = _pupil(setting, wl, z_um, n_fine, setting.pixel_size_um / os_)
        amp = sfft.ifft2(pupil, workers=workers)
        intensity = amp.real**2 + amp.imag**2  # float32, origin at [0, 0]
        if os_ > 1:
            # band-limit to the pixel grid: keep the central m x m frequencies of
            # the continuous OTF; times os^2 so sums stay sums over the window
            spec = sfft.rfft2(intensity, workers=workers)
            h = m // 2
            crop = spec[np.r_[0 : h + 1, n_fine - h : n_fine], : h + 1]
            intensity = sfft.irfft2(crop, s=(m, m), workers=workers) * (m * m) / (n_fine * n_fine) * os_**2
        intensity = intensity.astype(np.float64)
        coarse = sfft.fftshift(intensity)
        if normalize:
            coarse = coarse / coarse.sum()
        out[c] = coarse
    return out


@functools.lru_cache(maxsize=64)
def _otf_cached(setting: OpticalSetting, z_um: float, shape: tuple[int, int]) -> np.ndarray:
    kernel = psf(setting, z_um)
    m = kernel.shape[-1]
    h, w = shape
    if m > h or m > w:
        # fold the window circularly: only happens when callers pass tiny shapes
        folded = np.zeros((kernel.shape[0], h, w))
        ys = (np.arange(m) - m // 2) % h
        xs = (np.arange(m) - m // 2) % w
        np.add.at(folded, (slice(None), ys[:, None], xs[None, :]), kernel)
        embed = folded
    else:
        embed = np.zeros((kernel.shape[0], h, w))
        embed[:, :m, :m] = kernel
        embed = np.roll(embed, (-(m // 2), -(m // 2)), axis=(1, 2))
    result = sfft.rfft2(embed, axes=(1, 2)).astype(np.complex64)
    result.setflags(write=False)
    return result


def otf(setting: OpticalSetting, z_um: float, shape: tuple[int, int]) -> np.ndarray:
    """Real-FFT OTF of every channel for an image of ``shape`` (cached).

    Returns
    -------
    numpy.ndarray
        Read-only ``(C, H, W // 2 + 1)`` complex64 array; ``OTF[:, 0, 0] == 1``.
    """
    return _otf_cached(setting, float(z_um), (int(shape[0]), int(shape[1])))


def _fwhm_1d(profile: np.ndarray) -> float:
    """Width in samples between the outermost half-maximum crossings."""
    half = profile.max() / 2.0
    above = np.nonzero(profile >= half)[0]
    lo, hi = int(above[0]), int(above[-1])
    left = float(lo)
    if lo > 0:
        a, b = profile[lo - 1], profile[lo]
        left = lo - 1 + (half - a) / (b - a)
    right = float(hi)
    if hi < profile.size - 1:
        a, b = profile[hi], profile[hi + 1]
        right = hi + (a - half) / (a - b)
    return right - left


def psf_fwhm_um(
    setting: OpticalSetting, z_um: float = 0.0, *, channel: int = 0, profile: str = "psf"
) -> float:
    """Full width at half maximum of the PSF, in µm.

    Parameters
    ----------
    setting, z_um
        As for :func:`psf`.
    channel : int
        Which wavelength.
    profile : {"psf", "lsf"}
        ``"psf"``: the PSF along the axes through its centre (the classical
        FWHM, ~0.51 lambda/NA in focus).  ``"lsf"``: the line spread function
        (PSF summed along one axis); unlike the PSF's centre, which oscillates
        with ``z`` (Fresnel zones), it widens monotonically with ``|z|``.
    """
    kernel = psf(setting, z_um)[channel]
    c = kernel.shape[0] // 2
    if profile == "psf":
        line = 0.5 * (kernel[c, :] + kernel[:, c])
    elif profile == "lsf":
        line = 0.5 * (kernel.sum(axis=0) + kernel.sum(axis=1))
    else:
        raise ValueError(f"profile={profile!r}: use 'psf' or 'lsf'")
    return float(_fwhm_1d(line) * setting.pixel_size_um)
