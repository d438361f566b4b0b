"""Apply uniform or tilted defocus to images by FFT convolution with the OTF.

* :func:`defocus` blurs a whole image at one defocus distance.
* :func:`defocus_tilted` blurs with a spatially varying defocus ``z(y, x)`` on a
  tilted plane (the paper's tilted-sample experiment): the image is blurred at a
  few defocus levels spanning the plane's range, sharing one forward FFT, and
  every pixel linearly interpolates between the two levels that bracket its
  ``z``.
* :func:`iter_defocused_strips` does either over an image too large for memory,
  strip by strip, reading each block with a halo as wide as the PSF.

Images are ``(Y, X)`` or ``(Y, X, C)`` with one channel per wavelength of the
:class:`~wsi_deepr.optics.psf.OpticalSetting` (a single wavelength applies to
every channel).  Intensities are linear; the output is ``float32``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from wsi_deepr.optics.psf import OpticalSetting, otf, psf_radius_px

__all__ = [
    "TiltedPlane",
    "default_level_step_um",
    "defocus",
    "defocus_tilted",
    "iter_defocused_strips",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TiltedPlane:
    """Defocus that varies linearly across the field: ``z = z0 + sy*dy + sx*dx``.

    Parameters
    ----------
    z0_um : float
        Defocus at ``center_px``, in µm.
    slope_y, slope_x : float
        Change of defocus per µm of sample travel along Y and X (µm/µm, i.e.
        the tangent of the tilt angle).
    center_px : tuple of float, optional
        ``(y, x)`` pixel where ``z == z0_um``; default the image centre.
    """

    z0_um: float = 0.0
    slope_y: float = 0.0
    slope_x: float = 0.0
    center_px: tuple[float, float] | None = None

    def zmap(
        self, shape: tuple[int, int], pixel_size_um: float, *, offset: tuple[int, int] = (0, 0),
        full_shape: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Defocus in µm of every pixel of a ``shape`` block at ``offset`` (float32)."""
        full = full_shape if full_shape is not None else shape
        cy, cx = self.center_px if self.center_px is not None else ((full[0] - 1) / 2, (full[1] - 1) / 2)
        y = (np.arange(shape[0], dtype=np.float32) + offset[0] - cy) * pixel_size_um
        x = (np.arange(shape[1], dtype=np.float32) + offset[1] - cx) * pixel_size_um
        return (self.z0_um + self.slope_y * y[:, None] + self.slope_x * x[None, :]).astype(np.float32)

    def z_range(self, full_shape: tuple[int, int], pixel_size_um: float) -> tuple[float, float]:
        """Minimum and maximum defocus over an image of ``full_shape`` (at its corners)."""
        h, w = full_shape
        z = [
            float(self.zmap((1, 1), pixel_size_um, offset=(yy, xx), full_shape=full_shape)[0, 0])
            for yy in (0, h - 1) for xx in (0, w - 1)
        ]
        return min(z), max(z)


def default_level_step_um(setting: OpticalSetting) -> float:
    """Spacing of the blur levels for tilted defocus: half the depth of field.

    ``0.5 * lambda * n / NA^2`` for the shortest wavelength; between levels
    this far apart the PSF changes little, so interpolating the two blurred
    images is close to blurring with the intermediate PSF.
    """
    wl = min(setting.wavelengths_um)
    return 0.5 * wl * setting.refractive_index / setting.na**2


def _as_yxc(image: np.ndarray, setting: OpticalSetting) -> tuple[np.ndarray, bool]:
    arr = np.asarray(image)
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"image of shape {arr.shape}: expected (Y, X) or (Y, X, C)")
    c = arr.shape[2]
    if setting.n_channels not in (1, c):
        raise ValueError(
            f"image has {c} channels but the optical setting has {setting.n_channels} "
            "wavelengths: give one wavelength per channel (or a single one for all)"
        )
    return arr.astype(np.float32, copy=False), squeeze


def _otf_yxc(setting: OpticalSetting, z_um: float, shape: tuple[int, int], channels: int) -> np.ndarray:
    o = otf(setting, z_um, shape)  # (C', H, W//2+1)
    o = np.moveaxis(o, 0, -1)
    if o.shape[-1] != channels:
        o = np.broadcast_to(o, o.shape[:-1] + (channels,))
    return o


def _pad(arr: np.ndarray, r: int, mode: str) -> np.ndarray:
    if mode == "wrap" or r == 0:
        return arr
    h, w = arr.shape[:2]
    if mode in ("reflect", "symmetric") and (r >= h or r >= w):
        mode = "edge"  # reflect cannot pad more than the image is wide
    return np.pad(arr, ((r, r), (r, r), (0, 0)), mode=mode)


