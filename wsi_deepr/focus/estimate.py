"""Blind estimate of the local defocus magnitude ``|z|`` (µm) of image windows.

Method (details and measured accuracy in
``wsi_deepr/models/defocus-estimator.CARD.md``): every window is reduced to
grey at 0.5 µm/px (:mod:`wsi_deepr.focus.features`), described by the shape
of its radially averaged power spectrum in physical frequency bands
(cycles/µm), its contrast, its original pixel size and the objective's
numerical aperture, and mapped to ``|z|`` by an ensemble of small multilayer
perceptrons (two hidden layers, numpy inference) fitted on windows defocused by the
project's optics (:mod:`wsi_deepr.optics`) over randomised NA, aberration,
pixel size, noise, JPEG and stain.  The network predicts the median and the
spread (a Laplace scale) of ``|z|``; the spread and the window's texture
give the confidence.  Fluorescence windows read as defocused whose power
spectrum lacks the zero rings of that defocus while an in-focus model fits
it (:func:`lacks_signature`) get confidence 0: smooth objects, not blur.

Being blind, the estimator cannot see the NA: give ``na`` when it is known,
otherwise the prior :func:`na_prior` is used (0.75 for pixels of 0.3 µm and
coarser, the common 20x scanner objective).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from wsi_deepr.focus.features import band_features, noise_sigma, quantum, texture_snr, to_canonical_gray

__all__ = [
    "IN_FOCUS_UM",
    "MODEL_FILE",
    "DefocusEstimate",
    "estimate_defocus",
    "lacks_signature",
    "na_prior",
]

log = logging.getLogger(__name__)

#: Below this ``|z|`` (µm) a window counts as in focus: the depth of field
#: ``lambda n / NA^2`` of a 20x/0.75 objective in green light (0.97 µm).
IN_FOCUS_UM: float = 1.0
#: Coefficients of the fitted regressors, inside the package.
MODEL_FILE: str = "defocus-estimator.npz"
#: No estimate below these: structure-to-noise ratio (both modalities),
#: relative contrast (brightfield only; glass measures ~0.002, tissue 0.02-0.3)
MIN_SNR: float = 3.0
MIN_CONTRAST_BF: float = 0.008
#: ... and spread of optical density over 2-µm blocks (brightfield only).
MIN_OD_RANGE_BF: float = 0.05
_MODALITIES = ("brightfield", "fluorescence")
#: Numerical apertures the regressors were fitted on (dry objectives); others are clipped.
NA_RANGE: tuple[float, float] = (0.4, 0.95)
#: Fluorescence defocus signature check (:func:`lacks_signature`): a window read as defocused gets confidence 0
#: when an in-focus model fits its spectrum within this factor of the best fit ...
SIGNATURE_NEAR_RATIO: float = 1.2
#: ... while the estimated |z| fits it this many times worse (its OTF's zero rings are not in the spectrum).
SIGNATURE_ESTIMATE_RATIO: float = 2.0


@dataclass(frozen=True)
class DefocusEstimate:
    """Per-window defocus estimates.

    Attributes
    ----------
    defocus_um : numpy.ndarray
        ``(N,)`` float64 ``|z|`` in µm; NaN where there is no estimate
        (glass, blank background, too little texture).
    confidence : numpy.ndarray
        ``(N,)`` float64 in ``[0, 1]``; 0 where there is no estimate.
    """

    defocus_um: np.ndarray
    confidence: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """``(N,)`` bool: where there is an estimate."""
        return ~np.isnan(self.defocus_um)


def na_prior(mpp: float) -> float:
    """Numerical aperture assumed when none is given, from the pixel size.

    0.75 (a 20x/0.75 scanner objective) at 0.3 µm/px and coarser, rising
    linearly to 0.95 (40x/0.95) at 0.15 µm/px and finer.
    """
    if mpp >= 0.3:
        return 0.75
    if mpp <= 0.15:
        return 0.95
    return 0.95 - (mpp - 0.15) / 0.15 * 0.2


@lru_cache(maxsize=1)
def _load_model() -> dict[str, dict[str, np.ndarray]]:
    ref = resources.files("wsi_deepr") / "models" / MODEL_FILE
    try:
        with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except FileNotFoundError as exc:
        from wsi_deepr.errors import ModelNotFoundError

        raise ModelNotFoundError(
            f"{MODEL_FILE}: the defocus estimator's coefficients are missing from wsi_deepr/models; "
            "reinstall wsi-deepr or run benchmarks/defocus_fit.py") from exc
    out: dict[str, list[dict[str, np.ndarray]]] = {m: [] for m in _MODALITIES}
    for key, arr in sorted(arrays.items()):
        parts = key.split("/")  # modality/member/name
        if len(parts) == 3 and parts[0] in out:
            members = out[parts[0]]
            k = int(parts[1])
            while len(members) <= k:
                members.append({})
            members[k][parts[2]] = arr
    for mod, members in out.items():
        if not members:
            from wsi_deepr.errors import ModelError

            raise ModelError(f"{MODEL_FILE}: no {mod} regressor inside; run benchmarks/defocus_fit.py")
    log.debug("defocus estimator: %s", json.loads(str(arrays.get("meta", "{}"))))
    return out


def _ensemble(members: list[dict[str, np.ndarray]], feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the ensemble's members of the median ``|z|`` and of the Laplace scale."""
    outs = [_mlp(p, feats) for p in members]
    return np.mean([o[0] for o in outs], axis=0), np.mean([o[1] for o in outs], axis=0)


