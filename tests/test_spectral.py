"""Defocus signature of a window's spectrum (wsi_deepr.focus.spectral) and the fluorescence check built on it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from wsi_deepr.focus.estimate import (IN_FOCUS_UM, SIGNATURE_ESTIMATE_RATIO, SIGNATURE_NEAR_RATIO, estimate_defocus,
                                      lacks_signature)
from wsi_deepr.focus.features import noise_sigma, to_canonical_gray
from wsi_deepr.focus.spectral import Z_GRID_UM, spectral_fit
from wsi_deepr.optics import FLUORESCENCE_WAVELENGTH_UM, OpticalSetting, defocus

SETTING = OpticalSetting(na=0.75, wavelengths_um=(FLUORESCENCE_WAVELENGTH_UM,), pixel_size_um=0.5)


@pytest.fixture(scope="module")
def nuclei() -> np.ndarray:
    """A 512-px field of textured bright nuclei (radius 3-5.5 µm) on a dim background, 0.5 µm/px."""
    rng = np.random.default_rng(3)
    n = 512
    img = np.zeros((n, n), np.float32)
    yy, xx = np.mgrid[:n, :n]
    for _ in range(160):
        cy, cx, r = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(6, 11)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0.4, 1.0)
    tex = ndi.gaussian_filter(rng.random((n, n)).astype(np.float32), 1.0)
    return img * (0.7 + 0.18 * (tex - tex.mean()) / tex.std()) + 0.05


def _windows(obj: np.ndarray, z: float, seed: int = 0) -> np.ndarray:
    """16 canonical grey 128-px windows of ``obj`` captured at ``z`` (1500 photons, 8 bit)."""
    rng = np.random.default_rng(seed)
    img = np.clip(defocus(obj, SETTING, z), 0, None)
    img = np.clip(np.rint(rng.poisson(img / img.max() * 1500) / 1500 * 255), 0, 255).astype(np.uint8)
    w = np.stack([img[y:y + 128, x:x + 128] for y in range(0, 512, 128) for x in range(0, 512, 128)])
    return to_canonical_gray(w[..., None], mpp=0.5)


def _fit(gray: np.ndarray):
    return spectral_fit(gray, sigma=noise_sigma(gray), mpp=0.5, na=0.75,
                        wavelengths_um=(FLUORESCENCE_WAVELENGTH_UM,), near_um=IN_FOCUS_UM)


@pytest.mark.parametrize("z", [0.0, 2.0, 4.0])
def test_fit_finds_the_defocus_of_its_zero_rings(nuclei: np.ndarray, z: float) -> None:
    fit = _fit(_windows(nuclei, z))
    assert abs(float(np.median(fit.defocus_um)) - max(z, 0.5)) <= 0.75, fit.defocus_um
    assert (fit.near_ratio >= 1.0).all() and (fit.ratios.min(axis=1) == pytest.approx(1.0))
    if z >= 2.0:  # in focus cannot explain the rings: clearly worse than the best fit
        assert np.median(fit.near_ratio) > 2.0, fit.near_ratio
    else:
        assert np.median(fit.near_ratio) < SIGNATURE_NEAR_RATIO, fit.near_ratio


def test_check_calls_a_misread_in_focus_window_in_focus(nuclei: np.ndarray) -> None:
    gray = _windows(nuclei, 0.0)
    claimed = np.full(len(gray), 4.5)  # what a blind estimator may say of smooth in-focus content
    fit = _fit(gray)
    assert np.median(fit.ratio_at(claimed)) >= SIGNATURE_ESTIMATE_RATIO
    assert np.mean(lacks_signature(gray, noise_sigma(gray), claimed, na=0.75)) >= 0.9


def test_check_keeps_real_defocus(nuclei: np.ndarray) -> None:
    gray = _windows(nuclei, 4.0)
    assert not lacks_signature(gray, noise_sigma(gray), np.full(len(gray), 4.5), na=0.75).any()
    assert not lacks_signature(gray, noise_sigma(gray), np.full(len(gray), 3.5), na=0.75).any()


def test_estimator_keeps_confidence_of_real_fluorescence_defocus(nuclei: np.ndarray) -> None:
    img = np.clip(defocus(nuclei, SETTING, 4.0), 0, None)
    img = np.rint(img / img.max() * 250).astype(np.uint8)
    w = np.stack([img[y:y + 128, x:x + 128] for y in range(0, 512, 128) for x in range(0, 512, 128)])
    est = estimate_defocus(w, mpp=0.5, modality="fluorescence")
    assert est.valid.all() and (est.defocus_um > 2.5).all() and (est.confidence > 0).all(), est


def test_check_keeps_estimates_where_the_spectrum_says_nothing() -> None:
    rng = np.random.default_rng(0)
    gray = (0.3 + 0.02 * rng.standard_normal((4, 128, 128))).astype(np.float32)  # noise only
    assert not lacks_signature(gray, noise_sigma(gray), np.full(4, 3.0), na=0.75).any()


def test_ratio_at_and_input_checks(nuclei: np.ndarray) -> None:
    fit = _fit(_windows(nuclei, 4.0)[:3])
    r = fit.ratio_at(np.array([np.nan, 4.0, 99.0]))
    assert np.isnan(r[0]) and np.isnan(r[2]) and r[1] == pytest.approx(1.0, abs=0.5)
    assert len(Z_GRID_UM) == fit.ratios.shape[1]
    with pytest.raises(ValueError, match="at least 32x32"):
        spectral_fit(np.zeros((2, 16, 16)), sigma=np.ones(2), mpp=0.5, na=0.75, wavelengths_um=(0.52,), near_um=1.0)
    empty = spectral_fit(np.zeros((0, 64, 64)), sigma=np.zeros(0), mpp=0.5, na=0.75, wavelengths_um=(0.52,),
                         near_um=1.0)
    assert empty.defocus_um.shape == (0,) and empty.ratios.shape == (0, len(Z_GRID_UM))
