"""Domain randomisation for simulated training pairs.

A model trained on one narrow optical setting overfits to it; the aim is to
refocus slides from scanners never seen.  :class:`RandomizationRanges` holds
the ranges, :func:`sample_realisation` draws one :class:`Realisation` (optics,
defocus, tilt, pixel-size scale, noise, JPEG, photometric jitter), and the
``apply_*`` functions carry it out on float images in ``[0, 1]``:

* pixel size: the in-focus source is resampled by ``pixel_scale >= 1`` (never
  upsampled, so the target stays sharp);
* photometric: haematoxylin/eosin/DAB jitter in optical-density space for
  brightfield (Tellez et al. 2018), gain and gamma for fluorescence; applied to
  the object, hence to both target and input;
* Poisson-Gaussian noise and JPEG recompression: input only (the defocused
  acquisition), JPEG for brightfield only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from wsi_deepr.optics.defocus import TiltedPlane
from wsi_deepr.optics.psf import OpticalSetting

if TYPE_CHECKING:
    import scipy.sparse

__all__ = [
    "BRIGHTFIELD_WAVELENGTHS_UM",
    "FLUORESCENCE_WAVELENGTH_UM",
    "RandomizationRanges",
    "Realisation",
    "add_poisson_gaussian_noise",
    "apply_photometric",
    "jpeg_recompress",
    "resample",
    "sample_realisation",
]

#: Centre wavelengths (µm) of the R, G, B channels of a brightfield scanner.
BRIGHTFIELD_WAVELENGTHS_UM: tuple[float, float, float] = (0.61, 0.545, 0.465)
#: Emission wavelength (µm) assumed for fluorescence when the slide does not say: green.
FLUORESCENCE_WAVELENGTH_UM: float = 0.52

# Optical-density stain matrix (rows: haematoxylin, eosin, DAB), Ruifrok & Johnston.
_RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


def _check_range(name: str, value: tuple[float, float], lo: float = -math.inf) -> None:
    a, b = value
    if not (lo <= a <= b):
        raise ValueError(f"{name}={value!r}: give (low, high) with {lo} <= low <= high")


@dataclass(frozen=True)
class RandomizationRanges:
    """Ranges of every randomised quantity (uniform unless said otherwise).

    Parameters
    ----------
    pixel_scale : (float, float)
        Target pixel size as a multiple of the source's, log-uniform, ``>= 1``.
    na : (float, float)
        Numerical aperture.
    refractive_index : tuple of float
        Immersion indices to choose from (NA is capped at 0.98 n).
    z_um : (float, float)
        Defocus distance in µm.
    spherical_waves : (float, float)
        Noll-11 spherical aberration, waves RMS.
    wavelength_jitter_um : float
        Uniform jitter added to each channel's wavelength.
    tilt_probability : float
        Chance that a pair has a tilted (spatially varying) defocus.
    tilt_span_um : (float, float)
        Peak-to-peak defocus across the patch when tilted, in µm.
    photons : (float, float)
        Photons per pixel at full scale (log-uniform), for shot noise.
    read_noise : (float, float)
        Gaussian noise sigma as a fraction of full scale.
    jpeg_probability : float
        Chance of JPEG recompression (brightfield only).
    jpeg_quality : (int, int)
        JPEG quality range.
    stain_sigma, stain_bias : float
        Brightfield: per-stain multiplicative (``1 + N(0, sigma)``) and
        additive (``N(0, bias)``) jitter of the optical density.
    gain, gamma : (float, float)
        Fluorescence: intensity ``gain * I ** gamma`` (log-uniform).
    """

    pixel_scale: tuple[float, float] = (1.0, 2.0)
    na: tuple[float, float] = (0.4, 0.95)
    refractive_index: tuple[float, ...] = (1.0,)
    z_um: tuple[float, float] = (-5.0, 5.0)
    spherical_waves: tuple[float, float] = (-0.1, 0.1)
    wavelength_jitter_um: float = 0.015
    tilt_probability: float = 0.2
    tilt_span_um: tuple[float, float] = (0.5, 4.0)
    photons: tuple[float, float] = (300.0, 20000.0)
    read_noise: tuple[float, float] = (0.0, 0.005)
    jpeg_probability: float = 0.8
    jpeg_quality: tuple[int, int] = (30, 95)
    stain_sigma: float = 0.05
    stain_bias: float = 0.02
    gain: tuple[float, float] = (0.7, 1.4)
    gamma: tuple[float, float] = (0.8, 1.25)

    def __post_init__(self) -> None:
        _check_range("pixel_scale", self.pixel_scale, 1.0)
        _check_range("na", self.na, 0.01)
        _check_range("z_um", self.z_um)
        _check_range("spherical_waves", self.spherical_waves)
        _check_range("tilt_span_um", self.tilt_span_um, 0.0)
        _check_range("photons", self.photons, 1e-3)
        _check_range("read_noise", self.read_noise, 0.0)
        _check_range("jpeg_quality", self.jpeg_quality, 1)
        _check_range("gain", self.gain, 1e-3)
        _check_range("gamma", self.gamma, 1e-3)
        if not self.refractive_index or min(self.refractive_index) < 1.0:
            raise ValueError(f"refractive_index={self.refractive_index!r}: give indices >= 1")
        if self.jpeg_quality[1] > 100:
            raise ValueError(f"jpeg_quality={self.jpeg_quality!r}: quality is at most 100")
        for name in ("tilt_probability", "jpeg_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)!r}: a probability in [0, 1]")

    @classmethod
    def for_modality(cls, modality: str, **overrides: object) -> RandomizationRanges:
        """Defaults for ``"brightfield"`` or ``"fluorescence"``, with ``overrides``."""
        if str(modality).lower() == "fluorescence":
            base = cls(photons=(20.0, 2000.0), read_noise=(0.0, 0.02), jpeg_probability=0.0)
        elif str(modality).lower() == "brightfield":
            base = cls()
        else:
            raise ValueError(f"modality={modality!r}: use 'brightfield' or 'fluorescence'")
        return replace(base, **overrides) if overrides else base

    def to_dict(self) -> dict:
        """Plain-JSON description, for provenance."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Realisation:
    """Everything drawn for one simulated pair."""

    setting: OpticalSetting
    z_um: float
    plane: TiltedPlane | None
    pixel_scale: float
    photons: float
    read_noise: float
    jpeg_quality: int | None
    photometric: tuple[float, ...]

    def to_dict(self) -> dict:
        """Plain-JSON description, for provenance."""
        plane = None if self.plane is None else {
            "z0_um": self.plane.z0_um, "slope_y": self.plane.slope_y, "slope_x": self.plane.slope_x}
        return {"setting": self.setting.to_dict(), "z_um": self.z_um, "plane": plane,
                "pixel_scale": self.pixel_scale, "photons": self.photons,
                "read_noise": self.read_noise, "jpeg_quality": self.jpeg_quality,
                "photometric": list(self.photometric)}


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if hi > lo else float(lo)