def _mlp(params: dict[str, np.ndarray], feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median ``|z|`` and Laplace scale from one fitted network."""
    h = (feats - params["mean"]) / params["std"]
    k = 0
    while f"w{k + 1}" in params:
        h = np.maximum(h @ params[f"w{k}"] + params[f"b{k}"], 0.0)
        k += 1
    out = h @ params[f"w{k}"] + params[f"b{k}"]
    mu = np.logaddexp(0.0, out[:, 0])  # softplus: |z| >= 0
    scale = np.logaddexp(0.0, out[:, 1]) + 0.05
    return mu, scale


def _as_nhwc(windows: np.ndarray) -> np.ndarray:
    arr = np.asarray(windows)
    if arr.ndim == 2:
        arr = arr[None, :, :, None]
    elif arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ValueError(f"windows of shape {arr.shape}: give (N, H, W, C), (H, W, C) or (H, W)")
    if min(arr.shape[1:3]) < 16:
        raise ValueError(f"windows of {arr.shape[1]}x{arr.shape[2]} px are too small: give at least "
                         "32 µm of image per window (64 px at 0.5 µm/px)")
    return arr


def estimate_defocus(
    windows: np.ndarray,
    *,
    mpp: float,
    modality: str = "brightfield",
    full_scale: float | None = None,
    na: float | None = None,
) -> DefocusEstimate:
    """Estimate the defocus magnitude ``|z|`` in µm of each window, blind.

    Parameters
    ----------
    windows : numpy.ndarray
        ``(N, H, W, C)`` or ``(H, W, C)`` pixels in the slide's type
        (uint8/uint16/float): brightfield RGB, or fluorescence channel(s)
        (several channels are averaged).  Windows of about 64 µm
        (128 px at 0.5 µm/px) are what the estimator was calibrated on;
        32 µm is the least.
    mpp : float
        µm per pixel of these windows.
    modality : {"brightfield", "fluorescence"}
        Which calibration to use.
    full_scale : float, optional
        Value of a saturated pixel; default the integer type's maximum
        (1.0 for floats).
    na : float, optional
        Objective NA when known; default :func:`na_prior` of ``mpp``.  Values
        outside the calibrated :data:`NA_RANGE` (0.4-0.95) are clipped to it,
        with a warning.

    Returns
    -------
    DefocusEstimate
        NaN and confidence 0 where the window holds too little texture
        (glass, blank background); confidence 0 also for fluorescence
        windows that :func:`lacks_signature`.
    """
    mod = str(getattr(modality, "value", modality)).lower()
    if mod not in _MODALITIES:
        raise ValueError(f"modality={modality!r}: use 'brightfield' or 'fluorescence'")
    if na is None:
        na = na_prior(mpp)
    elif not 0.05 <= na <= 1.5:
        raise ValueError(f"na={na!r}: give the objective's numerical aperture (e.g. 0.75), or None")
    elif not NA_RANGE[0] <= na <= NA_RANGE[1]:
        log.warning("na=%s is outside the calibrated %s-%s; estimating at the nearest calibrated NA",
                    na, *NA_RANGE)
        na = min(max(na, NA_RANGE[0]), NA_RANGE[1])
    arr = _as_nhwc(windows)
    gray = to_canonical_gray(arr, mpp=mpp, full_scale=full_scale)
    sigma = noise_sigma(gray)
    snr, contrast, od_range = texture_snr(gray, step=quantum(arr.dtype, full_scale), sigma=sigma)
    ok = snr >= MIN_SNR
    if mod == "brightfield":
        ok &= (contrast >= MIN_CONTRAST_BF) & (od_range >= MIN_OD_RANGE_BF)
    z = np.full(len(arr), np.nan)
    conf = np.zeros(len(arr))
    if ok.any():
        mu, scale = _ensemble(_load_model()[mod], band_features(gray[ok], mpp=mpp, na=na, sigma=sigma[ok]))
        z[ok] = mu
        texture = np.clip(np.log10(snr[ok] / MIN_SNR), 0.0, 1.0)
        conf[ok] = np.clip(texture / (1.0 + scale / 0.5), 0.0, 1.0)
        if mod == "fluorescence" and min(gray.shape[1:]) >= 32:
            check = np.flatnonzero(ok & (z >= IN_FOCUS_UM))
            if check.size:
                conf[check[lacks_signature(gray[check], sigma[check], z[check], na=na)]] = 0.0
    return DefocusEstimate(defocus_um=z, confidence=conf)


def lacks_signature(gray: np.ndarray, sigma: np.ndarray, defocus_um: np.ndarray, *, na: float) -> np.ndarray:
    """``(N,)`` bool: fluorescence windows whose spectrum an in-focus model explains while ``defocus_um`` does not.

    The spectrum of a window truly defocused by ``|z|`` carries the zero rings
    of that defocus; an in-focus model then fits it clearly worse.  Where an
    in-focus model fits within :data:`SIGNATURE_NEAR_RATIO` of the best fit
    and the estimate fits :data:`SIGNATURE_ESTIMATE_RATIO` times worse
    (:func:`wsi_deepr.focus.spectral.spectral_fit`), the blur the estimator
    read is the object's own smoothness (soft nuclei, an upsampled image).

    Parameters
    ----------
    gray : numpy.ndarray
        ``(N, H, W)`` canonical grey windows (:data:`~wsi_deepr.focus.features.CANONICAL_MPP`).
    sigma : numpy.ndarray
        ``(N,)`` their pixel noise.
    defocus_um : numpy.ndarray
        ``(N,)`` the estimates.
    na : float
        Objective NA.
    """
    from wsi_deepr.focus.features import CANONICAL_MPP
    from wsi_deepr.focus.spectral import spectral_fit
    from wsi_deepr.optics import FLUORESCENCE_WAVELENGTH_UM

    fit = spectral_fit(gray, sigma=sigma, mpp=CANONICAL_MPP, na=na, wavelengths_um=(FLUORESCENCE_WAVELENGTH_UM,),
                       near_um=IN_FOCUS_UM)
    smooth = (fit.near_ratio <= SIGNATURE_NEAR_RATIO) & (fit.ratio_at(defocus_um) >= SIGNATURE_ESTIMATE_RATIO)
    if smooth.any():
        log.debug("%d of %d windows read as defocused lack the defocus signature", smooth.sum(), len(smooth))
    return smooth
