"""The data-consistency fit of a network's correction to the measurement (wsi_deepr.restore.consistency)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from wsi_deepr import refocus
from wsi_deepr.optics import BRIGHTFIELD_WAVELENGTHS_UM, OpticalSetting
from wsi_deepr.restore import Deconvolution, Handoff, consistency_steps, fit_correction
from wsi_deepr.restore.consistency import _blur
from wsi_deepr.testing import DefocusRegion, write_layout_slide

from .conftest import shared_path

SETTING = OpticalSetting(na=0.75, wavelengths_um=BRIGHTFIELD_WAVELENGTHS_UM, pixel_size_um=0.5)


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    """Four 96-px windows of the real IHC image, ``(4, 3, 96, 96)`` intensities."""
    import skimage.io

    img = np.asarray(skimage.io.imread(shared_path("images", "ihc.png")))[..., :3].astype(np.float32) / 255
    crops = [img[y:y + 96, x:x + 96] for y, x in ((0, 0), (96, 0), (0, 96), (200, 200))]
    return np.ascontiguousarray(np.stack(crops).transpose(0, 3, 1, 2))


def _capture(truth: np.ndarray, z: float) -> np.ndarray:
    """Each window blurred by the PSF of ``z`` exactly as the fit models it (periodically)."""
    return np.stack([_blur(w, SETTING, z)[0] for w in truth])


def test_the_truth_is_consistent_and_an_overcorrection_is_taken_back_exactly(truth) -> None:
    y = _capture(truth, 3.0)
    d = truth - y
    z = np.full(4, 3.0)
    np.testing.assert_allclose(consistency_steps(y, truth, z, setting=SETTING), 1.0, atol=1e-4)
    # a network that corrects twice too much gets step 1/2, i.e. exactly the truth back
    twice = y + 2 * d
    np.testing.assert_allclose(consistency_steps(y, twice, z, setting=SETTING), 0.5, atol=1e-4)
    np.testing.assert_allclose(fit_correction(y, twice, z, setting=SETTING), truth, atol=1e-4)
    # half the correction: the measurement asks for step 2, the bound keeps 1 (never strengthen)
    half = y + 0.5 * d
    np.testing.assert_allclose(consistency_steps(y, half, z, setting=SETTING), 1.0, atol=1e-6)
    np.testing.assert_allclose(consistency_steps(y, half, z, setting=SETTING, max_step=2.0), 2.0, atol=1e-3)
    # a correction the blur contradicts (the wrong sign) is dropped
    np.testing.assert_array_equal(consistency_steps(y, y - d, z, setting=SETTING), 0.0)


def test_on_windows_cut_from_a_defocused_image_the_truth_fits_with_step_one(truth) -> None:
    from wsi_deepr.optics import defocus

    image = truth[3].transpose(1, 2, 0).astype(np.float64)  # one real window (the object), defocused whole
    sharp, blurred = image, defocus(image, SETTING, 2.5)
    cut = (slice(8, 88), slice(8, 88))  # windows are cut from a larger image: their borders are not periodic
    y = np.ascontiguousarray(blurred[cut].transpose(2, 0, 1)[None], dtype=np.float32)
    x = np.ascontiguousarray(sharp[cut].transpose(2, 0, 1)[None], dtype=np.float32)
    step = consistency_steps(y, x, np.array([2.5]), setting=SETTING, max_step=2.0)[0]
    assert step == pytest.approx(1.0, abs=0.1)
    assert consistency_steps(y, y + 2 * (x - y), np.array([2.5]), setting=SETTING)[0] == pytest.approx(0.5, abs=0.05)


def test_windows_without_an_estimate_keep_the_networks_output(truth) -> None:
    y = _capture(truth, 2.0)
    out = y + 3 * (truth - y)
    steps = consistency_steps(y, out, np.array([np.nan, 0.1, 2.0, 2.0]), setting=SETTING)
    np.testing.assert_array_equal(steps[:2], 1.0)  # NaN, and 0.1 rounds to 0: no PSF to check with
    assert np.all(steps[2:] < 0.5)
    np.testing.assert_array_equal(consistency_steps(y, y, np.full(4, 2.0), setting=SETTING), 0.0)  # no correction
    with pytest.raises(ValueError, match="4 inputs, 4 outputs and 3 defocus values"):
        consistency_steps(y, out, np.ones(3), setting=SETTING)


def test_the_handoff_fits_the_networks_windows_and_records_the_bound(truth, model_factory) -> None:
    from wsi_deepr.inference.session import SessionSpec, run_model
    from wsi_deepr.testing import default_card

    path = model_factory("fit-net", default_card(normalization="range", min_defocus_um="1.5"))
    network = SessionSpec(str(path), "cpu", 1)
    physics = Deconvolution(na=0.75, wavelengths_um=BRIGHTFIELD_WAVELENGTHS_UM, pixel_size_um=0.5)
    batch = _capture(truth, 3.0)
    z = np.array([3.0, 3.0, 7.0, np.nan])
    plain = run_model(network, batch, model_channels=3)
    fitted = Handoff(network, physics, beyond_um=6.0, max_step=1.0)
    out = fitted.run(batch, z, model_channels=3)
    np.testing.assert_allclose(out[:2], fit_correction(batch[:2], plain[:2], z[:2], setting=SETTING), atol=1e-5)
    np.testing.assert_array_equal(out[2], physics.run(batch[2:3], z[2:3])[0])
    np.testing.assert_allclose(out[3], plain[3], atol=1e-5)  # no estimate: the network's output
    # no deconvolution threshold: every estimated window is the network's, fitted
    only = Handoff(network, physics, max_step=1.0)
    np.testing.assert_allclose(only.run(batch, z, model_channels=3)[2],
                               fit_correction(batch[2:3], plain[2:3], z[2:3], setting=SETTING)[0], atol=1e-5)
    assert only.to_dict() == {"deconvolve_beyond_um": None, "na": 0.75, "wavelengths_um": list(BRIGHTFIELD_WAVELENGTHS_UM),
                              "pixel_size_um": 0.5, "consistency_max_step": 1.0}  # no deconvolution parameters
    assert fitted.to_dict()["consistency_max_step"] == 1.0
    with pytest.raises(ValueError, match="max_step=0"):
        Handoff(network, physics, max_step=0)


@pytest.mark.slow
def test_a_card_with_consistency_max_step_fits_the_network_in_the_pipeline(tmp_path, model_factory, caplog) -> None:
    import skimage.io

    from wsi_deepr.testing import default_card

    ihc = np.asarray(skimage.io.imread(shared_path("images", "ihc.png")))[..., :3]
    rgb = np.tile(ihc[:384, :384], (3, 3, 1))[:1024, :1024]
    slide = write_layout_slide(rgb, tmp_path / "bf.tif", regions=[DefocusRegion(0, 0, 512, 1024, 4.0)])
    fitted = model_factory("fit-card", default_card(normalization="range", halo="56", min_defocus_um="1.5",
                                                    consistency_max_step="1"))
    refocus(slide, tmp_path / "fit.ome.tif", model=fitted, workers=2, compression="zlib")
    handoff = json.loads((tmp_path / "fit.ome.tif.json").read_text())["parameters"]["handoff"]
    assert handoff["consistency_max_step"] == 1.0 and handoff["deconvolve_beyond_um"] is None
    plain = model_factory("fit-card", default_card(normalization="range", halo="56", min_defocus_um="1.5"))
    refocus(slide, tmp_path / "plain.ome.tif", model=plain, workers=2, compression="zlib")
    a, b = tifffile.imread(tmp_path / "fit.ome.tif"), tifffile.imread(tmp_path / "plain.ome.tif")
    assert not np.array_equal(a[:400], b[:400])  # the defocused half: fitted
    np.testing.assert_array_equal(a[800:], b[800:])  # in focus: passed through by both

    # blur commutes with an affine normalisation: the fit runs on a zscore card too; deconvolution past a
    # threshold needs intensities, so a zscore card's deconvolve_beyond_um is dropped with a warning
    zscore = model_factory("fit-zscore", default_card(normalization="zscore", halo="56", min_defocus_um="1.5",
                                                      consistency_max_step="1", deconvolve_beyond_um="3"))
    with caplog.at_level("WARNING", logger="wsi_deepr.stages"):
        refocus(slide, tmp_path / "z.ome.tif", model=zscore, workers=2, compression="zlib")
    handoff = json.loads((tmp_path / "z.ome.tif.json").read_text())["parameters"]["handoff"]
    assert handoff["consistency_max_step"] == 1.0 and handoff["deconvolve_beyond_um"] is None
    assert "deconvolve_beyond_um needs a 'range' normalisation" in caplog.text
