"""Partially coherent (Köhler) brightfield defocus: wsi_deepr.optics.koehler."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_deepr.optics import BRIGHTFIELD_WAVELENGTHS_UM, OpticalSetting, defocus
from wsi_deepr.optics.koehler import defocus_koehler

from .conftest import shared_path

SETTING = OpticalSetting(na=0.75, wavelengths_um=BRIGHTFIELD_WAVELENGTHS_UM, pixel_size_um=0.5)


@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    import skimage.io

    return np.asarray(skimage.io.imread(shared_path("images", "ihc.png")))[:160, :192, :3].astype(np.float64) / 255.0


@pytest.mark.parametrize("z", [0.0, 4.0])
def test_clear_glass_stays_at_full_brightness(z) -> None:
    out = defocus_koehler(np.ones((40, 56, 3)), SETTING, z)
    np.testing.assert_allclose(out, 1.0, atol=1e-5)


def test_in_focus_image_is_the_specimen_and_defocus_blurs_it(ihc) -> None:
    focus = defocus_koehler(ihc, SETTING, 0.0)
    assert np.abs(focus - ihc).mean() < 0.005
    assert abs(float(focus.mean()) - float(ihc.mean())) < 1e-3
    far = defocus_koehler(ihc, SETTING, 4.0)
    assert far.std() < 0.9 * focus.std()


def test_phase_makes_plus_and_minus_defocus_differ(ihc) -> None:
    """A pure absorber looks the same at ±z; a phase specimen does not (the incoherent model never sees it)."""
    absorber = [defocus_koehler(ihc, SETTING, z, phase_per_od=0.0) for z in (3.0, -3.0)]
    assert np.abs(absorber[0] - absorber[1]).max() < 1e-3
    phase = [defocus_koehler(ihc, SETTING, z, phase_per_od=1.0) for z in (3.0, -3.0)]
    assert np.abs(phase[0] - phase[1]).mean() > 0.005
    incoherent = [defocus(ihc, SETTING, z) for z in (3.0, -3.0)]
    assert np.abs(incoherent[0] - incoherent[1]).max() < 1e-4


def test_condenser_aperture_is_checked() -> None:
    with pytest.raises(ValueError, match="condenser_na=0.9"):
        defocus_koehler(np.ones((8, 8, 3)), SETTING, 1.0, condenser_na=0.9)