def sample_realisation(
    rng: np.random.Generator,
    ranges: RandomizationRanges,
    *,
    modality: str,
    native_pixel_size_um: float,
    wavelengths_um: tuple[float, ...],
    patch_size: int,
) -> Realisation:
    """Draw one realisation.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (the only one used).
    ranges : RandomizationRanges
        What to draw from.
    modality : {"brightfield", "fluorescence"}
        Decides the photometric model and whether JPEG applies.
    native_pixel_size_um : float
        Pixel size of the in-focus source.
    wavelengths_um : tuple of float
        Nominal wavelength per channel, jittered by ``wavelength_jitter_um``.
    patch_size : int
        Side of the output patch, to turn ``tilt_span_um`` into slopes.
    """
    scale = _log_uniform(rng, *ranges.pixel_scale)
    pixel = native_pixel_size_um * scale
    n = float(rng.choice(np.asarray(ranges.refractive_index)))
    na = float(min(rng.uniform(*ranges.na), 0.98 * n))
    jit = ranges.wavelength_jitter_um
    wls = tuple(float(w + rng.uniform(-jit, jit)) for w in wavelengths_um)
    setting = OpticalSetting(na=na, wavelengths_um=wls, pixel_size_um=pixel, refractive_index=n,
                             spherical_waves=float(rng.uniform(*ranges.spherical_waves)))
    z = float(rng.uniform(*ranges.z_um))
    plane = None
    if rng.random() < ranges.tilt_probability:
        span = float(rng.uniform(*ranges.tilt_span_um))
        theta = float(rng.uniform(0.0, 2.0 * math.pi))
        # peak-to-peak over the patch along the tilt direction
        extent = patch_size * pixel * (abs(math.cos(theta)) + abs(math.sin(theta)))
        slope = span / max(extent, 1e-9)
        plane = TiltedPlane(z0_um=z, slope_y=slope * math.sin(theta), slope_x=slope * math.cos(theta))
    photons = _log_uniform(rng, *ranges.photons)
    read = float(rng.uniform(*ranges.read_noise))
    quality = None
    if str(modality).lower() == "brightfield":
        if rng.random() < ranges.jpeg_probability:
            quality = int(rng.integers(ranges.jpeg_quality[0], ranges.jpeg_quality[1] + 1))
        alpha = 1.0 + rng.normal(0.0, ranges.stain_sigma, 3)
        beta = rng.normal(0.0, ranges.stain_bias, 3)
        photometric = tuple(float(v) for v in (*alpha, *beta))
    else:
        photometric = (_log_uniform(rng, *ranges.gain), _log_uniform(rng, *ranges.gamma))
    return Realisation(setting=setting, z_um=z, plane=plane, pixel_scale=scale, photons=photons,
                       read_noise=read, jpeg_quality=quality, photometric=photometric)


