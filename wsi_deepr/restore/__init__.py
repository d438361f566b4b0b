"""Restoration methods other than the network alone: non-blind deconvolution with the estimated PSF,
the hand-off from a network to it beyond the network's trained defocus, and the data-consistency fit
of a network's correction to the measurement."""

from wsi_deepr.restore.consistency import consistency_steps, fit_correction
from wsi_deepr.restore.deconvolution import METHOD_NAME, Deconvolution, physics_model
from wsi_deepr.restore.handoff import Handoff

__all__ = ["METHOD_NAME", "Deconvolution", "Handoff", "consistency_steps", "fit_correction", "physics_model"]