def _fft_shape(padded: tuple[int, int], mode: str) -> tuple[int, int]:
    if mode == "wrap":
        return padded
    return sfft.next_fast_len(padded[0], real=True), sfft.next_fast_len(padded[1], real=True)


def defocus(
    image: np.ndarray,
    setting: OpticalSetting,
    z_um: float = 0.0,
    *,
    mode: str = "reflect",
    workers: int | None = None,
) -> np.ndarray:
    """Blur ``image`` as if imaged ``z_um`` out of focus (incoherent imaging).

    Parameters
    ----------
    image : numpy.ndarray
        ``(Y, X)`` or ``(Y, X, C)`` linear intensities.
    setting : OpticalSetting
        Objective, wavelengths (one per channel) and pixel size.
    z_um : float
        Defocus distance in µm.
    mode : str
        How to extend the image beyond its border (:func:`numpy.pad` modes;
        ``"wrap"`` convolves circularly without padding).
    workers : int, optional
        Threads for :mod:`scipy.fft`.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of the input's shape.  The mean intensity is
        preserved (``OTF(0) == 1``).
    """
    arr, squeeze = _as_yxc(image, setting)
    h, w, c = arr.shape
    r = psf_radius_px(setting, z_um)
    padded = _pad(arr, r, mode)
    off = 0 if mode == "wrap" else r
    shape = _fft_shape(padded.shape[:2], mode)
    spec = sfft.rfft2(padded, s=shape, axes=(0, 1), workers=workers)
    spec *= _otf_yxc(setting, z_um, shape, c)
    out = sfft.irfft2(spec, s=shape, axes=(0, 1), workers=workers)[off : off + h, off : off + w]
    out = np.ascontiguousarray(out, dtype=np.float32)
    return out[:, :, 0] if squeeze else out


def _blend_levels(
    padded: np.ndarray,
    setting: OpticalSetting,
    zmap: np.ndarray,
    off: int,
    shape: tuple[int, int],
    *,
    z_lo: float,
    z_hi: float,
    max_step_um: float,
    workers: int | None,
) -> np.ndarray:
    """Blur ``padded`` at levels spanning ``[z_lo, z_hi]`` and interpolate per pixel."""
    h, w = zmap.shape
    c = padded.shape[2]
    # one global grid of levels, so blocks of a large image agree with each other
    n_levels = max(2, math.ceil((z_hi - z_lo) / max_step_um - 1e-9) + 1)
    step = (z_hi - z_lo) / (n_levels - 1) if z_hi > z_lo else 1.0
    pos = (zmap - z_lo) / step  # fractional level index of every pixel
    k_lo = max(0, math.floor(float(pos.min())))
    k_hi = min(n_levels - 1, math.ceil(float(pos.max())))
    spec = sfft.rfft2(padded, s=shape, axes=(0, 1), workers=workers)
    out = np.zeros((h, w, c), dtype=np.float32)
    for k in range(k_lo, k_hi + 1):
        weight = np.clip(1.0 - np.abs(pos - k), 0.0, 1.0)
        if not weight.any():
            continue
        zk = z_lo + k * step
        blurred = sfft.irfft2(spec * _otf_yxc(setting, float(zk), shape, c), s=shape, axes=(0, 1),
                              workers=workers)[off : off + h, off : off + w]
        out += weight[:, :, None] * blurred
    return out