def apply_photometric(image: np.ndarray, photometric: tuple[float, ...], *, modality: str) -> np.ndarray:
    """Stain (brightfield, ``(Y, X, 3)``) or gain/gamma (fluorescence) jitter; float in [0, 1]."""
    img = np.asarray(image, dtype=np.float32)
    if str(modality).lower() == "brightfield":
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"brightfield stain jitter needs (Y, X, 3) RGB, got shape {img.shape}")
        alpha = np.asarray(photometric[:3], dtype=np.float32)
        beta = np.asarray(photometric[3:6], dtype=np.float32)
        od = -np.log(np.clip(img, 1.0 / 255.0, 1.0))
        stains = od @ _HED_FROM_RGB.astype(np.float32)
        od2 = (stains * alpha + beta) @ _RGB_FROM_HED.astype(np.float32)
        return np.clip(np.exp(-od2), 0.0, 1.0)
    gain, gamma = photometric[:2]
    return np.clip(gain * np.power(np.clip(img, 0.0, None), gamma), 0.0, 1.0).astype(np.float32)


def add_poisson_gaussian_noise(
    image: np.ndarray, rng: np.random.Generator, *, photons: float, read_noise: float
) -> np.ndarray:
    """Shot noise with ``photons`` at full scale plus Gaussian read noise (fraction of full scale).

    Pixels expecting more than 50 photons use the Gaussian limit of the
    Poisson law (same mean and variance), the rest are drawn exactly.
    """
    img = np.clip(np.asarray(image, dtype=np.float32), 0.0, None)
    lam = img * np.float32(photons)
    counts = lam + np.sqrt(lam) * rng.standard_normal(lam.shape, dtype=np.float32)
    low = lam < 50.0
    if low.any():
        counts[low] = rng.poisson(lam[low]).astype(np.float32)
    noisy = counts / np.float32(photons)
    if read_noise > 0:
        noisy += np.float32(read_noise) * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(noisy, 0.0, 1.0)


def jpeg_recompress(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode as 8-bit JPEG at ``quality`` and decode again (float in [0, 1])."""
    import imagecodecs

    u8 = np.clip(np.rint(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)
    squeeze = u8.ndim == 3 and u8.shape[2] == 1
    data = imagecodecs.jpeg_encode(u8[:, :, 0] if squeeze else u8, level=int(quality))
    out = imagecodecs.jpeg_decode(data).astype(np.float32) / 255.0
    return out[:, :, None] if squeeze else out


def _resample_matrix(n_in: int, n_out: int) -> scipy.sparse.csr_matrix:
    """Sparse ``(n_out, n_in)`` linear-interpolation matrix, widened to a triangle
    filter of the scale's width when shrinking (anti-aliasing), rows summing to 1."""
    import scipy.sparse as sp

    scale = n_in / n_out
    width = max(1.0, scale)
    centres = (np.arange(n_out) + 0.5) * scale - 0.5  # pixel-centre alignment
    reach = math.ceil(width) + 1
    taps = np.floor(centres)[:, None].astype(np.int64) + np.arange(-reach + 1, reach + 1)[None, :]
    w = np.clip(1.0 - np.abs(taps - centres[:, None]) / width, 0.0, None)
    taps = np.clip(taps, 0, n_in - 1)
    w /= w.sum(axis=1, keepdims=True)
    rows = np.repeat(np.arange(n_out), taps.shape[1])
    return sp.csr_matrix((w.ravel().astype(np.float32), (rows, taps.ravel())), shape=(n_out, n_in))


def resample(image: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Resize ``(Y, X[, C])`` to ``out_shape``: separable linear interpolation with a
    triangle anti-aliasing filter when shrinking (float32)."""
    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape[:2]
    oh, ow = int(out_shape[0]), int(out_shape[1])
    if (h, w) == (oh, ow):
        return img
    flat = img.reshape(h, -1)
    tmp = _resample_matrix(h, oh) @ flat  # (oh, w*C)
    tail = img.shape[2:]
    c = int(np.prod(tail)) if tail else 1
    tmp = tmp.reshape(oh, w, c).transpose(1, 0, 2).reshape(w, oh * c)
    out = (_resample_matrix(w, ow) @ tmp).reshape(ow, oh, c).transpose(1, 0, 2)
    return np.ascontiguousarray(out.reshape((oh, ow) + tail), dtype=np.float32)
