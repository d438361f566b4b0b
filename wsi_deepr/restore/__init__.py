"""Restoration methods other than the network: non-blind deconvolution with the estimated PSF."""

from wsi_deepr.restore.deconvolution import METHOD_NAME, Deconvolution, physics_model

__all__ = ["METHOD_NAME", "Deconvolution", "physics_model"]
