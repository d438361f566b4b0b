"""Non-blind refocusing: Richardson-Lucy with the defocus PSF the defocus map estimates.

Deep-R is blind: it never sees the defocus.  This method is its physics
counterpart inside the same pipeline.  The defocus map
(:mod:`wsi_deepr.focus`) gives every refocus window a ``|z|`` estimate; the
window is deconvolved with the scalar-diffraction defocus PSF of that
``|z|`` (:func:`wsi_deepr.optics.psf`) by Richardson-Lucy
(:func:`skimage.restoration.richardson_lucy`).

The defocus map gives ``|z|`` only.  Real objectives add spherical aberration,
and with it the PSF differs on the two sides of focus (a sharp core in a halo
on one, a ring on the other): an aberration-free PSF fits neither.  So each
window is deconvolved, on a central crop, with the PSF of every candidate
Noll-11 coefficient of :attr:`Deconvolution.spherical_waves` at its ``|z|``
(a signed coefficient at ``+|z|`` stands for the same magnitude at either
sign of ``z``), and the candidate whose result has the sparsest gradients
(the highest excess kurtosis, a standard blind-deconvolution criterion: a
wrong PSF leaves ringing and residual blur, both of which spread the gradient
distribution) deconvolves the whole window.  Choosing the defocus itself the
same way was measured and rejected: the criterion prefers too much.

It is deliberately conservative, because an over-estimated PSF makes ringing
and invented edges while an under-estimated one only sharpens less: the
estimate is shrunk (``shrink``), capped (``max_defocus_um``) and the
iterations are few (``iterations``; no noise model, so more iterations amplify
noise and JPEG blocks).  The numbers were chosen and are measured in
``benchmarks/unseen_eval.py`` (README, *Refocusing methods*).  Far from focus
a wide PSF needs more iterations (``iterations_per_um``): the windows a
network hands off past its training range get :data:`HANDOFF_RL_SETTING`,
while ``--method deconvolve`` keeps :data:`RL_SETTINGS`, since the further
setting lost near focus on real defocus (``benchmarks/deconvolution_tuning.py``).

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

__all__ = ["HANDOFF_RL_SETTING", "METHOD_NAME", "RL_SETTINGS", "Deconvolution", "physics_model"]

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
#: Richardson-Lucy settings of ``--method deconvolve`` per modality: (iterations, iterations per µm of
#: |z|, shrink on the estimate), see :class:`Deconvolution`.  Few and fixed: more iterations gained on
#: simulated defocus but lost up to 0.13 SSIM near focus on the real smear stack
#: (benchmarks/deconvolution_tuning.py, benchmarks/smear_default.py; rl-deconvolution card)
RL_SETTINGS = {Modality.BRIGHTFIELD: (10, 0.0, 0.8), Modality.FLUORESCENCE: (10, 0.0, 0.8)}
#: The same for the windows a network hands off past its training range (:class:`~wsi_deepr.restore.Handoff`):
#: there the PSF is wide and more iterations converge further (chosen on the seen sources with
#: benchmarks/deconvolution_tuning.py; the hand-off threshold with the smear stack)
HANDOFF_RL_SETTING = (60, 10.0, 0.9)
#: Defocus step of the cached PSFs (µm): estimates are rounded to it.
Z_STEP_UM = 0.25
#: Candidate spherical aberrations (Noll-11, waves RMS) brightfield chooses from per window: from a
#: well-corrected objective to a cover-glass error (benchmarks/aberration_choice.py)
SPHERICAL_CANDIDATES = (-0.1, -0.05, 0.0, 0.05, 0.1)
#: Side (px) of the central crop on which the aberration is chosen
CHOICE_CROP_PX = 256
#: Richardson-Lucy iterations of each candidate's trial deconvolution (at most the window's own)
CHOICE_ITERATIONS = 10


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
        Richardson-Lucy iterations (with ``iterations_per_um``: at most).
    iterations_per_um : float
        When > 0, a window deconvolved at ``|z|`` gets ``round(iterations_per_um x |z|)``
        iterations (at least 1, at most ``iterations``): a wider PSF needs more
        iterations to converge, while near focus a few already restore what the
        noise supports (:meth:`iterations_at`).  0: ``iterations`` everywhere.
    shrink : float
        Factor on the estimated ``|z|`` (``<= 1``: err towards too little PSF).
    max_defocus_um : float
        Cap on ``|z|`` after shrinking (sets the halo).
    spherical_waves : tuple of float
        Candidate Noll-11 spherical-aberration coefficients (waves RMS) of
        the PSF, chosen per window by gradient sparsity (module docstring);
        ``(0.0,)``: aberration-free, no choice.
    """

    na: float
    wavelengths_um: tuple[float, ...]
    pixel_size_um: float
    iterations: int = 10
    shrink: float = 0.8
    max_defocus_um: float = 8.0
    spherical_waves: tuple[float, ...] = (0.0,)
    iterations_per_um: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= int(self.iterations) <= 200:
            raise ValueError(f"iterations={self.iterations!r}: give 1-200 Richardson-Lucy iterations")
        if not 0 <= self.iterations_per_um <= 100:
            raise ValueError(f"iterations_per_um={self.iterations_per_um!r}: give 0 (fixed iterations) or a rate "
                             "in (0, 100] iterations per µm of defocus")
        if not 0 < self.shrink <= 1.5:
            raise ValueError(f"shrink={self.shrink!r}: give a factor in (0, 1.5] on the estimated defocus")
        if not 0 < self.max_defocus_um <= 50:
            raise ValueError(f"max_defocus_um={self.max_defocus_um!r}: give a cap in (0, 50] µm")
        if not self.spherical_waves or any(not abs(float(a)) <= 0.5 for a in self.spherical_waves):
            raise ValueError(f"spherical_waves={self.spherical_waves!r}: give one or more Noll-11 coefficients "
                             "within ±0.5 waves RMS, e.g. (0.0,) for an aberration-free PSF")
        for a in self.spherical_waves:
            self.setting(1, a)  # validates na, wavelengths, pixel size and the coefficient

    def setting(self, channels: int, spherical_waves: float = 0.0):
        """The :class:`~wsi_deepr.optics.OpticalSetting` for windows of ``channels`` channels."""
        from wsi_deepr.optics import OpticalSetting

        wl = self.wavelengths_um if len(self.wavelengths_um) == channels else self.wavelengths_um[:1] * channels
        return OpticalSetting(na=self.na, wavelengths_um=tuple(wl), pixel_size_um=self.pixel_size_um,
                              spherical_waves=float(spherical_waves))

    def defocus_used(self, estimate_um: float) -> float:
        """The ``|z|`` deconvolved for an estimate: shrunk, capped, rounded to :data:`Z_STEP_UM`."""
        z = min(max(float(estimate_um), 0.0) * self.shrink, self.max_defocus_um)
        return round(z / Z_STEP_UM) * Z_STEP_UM

    def iterations_at(self, z_um: float) -> int:
        """Richardson-Lucy iterations for a PSF of ``|z|`` = ``z_um``."""
        if self.iterations_per_um <= 0:
            return int(self.iterations)
        return int(min(max(round(self.iterations_per_um * float(z_um)), 1), self.iterations))

    def reach_px(self) -> int:
        """Radius (px) of the widest PSF used: the halo needed around a window."""
        from wsi_deepr.optics import psf_radius_px

        widest = max(self.spherical_waves, key=abs)
        return int(psf_radius_px(self.setting(len(self.wavelengths_um), widest), self.max_defocus_um))

    def choose_spherical(self, window: np.ndarray, z_um: float) -> float:
        """The candidate coefficient whose deconvolution of ``window`` ``(C, H, W)`` has the sparsest gradients.

        Each candidate deconvolves a central crop of at most :data:`CHOICE_CROP_PX`
        px; the criterion is the excess kurtosis of the horizontal and
        vertical differences of the channels' mean, away from the crop's
        edges (the green channel alone chose worse: ``benchmarks/aberration_choice.py``),
        each after :data:`CHOICE_ITERATIONS` iterations at most, as the method has always
        chosen (rl-deconvolution card).
        Ties and flat crops (no finite kurtosis) keep the candidate nearest 0.
        """
        candidates = sorted(self.spherical_waves, key=abs)
        if len(candidates) == 1:
            return float(candidates[0])
        from scipy.stats import kurtosis

        h, w = window.shape[1:]
        side_y, side_x = min(h, CHOICE_CROP_PX), min(w, CHOICE_CROP_PX)
        y0, x0 = (h - side_y) // 2, (w - side_x) // 2
        crop = window[:, y0:y0 + side_y, x0:x0 + side_x]
        edge = max(2, min(side_y, side_x) // 8)
        scores = []
        iterations = min(CHOICE_ITERATIONS, self.iterations_at(z_um))
        for a in candidates:
            restored = self.deconvolve(crop, z_um, a, iterations=iterations).mean(axis=0)[edge:-edge, edge:-edge]
            grads = np.concatenate([np.diff(restored, axis=0).ravel(), np.diff(restored, axis=1).ravel()])
            k = float(kurtosis(grads)) if grads.size > 3 and grads.std() > 0 else np.nan
            scores.append(k if np.isfinite(k) else -np.inf)
        return float(candidates[int(np.argmax(scores))])

    def deconvolve(self, window: np.ndarray, z_um: float, spherical_waves: float = 0.0, *,
                   iterations: int | None = None) -> np.ndarray:
        """Richardson-Lucy of every channel of one window with one PSF, no choice made.

        Parameters
        ----------
        window : numpy.ndarray
            ``(C, H, W)`` intensities in ``[0, 1]``.
        z_um : float
            ``|z|`` of the PSF (µm), used as given (no shrink, no cap).
        spherical_waves : float
            Noll-11 coefficient of the PSF (waves RMS).
        iterations : int, optional
            Richardson-Lucy iterations; default :meth:`iterations_at` ``(z_um)``.

        Returns
        -------
        numpy.ndarray
            ``float64`` ``(C, H, W)``.
        """
        kernels = _kernels(self, window.shape[0], z_um, spherical_waves)
        n = self.iterations_at(z_um) if iterations is None else int(iterations)
        return np.stack([self._deconvolve_plane(window[c], kernel, n) for c, kernel in enumerate(kernels)])

    def _deconvolve_plane(self, plane: np.ndarray, kernel: np.ndarray, iterations: int) -> np.ndarray:
        """Richardson-Lucy of one ``(H, W)`` plane, padded by reflection by the kernel's radius."""
        from skimage.restoration import richardson_lucy

        pad = kernel.shape[0] // 2
        padded = np.pad(np.clip(plane, 1e-4, None).astype(np.float64), pad, mode="reflect")
        restored = richardson_lucy(padded, kernel, num_iter=int(iterations), clip=False)
        return restored[pad:pad + plane.shape[0], pad:pad + plane.shape[1]]

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
            spherical = self.choose_spherical(batch[k], z)
            log.debug("window %d: |z| %.2f µm, spherical aberration %+.3f waves", k, z, spherical)
            out[k] = self.deconvolve(batch[k], z, spherical)
        return out

    def to_dict(self) -> dict:
        """Plain-JSON parameters (provenance, fingerprint)."""
        d = asdict(self)
        d["wavelengths_um"] = list(self.wavelengths_um)
        d["spherical_waves"] = list(self.spherical_waves)
        return {"method": METHOD_NAME, **d}


@functools.lru_cache(maxsize=256)
def _kernels(spec: Deconvolution, channels: int, z_um: float, spherical_waves: float = 0.0) -> tuple[np.ndarray, ...]:
    """Non-negative, unit-sum PSF of every channel at ``z_um`` (cached per worker)."""
    from wsi_deepr.optics import psf

    stack = psf(spec.setting(channels, spherical_waves), z_um)
    out = []
    for k in stack:
        k = np.clip(k, 0, None)  # the band-limited PSF rings slightly negative; RL needs >= 0
        out.append(k / k.sum())
    return tuple(out)


def physics_model(modality: Modality, *, n_channels: int, mpp: float | None, pixel_size_um: float | None = None,
                  iterations: int | None = None, shrink: float | None = None, max_defocus_um: float = 8.0,
                  spherical_waves: tuple[float, ...] | None = None,
                  iterations_per_um: float | None = None) -> tuple[ModelInfo, Deconvolution]:
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
    iterations, shrink, max_defocus_um, spherical_waves, iterations_per_um
        See :class:`Deconvolution`.  Defaults: :data:`RL_SETTINGS` of the modality; candidates:
        :data:`SPHERICAL_CANDIDATES` for brightfield RGB; for fluorescence only ``(0.0,)``, since on
        nuclear stains the gradient criterion found the sign no better than chance
        (``benchmarks/aberration_choice.py``).
    """
    from wsi_deepr import __version__
    from wsi_deepr.focus.estimate import na_prior
    from wsi_deepr.optics import BRIGHTFIELD_WAVELENGTHS_UM

    level0 = float(mpp) if mpp else 0.5
    pixel = float(pixel_size_um) if pixel_size_um else level0
    rgb = modality is Modality.BRIGHTFIELD and n_channels == 3
    wavelengths = tuple(BRIGHTFIELD_WAVELENGTHS_UM) if rgb else (FLUORESCENCE_WAVELENGTH_UM,)
    if spherical_waves is None:
        spherical_waves = SPHERICAL_CANDIDATES if rgb else (0.0,)
    default_iterations, default_rate, default_shrink = RL_SETTINGS[modality]
    iterations = default_iterations if iterations is None else iterations
    shrink = default_shrink if shrink is None else shrink
    rate = default_rate if iterations_per_um is None else iterations_per_um
    spec = Deconvolution(na=na_prior(level0), wavelengths_um=wavelengths, pixel_size_um=pixel,
                         iterations=iterations, shrink=shrink, max_defocus_um=max_defocus_um,
                         spherical_waves=tuple(float(a) for a in spherical_waves), iterations_per_um=rate)
    # RL's influence grows with the iterations; twice the PSF radius keeps tiles
    # within the error budget measured in benchmarks/seams.py (README)
    halo = 2 * spec.reach_px()
    card = ModelCard(
        modality=modality, channels=3 if rgb else 1, mpp=None,
        defocus_range_um=(-max_defocus_um, max_defocus_um), normalization="range", halo=halo,
        version=__version__,
        description=("Richardson-Lucy ("
                     + (f"{rate:g} iterations per µm of |z|, at most {iterations}" if rate > 0
                        else f"{iterations} iterations")
                     + f") with the defocus PSF of each window's estimated |z| x {shrink:g} "
                     f"(NA {spec.na:g}, {pixel:g} µm/px), "
                     + ("aberration-free" if spec.spherical_waves == (0.0,) else
                        f"with the spherical aberration of {', '.join(f'{a:+g}' for a in spec.spherical_waves)} "
                        "waves whose result has the sparsest gradients")
                     + ", at the scan's pixel size"),
        extra=(("kind", "deconvolution"), ("min_confidence", f"{MIN_CONFIDENCE[modality]:g}"),
               ("min_defocus_um", f"{MIN_DEFOCUS_UM[modality]:g}")))
    digest = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()
    info = ModelInfo(path=Path(__file__), name=METHOD_NAME, card=card, sha256=digest,
                     input_name="", output_name="")
    return info, spec
