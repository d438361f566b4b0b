"""Non-blind refocusing: Richardson-Lucy with the defocus PSF the defocus map estimates.

Deep-R is blind: it never sees the defocus.  This method is its physics
counterpart inside the same pipeline.  The defocus map
(:mod:`wsi_deepr.focus`) gives every refocus window a ``|z|`` estimate; the
window is deconvolved with the scalar-diffraction defocus PSF of that
``|z|`` (:func:`wsi_deepr.optics.psf`, aberration-free, so the sign of ``z``
does not matter) by Richardson-Lucy (:func:`skimage.restoration.richardson_lucy`).

It is deliberately conservative, because an over-estimated PSF makes ringing
and invented edges while an under-estimated one only sharpens less: the
estimate is shrunk (``shrink``), capped (``max_defocus_um``) and the
iterations are few (``iterations``; no noise model, so more iterations amplify
noise and JPEG blocks).  The numbers were chosen and are measured in
``benchmarks/unseen_eval.py`` (README, *Refocusing methods*).

Pixels enter in ``range`` normalisation (``x / max(dtype)``), i.e. as light
intensities in ``[0, 1]``, which is what Richardson-Lucy's Poisson model
needs.  Each window is padded by reflection by the PSF radius before it is
deconvolved (no dark frame drawn in from outside), and the window's halo
takes up the rest of the boundary effect.

:func:`physics_model` describes the method as a :class:`ModelInfo` with a card
(modality, channels, halo, threshold), so the pipeline plans, records and
fingerprints it like a network.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from wsi_deepr.inference.card import ModelCard, ModelInfo
from wsi_deepr.optics.randomize import FLUORESCENCE_WAVELENGTH_UM
from wsi_deepr.readers.slide import Modality

__all__ = ["METHOD_NAME", "Deconvolution", "physics_model"]

log = logging.getLogger(__name__)

#: The name the method runs under (``--method deconvolve``; provenance ``model``).
METHOD_NAME = "rl-deconvolution"
#: Defocus below which the method leaves a window as it is (µm), per modality, as a network card's
#: ``min_defocus_um`` (chosen with benchmarks/unseen_eval.py)
MIN_DEFOCUS_UM = {Modality.BRIGHTFIELD: 1.5, Modality.FLUORESCENCE: 2.0}
#: Defocus-map confidence a region needs to send a window to the method, per modality (as a card's
#: ``min_confidence``; chosen with benchmarks/unseen_eval.py: smooth in-focus fluorescence reads as
#: defocus, with low confidence)
MIN_CONFIDENCE = {Modality.BRIGHTFIELD: 0.0, Modality.FLUORESCENCE: 0.45}
#: Defocus step of the cached PSFs (µm): estimates are rounded to it.
Z_STEP_UM = 0.25


@dataclass(frozen=True)
class Deconvolution:
    """Richardson-Lucy deconvolution of windows with the defocus PSF of their estimated ``|z|``.

    Picklable: it travels to Dask workers in place of a model session.

    Parameters
    ----------
    na : float
        Objective NA assumed (the defocus map's prior, :func:`~wsi_deepr.focus.estimate.na_prior`).
    wavelengths_um : tuple of float
        One wavelength per window channel (µm); a single one for every channel.
    pixel_size_um : float
        µm per pixel of the windows.
    iterations : int
        Richardson-Lucy iterations.
    shrink : float
        Factor on the estimated ``|z|`` (``<= 1``: err towards too little PSF).
    max_defocus_um : float
        Cap on ``|z|`` after shrinking (sets the halo).
    """

    na: float
    wavelengths_um: tuple[float, ...]
    pixel_size_um: float
    iterations: int = 10
    shrink: float = 0.8
    max_defocus_um: float = 8.0

    def __post_init__(self) -> None:
        if not 1 <= int(self.iterations) <= 200:
            raise ValueError(f"iterations={self.iterations!r}: give 1-200 Richardson-Lucy iterations")
        if not 0 < self.shrink <= 1.5:
            raise ValueError(f"shrink={self.shrink!r}: give a factor in (0, 1.5] on the estimated defocus")
        if not 0 < self.max_defocus_um <= 50:
            raise ValueError(f"max_defocus_um={self.max_defocus_um!r}: give a cap in (0, 50] µm")
        self.setting(1)  # validates na, wavelengths and pixel size

    def setting(self, channels: int):
        """The :class:`~wsi_deepr.optics.OpticalSetting` for windows of ``channels`` channels."""
        from wsi_deepr.optics import OpticalSetting

        wl = self.wavelengths_um if len(self.wavelengths_um) == channels else self.wavelengths_um[:1] * channels
        return OpticalSetting(na=self.na, wavelengths_um=tuple(wl), pixel_size_um=self.pixel_size_um)

    def defocus_used(self, estimate_um: float) -> float:
        """The ``|z|`` deconvolved for an estimate: shrunk, capped, rounded to :data:`Z_STEP_UM`."""
        z = min(max(float(estimate_um), 0.0) * self.shrink, self.max_defocus_um)
        return round(z / Z_STEP_UM) * Z_STEP_UM

    def reach_px(self) -> int:
        """Radius (px) of the widest PSF used: the halo needed around a window."""
        from wsi_deepr.optics import psf_radius_px

        return int(psf_radius_px(self.setting(len(self.wavelengths_um)), self.max_defocus_um))

    def run(self, batch: np.ndarray, defocus_um: np.ndarray | None, *, model_channels: int | None = None) -> np.ndarray:
        """Deconvolve ``batch`` ``(N, C, H, W)`` (intensities in ``[0, 1]``) window by window.

        Parameters
        ----------
        batch : numpy.ndarray
            ``float32`` windows, channels first.
        defocus_um : numpy.ndarray
            ``(N,)`` estimated ``|z|`` per window (µm); a window whose
            estimate is NaN or rounds to 0 is returned unchanged.
        model_channels : int, optional
            Ignored (every channel is deconvolved at its own wavelength);
            the signature of :meth:`wsi_deepr.restore.Handoff.run`.

        Raises
        ------
        ValueError
            Without ``defocus_um`` (the method is non-blind), or with one
            value too few or too many.

        Returns
        -------
        numpy.ndarray
            ``float32`` array of ``batch``'s shape.
        """
        from skimage.restoration import richardson_lucy

        if defocus_um is None:
            raise ValueError("Deconvolution is non-blind: it needs each window's defocus estimate (the defocus map)")
        z_all = np.asarray(defocus_um, dtype=np.float64).reshape(-1)
        if z_all.shape[0] != batch.shape[0]:
            raise ValueError(f"{batch.shape[0]} windows but {z_all.shape[0]} defocus values")
        out = np.array(batch, dtype=np.float32, copy=True)
        for k, estimate in enumerate(z_all):
            if not np.isfinite(estimate):
                continue
            z = self.defocus_used(estimate)
            if z <= 0:
                continue
            kernels = _kernels(self, batch.shape[1], z)
            for c in range(batch.shape[1]):
                kernel = kernels[c]
                pad = kernel.shape[0] // 2
                plane = np.pad(np.clip(batch[k, c], 1e-4, None).astype(np.float64), pad, mode="reflect")
                restored = richardson_lucy(plane, kernel, num_iter=int(self.iterations), clip=False)
                out[k, c] = restored[pad:pad + batch.shape[2], pad:pad + batch.shape[3]]
        return out

    def to_dict(self) -> dict:
        """Plain-JSON parameters (provenance, fingerprint)."""
        d = asdict(self)
        d["wavelengths_um"] = list(self.wavelengths_um)
        return {"method": METHOD_NAME, **d}


@functools.lru_cache(maxsize=128)
def _kernels(spec: Deconvolution, channels: int, z_um: float) -> tuple[np.ndarray, ...]:
    """Non-negative, unit-sum PSF of every channel at ``z_um`` (cached per worker)."""
    from wsi_deepr.optics import psf

    stack = psf(spec.setting(channels), z_um)
    out = []
    for k in stack:
        k = np.clip(k, 0, None)  # the band-limited PSF rings slightly negative; RL needs >= 0
        out.append(k / k.sum())
    return tuple(out)


def physics_model(modality: Modality, *, n_channels: int, mpp: float | None, pixel_size_um: float | None = None,
                  iterations: int = 10, shrink: float = 0.8, max_defocus_um: float = 8.0) -> tuple[ModelInfo,
                                                                                                   Deconvolution]:
    """The method for a slide, and its card as a :class:`ModelInfo` the pipeline plans with.

    Parameters
    ----------
    modality : Modality
        Brightfield deconvolves R, G and B at their own wavelengths
        (:data:`~wsi_deepr.optics.BRIGHTFIELD_WAVELENGTHS_UM`); fluorescence
        every channel at :data:`~wsi_deepr.optics.FLUORESCENCE_WAVELENGTH_UM`.
    n_channels : int
        Channels of the slide.
    mpp : float or None
        Level-0 µm/px of the slide (``None``: 0.5 assumed, as the defocus map
        does); the NA is assumed from it.
    pixel_size_um : float, optional
        µm/px of the windows when they are not level 0 (a network's
        processing scale, :class:`~wsi_deepr.restore.Handoff`); default ``mpp``.
    iterations, shrink, max_defocus_um
        See :class:`Deconvolution`.
    """
    from wsi_deepr import __version__
    from wsi_deepr.focus.estimate import na_prior
    from wsi_deepr.optics import BRIGHTFIELD_WAVELENGTHS_UM

    level0 = float(mpp) if mpp else 0.5
    pixel = float(pixel_size_um) if pixel_size_um else level0
    rgb = modality is Modality.BRIGHTFIELD and n_channels == 3
    wavelengths = tuple(BRIGHTFIELD_WAVELENGTHS_UM) if rgb else (FLUORESCENCE_WAVELENGTH_UM,)
    spec = Deconvolution(na=na_prior(level0), wavelengths_um=wavelengths, pixel_size_um=pixel,
                         iterations=iterations, shrink=shrink, max_defocus_um=max_defocus_um)
    # RL's influence grows with the iterations; twice the PSF radius keeps tiles
    # within the error budget measured in benchmarks/seams.py (README)
    halo = 2 * spec.reach_px()
    card = ModelCard(
        modality=modality, channels=3 if rgb else 1, mpp=None,
        defocus_range_um=(-max_defocus_um, max_defocus_um), normalization="range", halo=halo,
        version=__version__,
        description=(f"Richardson-Lucy ({iterations} iterations) with the aberration-free defocus PSF of each "
                     f"window's estimated |z| x {shrink:g} (NA {spec.na:g}, {pixel:g} µm/px), at the scan's "
                     "pixel size"),
        extra=(("kind", "deconvolution"), ("min_confidence", f"{MIN_CONFIDENCE[modality]:g}"),
               ("min_defocus_um", f"{MIN_DEFOCUS_UM[modality]:g}")))
    digest = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()
    info = ModelInfo(path=Path(__file__), name=METHOD_NAME, card=card, sha256=digest,
                     input_name="", output_name="")
    return info, spec