def defocus_tilted(
    image: np.ndarray,
    setting: OpticalSetting,
    plane: TiltedPlane,
    *,
    mode: str = "reflect",
    max_step_um: float | None = None,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Blur ``image`` with a defocus that varies linearly across the field.

    Parameters
    ----------
    image : numpy.ndarray
        ``(Y, X)`` or ``(Y, X, C)`` linear intensities.
    setting : OpticalSetting
        Objective, wavelengths and pixel size.
    plane : TiltedPlane
        ``z`` at the centre and its slopes.
    mode : str
        Border extension, as for :func:`defocus`.
    max_step_um : float, optional
        Largest spacing of the blur levels; default
        :func:`default_level_step_um`.
    workers : int, optional
        Threads for :mod:`scipy.fft`.

    Returns
    -------
    blurred : numpy.ndarray
        ``float32``, the input's shape.
    zmap : numpy.ndarray
        ``(Y, X)`` defocus in µm of every pixel.
    """
    arr, squeeze = _as_yxc(image, setting)
    h, w, _ = arr.shape
    zmap = plane.zmap((h, w), setting.pixel_size_um)
    z_lo, z_hi = float(zmap.min()), float(zmap.max())
    r = max(psf_radius_px(setting, z_lo), psf_radius_px(setting, z_hi))
    padded = _pad(arr, r, mode)
    off = 0 if mode == "wrap" else r
    shape = _fft_shape(padded.shape[:2], mode)
    step = max_step_um if max_step_um is not None else default_level_step_um(setting)
    if step <= 0:
        raise ValueError(f"max_step_um={max_step_um!r}: must be > 0")
    out = _blend_levels(padded, setting, zmap, off, shape, z_lo=z_lo, z_hi=z_hi,
                        max_step_um=step, workers=workers)
    return (out[:, :, 0] if squeeze else out), zmap


def _read_with_halo(
    read_region: Callable[[int, int, int, int], np.ndarray],
    full: tuple[int, int],
    y0: int, x0: int, y1: int, x1: int, r: int,
) -> np.ndarray:
    """Read ``[y0-r:y1+r, x0-r:x1+r]``, reflecting where it leaves the image."""
    ry0, rx0 = max(0, y0 - r), max(0, x0 - r)
    ry1, rx1 = min(full[0], y1 + r), min(full[1], x1 + r)
    block = np.asarray(read_region(ry0, rx0, ry1, rx1), dtype=np.float32)
    if block.ndim == 2:
        block = block[:, :, None]
    pads = ((ry0 - (y0 - r), (y1 + r) - ry1), (rx0 - (x0 - r), (x1 + r) - rx1), (0, 0))
    if any(p for ax in pads for p in ax):
        bh, bw = block.shape[:2]
        mode = "reflect" if max(pads[0]) < bh and max(pads[1]) < bw else "edge"
        block = np.pad(block, pads, mode=mode)
    return block


def iter_defocused_strips(
    read_region: Callable[[int, int, int, int], np.ndarray],
    shape: tuple[int, int],
    setting: OpticalSetting,
    *,
    z_um: float = 0.0,
    plane: TiltedPlane | None = None,
    strip: int = 256,
    block: int = 2048,
    max_step_um: float | None = None,
    workers: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Defocus a large image strip by strip, with a PSF-wide halo around each block.

    Parameters
    ----------
    read_region : callable
        ``read_region(y0, x0, y1, x1)`` returns the pixels ``[y0:y1, x0:x1]``
        as ``(Y, X)`` or ``(Y, X, C)``.
    shape : tuple of int
        ``(Y, X)`` of the whole image.
    setting : OpticalSetting
        Optics.
    z_um : float
        Uniform defocus (ignored when ``plane`` is given).
    plane : TiltedPlane, optional
        Spatially varying defocus, in the whole image's pixel coordinates.
    strip, block : int
        Height of the strips yielded and width of the blocks they are made of.
    max_step_um, workers
        As for :func:`defocus_tilted`.

    Yields
    ------
    (y0, strip_array)
        Top row and the ``float32`` ``(h, X, C)`` defocused strip.
    """
    full = (int(shape[0]), int(shape[1]))
    if plane is not None:
        z_lo, z_hi = plane.z_range(full, setting.pixel_size_um)
    else:
        z_lo = z_hi = float(z_um)
    r = max(psf_radius_px(setting, z_lo), psf_radius_px(setting, z_hi))
    step = max_step_um if max_step_um is not None else default_level_step_um(setting)
    for y0 in range(0, full[0], strip):
        y1 = min(full[0], y0 + strip)
        parts = []
        for x0 in range(0, full[1], block):
            x1 = min(full[1], x0 + block)
            padded = _read_with_halo(read_region, full, y0, x0, y1, x1, r)
            fshape = _fft_shape(padded.shape[:2], "reflect")
            c = padded.shape[2]
            if plane is None:
                spec = sfft.rfft2(padded, s=fshape, axes=(0, 1), workers=workers)
                spec *= _otf_yxc(setting, z_lo, fshape, c)
                out = sfft.irfft2(spec, s=fshape, axes=(0, 1), workers=workers)[r : r + y1 - y0, r : r + x1 - x0]
            else:
                zmap = plane.zmap((y1 - y0, x1 - x0), setting.pixel_size_um, offset=(y0, x0), full_shape=full)
                out = _blend_levels(padded, setting, zmap, r, fshape, z_lo=z_lo, z_hi=z_hi,
                                    max_step_um=step, workers=workers)
            parts.append(np.asarray(out, dtype=np.float32))
        log.debug("defocused rows %d-%d", y0, y1)
        yield y0, np.concatenate(parts, axis=1)
