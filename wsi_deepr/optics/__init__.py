"""Physics of defocus: PSF/OTF, uniform and tilted defocus, Köhler brightfield, domain randomisation.

Pure numpy/scipy, no torch: the training-data builders and the evaluation side
of inference share it.
"""

from __future__ import annotations

from wsi_deepr.optics.defocus import TiltedPlane, defocus, defocus_tilted, iter_defocused_strips
from wsi_deepr.optics.koehler import defocus_koehler
from wsi_deepr.optics.psf import OpticalSetting, otf, psf, psf_fwhm_um, psf_radius_px, pupil_energy
from wsi_deepr.optics.randomize import (
    BRIGHTFIELD_WAVELENGTHS_UM,
    FLUORESCENCE_WAVELENGTH_UM,
    RandomizationRanges,
    Realisation,
    sample_realisation,
)

__all__ = [
    "BRIGHTFIELD_WAVELENGTHS_UM",
    "FLUORESCENCE_WAVELENGTH_UM",
    "OpticalSetting",
    "RandomizationRanges",
    "Realisation",
    "TiltedPlane",
    "defocus",
    "defocus_koehler",
    "defocus_tilted",
    "iter_defocused_strips",
    "otf",
    "psf",
    "psf_fwhm_um",
    "psf_radius_px",
    "pupil_energy",
    "sample_realisation",
]
