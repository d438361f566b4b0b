"""The network within the defocus it was trained on, deconvolution beyond it.

A Deep-R network extrapolates badly past its training range (``defocus_range_um``
in its card): on simulated defocus of unseen sources and on the far planes of
the real smear stack its output is then no better, or worse, than its input,
while Richardson-Lucy with the estimated PSF still gains
(``benchmarks/unseen_eval.py --z 5 6 7 8``, ``benchmarks/smear_default.py``;
the deepr-brightfield card).  A card with ``deconvolve_beyond_um`` hands the
windows whose estimated ``|z|`` exceeds it to :class:`Deconvolution`; both see
the same ``range``-normalised intensities.

A card with ``consistency_max_step`` also fits the strength of the network's
correction on every window it runs on to the measurement
(:mod:`wsi_deepr.restore.consistency`), with the PSF of the window's
estimated defocus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wsi_deepr.inference.session import SessionSpec, run_model
from wsi_deepr.restore.consistency import fit_correction
from wsi_deepr.restore.deconvolution import Deconvolution

__all__ = ["Handoff"]


@dataclass(frozen=True)
class Handoff:
    """A network session for windows up to ``beyond_um`` of estimated defocus, deconvolution past it.

    Picklable: it travels to Dask workers in place of a model session.

    Parameters
    ----------
    network : SessionSpec
        The model session.
    physics : Deconvolution
        The method for the far windows (same pixel size and normalisation).
    beyond_um : float
        Windows estimated beyond this ``|z|`` (µm) are deconvolved (``math.inf``: none).
    max_step : float, optional
        Fit the network's correction on each window to the measurement with a
        step of at most this (:func:`~wsi_deepr.restore.consistency.fit_correction`);
        ``None``: the network's output as it is.
    """

    network: SessionSpec
    physics: Deconvolution
    beyond_um: float = math.inf
    max_step: float | None = None

    def __post_init__(self) -> None:
        if not self.beyond_um > 0:
            raise ValueError(f"beyond_um={self.beyond_um!r}: give the defocus (µm) past which to deconvolve, > 0")
        if self.max_step is not None and not 0 < self.max_step <= 2:
            raise ValueError(f"max_step={self.max_step!r}: give the largest step of the correction, in (0, 2]")

    @property
    def intra_op_threads(self) -> int:
        """The network session's ONNX Runtime threads."""
        return self.network.intra_op_threads

    def far(self, defocus_um: np.ndarray | None, n: int) -> np.ndarray:
        """``(n,)`` bool: which windows are deconvolved (none without estimates)."""
        if defocus_um is None:
            return np.zeros(n, dtype=bool)
        z = np.asarray(defocus_um, dtype=np.float64).reshape(-1)
        with np.errstate(invalid="ignore"):
            return np.isfinite(z) & (z > self.beyond_um)

    def run(self, batch: np.ndarray, defocus_um: np.ndarray | None, *, model_channels: int) -> np.ndarray:
        """Refocus ``batch`` ``(N, C, H, W)``: the network on near windows, deconvolution on far ones."""
        far = self.far(defocus_um, batch.shape[0])
        out = np.empty(batch.shape, dtype=np.float32)
        if (~far).any():
            near = np.ascontiguousarray(batch[~far])
            restored = run_model(self.network, near, model_channels=model_channels)
            if self.max_step is not None and defocus_um is not None:
                z = np.asarray(defocus_um, dtype=np.float64).reshape(-1)[~far]
                restored = fit_correction(near, restored, z, setting=self.physics.setting(batch.shape[1]),
                                          max_step=self.max_step)
            out[~far] = restored
        if far.any():
            out[far] = self.physics.run(batch[far], np.asarray(defocus_um, dtype=np.float64).reshape(-1)[far])
        return out

    def to_dict(self) -> dict:
        """Plain-JSON description (provenance): the deconvolution's parameters when it runs, else the PSF model."""
        physics = self.physics.to_dict()
        if not math.isfinite(self.beyond_um):  # no deconvolution: only the optics of the fit's PSFs
            physics = {k: physics[k] for k in ("na", "wavelengths_um", "pixel_size_um")}
        d = {"deconvolve_beyond_um": self.beyond_um if math.isfinite(self.beyond_um) else None, **physics}
        return d | ({"consistency_max_step": self.max_step} if self.max_step is not None else {})
