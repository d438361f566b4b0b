"""Fit the strength of a network's correction to the measurement: the data-consistency step.

A blind network decides by itself how much to sharpen.  On content it was
not trained on it can over-correct: more contrast than the in-focus truth,
edges and texture the defocused capture does not support (issue 13;
``benchmarks/unseen_eval.py --unseen``).  Physics can check that.  Defocus
blurs the truth ``x`` into the capture ``y = h * x`` (``h`` the defocus PSF), so
a correct restoration re-blurred with ``h`` gives back ``y``.

With the PSF of the defocus the map estimates for the window, the network's
correction ``d = net - y`` is scaled by the least-squares step

    a* = <h * d, y - h * y> / <h * d, h * d>,

the ``a`` for which ``h * (y + a d)`` is closest to ``y``.  The step is clipped
to ``[0, max_step]``.  ``max_step = 1`` never strengthens the network, it only
takes back what the measurement does not support.  The step is one number
per window over all its channels: it sets how strongly to correct, never
what the correction looks like.  Blur commutes with an affine intensity
normalisation, so the step is the same in a model's normalised space.  What
it changes is measured in the deepr-brightfield card.
"""

from __future__ import annotations

import numpy as np

from wsi_deepr.restore.deconvolution import Z_STEP_UM

__all__ = ["consistency_steps", "fit_correction"]


def _blur(planes: np.ndarray, setting, z_um: float) -> tuple[np.ndarray, int]:
    """``(..., C, H, W)`` convolved channel by channel with the PSF of ``z_um``, periodically (float32).

    Returns the blurred planes and the PSF's radius: only pixels at least that
    far from the borders are exact (:func:`consistency_steps` uses only those;
    a window's halo gives them their real context).
    """
    from scipy import fft

    from wsi_deepr.optics import otf, psf_radius_px

    shape = planes.shape[-2:]
    spectra = fft.rfft2(planes.astype(np.float32, copy=False), axes=(-2, -1))
    blurred = fft.irfft2(spectra * otf(setting, z_um, shape), s=shape, axes=(-2, -1)).astype(np.float32)
    return blurred, min(psf_radius_px(setting, z_um), min(shape) // 2 - 1)


def consistency_steps(inputs: np.ndarray, outputs: np.ndarray, defocus_um: np.ndarray, *, setting,
                      max_step: float = 1.0) -> np.ndarray:
    """Least-squares step of each window's correction, clipped to ``[0, max_step]``.

    Parameters
    ----------
    inputs, outputs : numpy.ndarray
        ``(N, C, H, W)``: the captures and the network's outputs, in any affine
        normalisation of the intensities (blur commutes with it).  The step is fitted on the pixels at least
        the PSF's radius inside each window (the window's halo gives them
        their real context).
    defocus_um : numpy.ndarray
        ``(N,)`` estimated ``|z|`` per window (µm).  A window whose estimate is NaN
        or rounds to 0 gets step 1: without a PSF there is nothing to check.
    setting : OpticalSetting
        The optics of the windows: NA, one wavelength per channel, pixel size.
    max_step : float
        Upper bound of the step.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` float64 steps.
    """
    z = np.asarray(defocus_um, dtype=np.float64).reshape(-1)
    if z.shape[0] != inputs.shape[0] or inputs.shape != outputs.shape:
        raise ValueError(f"{inputs.shape[0]} inputs, {outputs.shape[0]} outputs and {z.shape[0]} defocus values "
                         "must agree (and the inputs and outputs in shape)")
    steps = np.ones(z.shape[0], dtype=np.float64)
    for k, estimate in enumerate(z):
        zr = round(float(estimate) / Z_STEP_UM) * Z_STEP_UM if np.isfinite(estimate) else 0.0
        if zr <= 0:
            continue
        y = inputs[k].astype(np.float32)
        (h_y, h_d), r = _blur(np.stack([y, outputs[k].astype(np.float32) - y]), setting, zr)
        inner = (slice(None), slice(r, y.shape[1] - r), slice(r, y.shape[2] - r))
        h_d, residual = h_d[inner].astype(np.float64), (y - h_y)[inner].astype(np.float64)
        energy = float(np.sum(h_d * h_d))
        step = float(np.sum(h_d * residual)) / energy if energy > 0 else 0.0
        steps[k] = min(max(step, 0.0), float(max_step))
    return steps


def fit_correction(inputs: np.ndarray, outputs: np.ndarray, defocus_um: np.ndarray, *, setting,
                   max_step: float = 1.0) -> np.ndarray:
    """``inputs + a * (outputs - inputs)`` with each window's :func:`consistency_steps` ``a`` (``float32``)."""
    steps = consistency_steps(inputs, outputs, defocus_um, setting=setting, max_step=max_step)
    a = steps.astype(np.float32)[:, None, None, None]
    return (inputs + a * (outputs.astype(np.float32) - inputs)).astype(np.float32)
