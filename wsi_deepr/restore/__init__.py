"""Restoration methods other than the network alone: non-blind deconvolution with the estimated PSF,
and the hand-off from a network to it beyond the network's trained defocus."""

from wsi_deepr.restore.deconvolution import METHOD_NAME, Deconvolution, physics_model
from wsi_deepr.restore.handoff import Handoff

__all__ = ["METHOD_NAME", "Deconvolution", "Handoff", "physics_model"]
