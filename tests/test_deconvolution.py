"""Non-blind refocusing: Richardson-Lucy with the defocus PSF the defocus map estimates (wsi_deepr.restore)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import tifffile
from skimage.metrics import structural_similarity

from wsi_deepr import refocus
from wsi_deepr.errors import ModelNotFoundError, OptionError
from wsi_deepr.inference.kernel import refocus_array
from wsi_deepr.inference.normalization import compute_stats
from wsi_deepr.options import RefocusOptions
from wsi_deepr.optics import BRIGHTFIELD_WAVELENGTHS_UM, OpticalSetting, defocus
from wsi_deepr.readers.slide import Modality
from wsi_deepr.restore import METHOD_NAME, Deconvolution, physics_model
from wsi_deepr.restore.deconvolution import HANDOFF_RL_SETTING
from wsi_deepr.testing import DefocusRegion, write_layout_slide

from .conftest import shared_path

SETTING = OpticalSetting(na=0.75, wavelengths_um=BRIGHTFIELD_WAVELENGTHS_UM, pixel_size_um=0.5)


@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    """The real in-focus IHC image as intensities in [0, 1], (Y, X, 3)."""
    import skimage.io

    return np.asarray(skimage.io.imread(shared_path("images", "ihc.png")))[..., :3].astype(np.float64) / 255.0


@pytest.fixture(scope="module")
def he_field() -> np.ndarray:
    """A real in-focus H&E field (CMU-1-Small-Region) as intensities in [0, 1], (320, 320, 3)."""
    from wsi_deepr import open_slide

    slide = open_slide(shared_path("slides", "CMU-1-Small-Region.svs"))
    return slide.read_region(0, 400, 1400, 720, 1720)[..., :3].astype(np.float64) / 255.0


def _ssim(a: np.ndarray, b: np.ndarray, margin: int = 24) -> float:
    sl = (slice(margin, -margin), slice(margin, -margin))
    return structural_similarity(np.clip(a[sl], 0, 1), np.clip(b[sl], 0, 1), data_range=1.0, channel_axis=-1,
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False)


def _chw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)


def test_deconvolving_with_the_true_defocus_brings_a_real_image_closer_to_focus(ihc) -> None:
    crop = ihc[:256, :256]
    truth, blurred = defocus(crop, SETTING, 0.0), defocus(crop, SETTING, 4.0)
    spec = Deconvolution(na=0.75, wavelengths_um=BRIGHTFIELD_WAVELENGTHS_UM, pixel_size_um=0.5, shrink=1.0)
    out = spec.run(_chw(blurred), np.array([4.0]))[0].transpose(1, 2, 0)
    before, after = _ssim(blurred, truth), _ssim(out, truth)
    assert after > before + 0.03, (before, after)


def test_windows_without_an_estimate_or_below_a_step_come_back_bit_for_bit(ihc) -> None:
    spec = Deconvolution(na=0.75, wavelengths_um=BRIGHTFIELD_WAVELENGTHS_UM, pixel_size_um=0.5)
    batch = np.concatenate([_chw(ihc[:64, :64]), _chw(ihc[64:128, :64]), _chw(ihc[:64, 64:128])])
    out = spec.run(batch, np.array([np.nan, 0.1, 3.0]))
    np.testing.assert_array_equal(out[:2], batch[:2])
    assert not np.array_equal(out[2], batch[2])
    with pytest.raises(ValueError, match="3 windows but 2 defocus values"):
        spec.run(batch, np.array([1.0, 2.0]))


def test_the_estimate_is_shrunk_capped_and_rounded() -> None:
    spec = Deconvolution(na=0.75, wavelengths_um=(0.52,), pixel_size_um=0.5, shrink=0.8, max_defocus_um=6.0)
    assert spec.defocus_used(5.0) == 4.0
    assert spec.defocus_used(20.0) == 6.0
    assert spec.defocus_used(1.0) == 0.75  # 0.8 rounded to the 0.25-µm step
    with pytest.raises(ValueError, match="iterations=0"):
        Deconvolution(na=0.75, wavelengths_um=(0.52,), pixel_size_um=0.5, iterations=0)


def test_iterations_grow_with_the_defocus_up_to_the_cap() -> None:
    fixed = Deconvolution(na=0.75, wavelengths_um=(0.52,), pixel_size_um=0.5, iterations=12)
    assert [fixed.iterations_at(z) for z in (0.5, 3.0, 8.0)] == [12, 12, 12]
    rated = dataclasses.replace(fixed, iterations=40, iterations_per_um=10.0)
    assert [rated.iterations_at(z) for z in (0.0, 0.25, 1.5, 3.25, 8.0)] == [1, 2, 15, 32, 40]
    with pytest.raises(ValueError, match="iterations_per_um=-1"):
        dataclasses.replace(fixed, iterations_per_um=-1.0)


@pytest.mark.parametrize("setting, z", [("method", 4.0), ("handoff", 9.0)])
def test_tiled_deconvolution_matches_the_whole_image_within_two_levels(ihc, setting, z) -> None:
    """The card's halo keeps tiles within the budget of a network (<= 2 levels of 8 bits).

    With the PSF fixed at the widest candidate aberration: the choice among
    candidates is per window, like the defocus estimate, so it is held fixed here.
    ``handoff``: the hand-off's setting at the cap (8 µm, its most iterations).
    """
    image = np.clip(np.rint(defocus(ihc[:384, :384], SETTING, min(z, 8.0)) * 255), 0, 255).astype(np.uint8)
    iterations, rate, shrink = HANDOFF_RL_SETTING if setting == "handoff" else (None, None, None)
    info, default = physics_model(Modality.BRIGHTFIELD, n_channels=3, mpp=0.5, iterations=iterations,
                                  iterations_per_um=rate, shrink=shrink)
    spec = dataclasses.replace(default, spherical_waves=(max(default.spherical_waves, key=abs),))
    if setting == "handoff":
        assert spec.iterations_at(spec.defocus_used(z)) == spec.iterations
    stats = compute_stats(info.card.normalization, image.reshape(-1, 3), dtype=np.uint8, source="test")
    whole = refocus_array(image, spec, stats=stats, defocus=z, tile=None, dtype=np.uint8)
    tiled = refocus_array(image, spec, stats=stats, defocus=z, tile=256, halo=info.card.halo, overlap=16,
                          dtype=np.uint8)
    diff = np.abs(whole.astype(int) - tiled.astype(int))
    m = info.card.halo  # the image border is reflected differently by the two
    assert diff[m:-m, m:-m].max() <= 2, diff[m:-m, m:-m].max()


@pytest.mark.parametrize("true_spherical", [-0.08, 0.08])
def test_the_aberration_of_the_capture_is_chosen_and_restores_better_than_none(he_field, true_spherical) -> None:
    """A capture with spherical aberration: the choice finds its sign and beats the aberration-free PSF."""
    crop = he_field
    aberrated = OpticalSetting(na=0.75, wavelengths_um=BRIGHTFIELD_WAVELENGTHS_UM, pixel_size_um=0.5,
                               spherical_waves=true_spherical)
    truth, blurred = defocus(crop, aberrated, 0.0), defocus(crop, aberrated, 4.0)
    spec = Deconvolution(na=0.75, wavelengths_um=BRIGHTFIELD_WAVELENGTHS_UM, pixel_size_um=0.5, shrink=1.0,
                         iterations=30, spherical_waves=(-0.1, -0.05, 0.0, 0.05, 0.1))
    chosen = spec.choose_spherical(_chw(blurred)[0], 4.0)
    assert np.sign(chosen) == np.sign(true_spherical), chosen
    free = dataclasses.replace(spec, spherical_waves=(0.0,))
    out = spec.run(_chw(blurred), np.array([4.0]))[0].transpose(1, 2, 0)
    out_free = free.run(_chw(blurred), np.array([4.0]))[0].transpose(1, 2, 0)
    assert _ssim(out, truth) > _ssim(out_free, truth) + 0.02, (_ssim(out, truth), _ssim(out_free, truth))


def test_without_aberration_the_choice_costs_little(he_field) -> None:
    crop = he_field
    truth, blurred = defocus(crop, SETTING, 0.0), defocus(crop, SETTING, 4.0)
    spec = Deconvolution(na=0.75, wavelengths_um=BRIGHTFIELD_WAVELENGTHS_UM, pixel_size_um=0.5, shrink=1.0,
                         iterations=30, spherical_waves=(-0.1, -0.05, 0.0, 0.05, 0.1))
    free = dataclasses.replace(spec, spherical_waves=(0.0,))
    out = spec.run(_chw(blurred), np.array([4.0]))[0].transpose(1, 2, 0)
    out_free = free.run(_chw(blurred), np.array([4.0]))[0].transpose(1, 2, 0)
    assert _ssim(out, truth) >= _ssim(out_free, truth) - 0.02


def test_a_flat_window_keeps_the_aberration_free_psf_and_bad_candidates_are_refused() -> None:
    spec = Deconvolution(na=0.75, wavelengths_um=(0.52,), pixel_size_um=0.5, spherical_waves=(0.1, 0.0, -0.1))
    assert spec.choose_spherical(np.full((1, 64, 64), 0.5, dtype=np.float32), 3.0) == 0.0
    for bad in ((), (0.0, 0.9)):
        with pytest.raises(ValueError, match="spherical_waves"):
            Deconvolution(na=0.75, wavelengths_um=(0.52,), pixel_size_um=0.5, spherical_waves=bad)
    assert physics_model(Modality.BRIGHTFIELD, n_channels=3, mpp=0.5)[1].to_dict()["spherical_waves"] == [
        -0.1, -0.05, 0.0, 0.05, 0.1]
    assert physics_model(Modality.FLUORESCENCE, n_channels=1, mpp=0.5)[1].spherical_waves == (0.0,)


def test_method_options_are_checked_before_any_slide_is_read() -> None:
    with pytest.raises(OptionError, match="method='deconvolve' uses none"):
        RefocusOptions(method="deconvolve", model="deepr-fluorescence")
    with pytest.raises(OptionError, match="method='wiener'"):
        RefocusOptions(method="wiener")


@pytest.mark.slow
def test_method_deconvolve_refocuses_only_the_defocused_region(tmp_path, ihc) -> None:
    """--method deconvolve on a brightfield slide: the physics method, gated by the defocus map."""
    # the image's bottom-right corner (a patch of glass) reads 1.8 µm: left out
    rgb = np.clip(np.rint(np.tile(ihc[:384, :384], (3, 3, 1))[:1024, :1024] * 255), 0, 255).astype(np.uint8)
    slide = write_layout_slide(rgb, tmp_path / "bf.tif", regions=[DefocusRegion(0, 0, 512, 1024, 4.0)])
    truth = write_layout_slide(rgb, tmp_path / "truth.tif")
    result = refocus(slide, tmp_path / "out.ome.tif", workers=2, compression="zlib", method="deconvolve")
    record = json.loads((tmp_path / "out.ome.tif.json").read_text())
    assert record["model"] == METHOD_NAME and record["parameters"]["method"] == "deconvolve"
    assert 0 < record["focus"]["refocused_windows"] < record["focus"]["windows"]
    out = tifffile.imread(result.output)
    inp, ref = tifffile.imread(slide), tifffile.imread(truth)
    top = (slice(0, 448), slice(None))
    before = _ssim(inp[top] / 255.0, ref[top] / 255.0)
    after = _ssim(out[top] / 255.0, ref[top] / 255.0)
    assert after > before + 0.02, (before, after)
    # the in-focus half far from the defocused one is passed through bit for bit
    np.testing.assert_array_equal(out[800:], inp[800:])


def _slide(path, pixels: np.ndarray):
    from wsi_deepr import open_slide

    tifffile.imwrite(path, pixels, photometric="rgb" if pixels.ndim == 3 else "minisblack")
    return open_slide(path)


def test_auto_runs_the_brightfield_network_and_deconvolves_fluorescence(tmp_path) -> None:
    from wsi_deepr.stages import choose_method

    bright = _slide(tmp_path / "bf.tif", np.full((64, 64, 3), 200, np.uint8))
    fluo = _slide(tmp_path / "fl.tif", np.full((64, 64), 200, np.uint16))
    auto = RefocusOptions()
    model, method = choose_method(auto, bright)
    assert method is None and model.name == "deepr-brightfield" and model.card.modality is Modality.BRIGHTFIELD
    model, method = choose_method(auto, fluo)
    assert model.name == METHOD_NAME and isinstance(method, Deconvolution) and method.wavelengths_um == (0.52,)
    assert model.card.min_confidence == 0.45 and model.card.normalization == "range"
    # --method deepr runs the fluorescence network; --model runs the named one with method auto
    assert choose_method(RefocusOptions(method="deepr"), fluo)[0].name == "deepr-fluorescence"
    assert choose_method(RefocusOptions(model="deepr-fluorescence"), fluo)[1] is None
    model, method = choose_method(RefocusOptions(method="deconvolve"), bright)
    assert method.wavelengths_um == BRIGHTFIELD_WAVELENGTHS_UM and model.card.channels == 3


def test_method_deepr_without_a_network_of_the_modality_says_what_to_install(tmp_path, monkeypatch) -> None:
    from wsi_deepr.inference import registry
    from wsi_deepr.stages import choose_method

    monkeypatch.setattr(registry, "list_models", lambda: [])
    bright = _slide(tmp_path / "bf.tif", np.full((64, 64, 3), 200, np.uint8))
    with pytest.raises(ModelNotFoundError, match="no default brightfield model"):
        choose_method(RefocusOptions(method="deepr"), bright)
    # auto falls back to deconvolution, which needs no model file
    assert choose_method(RefocusOptions(), bright)[0].name == METHOD_NAME


def test_handoff_runs_the_network_near_and_deconvolves_far(ihc, model_factory) -> None:
    from wsi_deepr.inference.session import SessionSpec, run_model
    from wsi_deepr.restore import Handoff
    from wsi_deepr.testing import default_card

    path = model_factory("handoff-net", default_card(normalization="range", min_defocus_um="1.5"))
    network = SessionSpec(str(path), "cpu", 1)
    physics = Deconvolution(na=0.75, wavelengths_um=BRIGHTFIELD_WAVELENGTHS_UM, pixel_size_um=0.5)
    handoff = Handoff(network, physics, beyond_um=6.0)
    batch = np.concatenate([_chw(ihc[:96, :96]), _chw(ihc[96:192, :96]), _chw(ihc[:96, 96:192])])
    z = np.array([3.0, 7.0, np.nan])
    out = handoff.run(batch, z, model_channels=3)
    np.testing.assert_allclose(out[[0, 2]], run_model(network, batch[[0, 2]], model_channels=3), atol=1e-5)
    np.testing.assert_array_equal(out[1], physics.run(batch[1:2], z[1:2])[0])
    # without estimates (--where all with a network) every window goes to the network
    np.testing.assert_allclose(handoff.run(batch, None, model_channels=3), run_model(network, batch, model_channels=3),
                               atol=1e-5)
    with pytest.raises(ValueError, match="beyond_um=0"):
        Handoff(network, physics, beyond_um=0)


@pytest.mark.slow
def test_a_card_with_deconvolve_beyond_hands_far_windows_to_deconvolution(tmp_path, ihc, model_factory) -> None:
    from wsi_deepr.testing import default_card

    path = model_factory("handoff-card", default_card(normalization="range", halo="56", min_defocus_um="1.5",
                                                      deconvolve_beyond_um="6"))
    rgb = np.clip(np.rint(np.tile(ihc[:384, :384], (3, 3, 1))[:1024, :1024] * 255), 0, 255).astype(np.uint8)
    slide = write_layout_slide(rgb, tmp_path / "bf.tif", regions=[DefocusRegion(0, 0, 512, 1024, 8.0)])
    refocus(slide, tmp_path / "out.ome.tif", model=path, workers=2, compression="zlib")
    record = json.loads((tmp_path / "out.ome.tif.json").read_text())
    assert record["parameters"]["method"] == "deepr"
    handoff = record["parameters"]["handoff"]
    assert handoff["deconvolve_beyond_um"] == 6.0 and handoff["method"] == METHOD_NAME
    assert handoff["pixel_size_um"] == 0.5 and handoff["na"] == 0.75
    # far windows converge further than --method deconvolve's windows (HANDOFF_RL_SETTING)
    assert (handoff["iterations"], handoff["iterations_per_um"], handoff["shrink"]) == HANDOFF_RL_SETTING
    # the same model without the key: the network alone, a different output where the map reads > 6 µm
    plain = model_factory("handoff-card", default_card(normalization="range", halo="56", min_defocus_um="1.5"))
    refocus(slide, tmp_path / "plain.ome.tif", model=plain, workers=2, compression="zlib")
    assert "handoff" not in json.loads((tmp_path / "plain.ome.tif.json").read_text())["parameters"]
    a, b = tifffile.imread(tmp_path / "out.ome.tif"), tifffile.imread(tmp_path / "plain.ome.tif")
    assert not np.array_equal(a[:400], b[:400])
    np.testing.assert_array_equal(a[800:], b[800:])  # in focus: passed through by both
