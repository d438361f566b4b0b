"""Known facts of the defocus PSF/OTF, defocus application and domain randomisation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsi_deepr.optics import (
    OpticalSetting,
    RandomizationRanges,
    TiltedPlane,
    defocus,
    defocus_tilted,
    iter_defocused_strips,
    otf,
    psf,
    psf_fwhm_um,
    pupil_energy,
    sample_realisation,
)
from wsi_deepr.optics import randomize as rz

BRIGHTFIELD = OpticalSetting(na=0.75, wavelengths_um=(0.61, 0.545, 0.465), pixel_size_um=0.5)


def _texture(shape=(96, 80, 3), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random(shape).astype(np.float32)


# --- PSF facts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("na", "wl"), [(0.8, 0.5), (0.5, 0.6), (1.2, 0.52)])
def test_in_focus_fwhm_is_051_lambda_over_na(na, wl):
    n = 1.518 if na > 1 else 1.0
    s = OpticalSetting(na=na, wavelengths_um=(wl,), pixel_size_um=wl / na / 50, refractive_index=n)
    expected = 0.51 * wl / na  # Airy: 0.514 lambda/NA
    assert psf_fwhm_um(s, 0.0) == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("spherical", [0.0, 0.1])
def test_energy_is_conserved_for_every_defocus(spherical):
    s = OpticalSetting(na=0.75, wavelengths_um=(0.61, 0.545, 0.465), pixel_size_um=0.5,
                       spherical_waves=spherical)
    ref = pupil_energy(s, size=61)
    for z in (-6.0, -1.0, 0.0, 0.5, 3.0, 8.0):
        sums = psf(s, z, size=61, normalize=False).sum(axis=(1, 2))
        np.testing.assert_allclose(sums, ref, rtol=1e-5)
        np.testing.assert_allclose(psf(s, z).sum(axis=(1, 2)), 1.0, rtol=1e-6)


def test_defocus_preserves_mean_intensity_and_dc_of_otf():
    img = _texture()
    out = defocus(img, BRIGHTFIELD, 4.0, mode="wrap")
    np.testing.assert_allclose(out.mean(axis=(0, 1)), img.mean(axis=(0, 1)), rtol=1e-5)
    o = otf(BRIGHTFIELD, 2.0, (64, 64))
    assert o.shape == (3, 64, 33)
    np.testing.assert_allclose(o[:, 0, 0], 1.0, atol=1e-6)
    assert np.abs(o).max() <= 1.0 + 1e-5  # an incoherent OTF never amplifies


def test_psf_symmetric_in_z_without_spherical_aberration():
    s = OpticalSetting(na=0.75, wavelengths_um=(0.53,), pixel_size_um=0.25)
    for z in (0.5, 2.0, 5.0):
        a, b = psf(s, z), psf(s, -z)
        np.testing.assert_allclose(a, b, atol=1e-6 * a.max())
        np.testing.assert_allclose(a[0], a[0].T, atol=1e-6 * a.max())  # and rotationally symmetric


def test_psf_asymmetric_in_z_with_spherical_aberration():
    s = OpticalSetting(na=0.75, wavelengths_um=(0.53,), pixel_size_um=0.25, spherical_waves=0.1)
    a, b = psf(s, 2.0), psf(s, -2.0)
    assert np.abs(a - b).max() > 0.05 * a.max()
    assert psf_fwhm_um(s, 2.0, profile="lsf") != pytest.approx(psf_fwhm_um(s, -2.0, profile="lsf"), rel=0.02)


def test_astigmatism_swaps_its_axes_across_focus():
    s = OpticalSetting(na=0.75, wavelengths_um=(0.52,), pixel_size_um=0.25, astigmatism_waves=0.1)
    a, b, c = psf(s, 1.0, size=61)[0], psf(s, -1.0, size=61)[0], psf(s, 0.0, size=61)[0]
    np.testing.assert_allclose(a, b.T, atol=1e-6 * a.max())  # the line focus turns by 90 degrees through focus
    yy, xx = np.mgrid[-30:31, -30:31]
    assert (a * xx**2).sum() < 0.8 * (a * yy**2).sum()
    np.testing.assert_allclose(c, c.T, atol=1e-6 * c.max())  # in focus: the symmetric cross


@pytest.mark.parametrize("aberration", ["astigmatism_waves", "coma_waves"])
def test_energy_is_conserved_with_astigmatism_and_coma(aberration):
    s = OpticalSetting(na=0.75, wavelengths_um=(0.52,), pixel_size_um=0.5, **{aberration: 0.1})
    ref = pupil_energy(s, size=61)
    for z in (-3.0, 0.0, 2.0):
        np.testing.assert_allclose(psf(s, z, size=61, normalize=False).sum(axis=(1, 2)), ref, rtol=1e-5)


def test_coma_shifts_the_psf_along_x_only():
    s = OpticalSetting(na=0.75, wavelengths_um=(0.52,), pixel_size_um=0.25, coma_waves=0.1)
    k = psf(s, 0.0, size=61)[0]
    yy, xx = np.mgrid[-30:31, -30:31]
    assert abs((k * xx).sum()) > 0.3 and abs((k * yy).sum()) < 1e-6
    np.testing.assert_allclose(k, k[::-1], atol=1e-6 * k.max())  # mirror-symmetric in y
    assert s.to_dict()["coma_waves"] == 0.1 and "astigmatism_waves" not in s.to_dict()


def test_fwhm_grows_with_defocus():
    s = OpticalSetting(na=0.75, wavelengths_um=(0.53,), pixel_size_um=0.25)
    zs = [0.0, 1.0, 2.0, 4.0, 8.0]
    widths = [psf_fwhm_um(s, z, profile="lsf") for z in zs]
    assert all(b > a for a, b in itertools.pairwise(widths)), widths
    # geometric regime: the width grows linearly with |z| and stays inside the blur
    # disc of diameter D = 2 |z| tan(asin(NA/n))
    assert widths[-1] / widths[-2] == pytest.approx(2.0, rel=0.2)
    disc = 2 * 8.0 * 0.75 / np.sqrt(1 - 0.75**2)
    assert 0.5 * disc < widths[-1] < disc
    assert [psf_fwhm_um(s, -z, profile="lsf") for z in zs] == pytest.approx(widths, rel=1e-6)


def test_coarse_pixels_give_a_centred_band_limited_psf():
    k = psf(BRIGHTFIELD, 3.0)
    c = k.shape[-1] // 2
    yy, xx = np.indices(k.shape[1:])
    for ch in k:
        assert (ch * yy).sum() == pytest.approx(c, abs=1e-6)
        assert (ch * xx).sum() == pytest.approx(c, abs=1e-6)


def test_invalid_settings_name_the_value():
    with pytest.raises(ValueError, match="na=1.2"):
        OpticalSetting(na=1.2, wavelengths_um=(0.5,), pixel_size_um=0.5)
    with pytest.raises(ValueError, match="pixel_size_um"):
        OpticalSetting(na=0.5, wavelengths_um=(0.5,), pixel_size_um=0.0)
    with pytest.raises(ValueError, match="wavelengths_um"):
        OpticalSetting(na=0.5, wavelengths_um=(500.0,), pixel_size_um=0.5)
    with pytest.raises(ValueError, match="coma_waves=3"):
        OpticalSetting(na=0.5, wavelengths_um=(0.5,), pixel_size_um=0.5, coma_waves=3.0)
    with pytest.raises(ValueError, match="astigmatism_waves=nan"):
        OpticalSetting(na=0.5, wavelengths_um=(0.5,), pixel_size_um=0.5, astigmatism_waves=float("nan"))


@settings(max_examples=15, deadline=None)
@given(na=st.floats(0.2, 0.95), wl=st.floats(0.4, 0.7), px=st.floats(0.1, 1.0), z=st.floats(-6, 6))
def test_psf_is_normalised_centred_and_never_amplifies_for_any_setting(na, wl, px, z):
    s = OpticalSetting(na=na, wavelengths_um=(wl,), pixel_size_um=px)
    k = psf(s, z)[0]
    assert k.sum() == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-6 * k.max())
    # band-limited sampling may ring slightly negative, but the OTF stays an incoherent one
    o = otf(s, z, (2 * k.shape[0], 2 * k.shape[0]))
    assert np.abs(o).max() <= 1.0 + 1e-5
    assert o[0, 0, 0].real == pytest.approx(1.0, abs=1e-6)


# --- applying defocus -----------------------------------------------------------------------------------


def test_defocus_of_a_point_is_the_psf():
    img = np.zeros((64, 64), np.float32)
    img[32, 32] = 1.0
    s = OpticalSetting(na=0.6, wavelengths_um=(0.52,), pixel_size_um=0.5)
    out = defocus(img, s, 2.5, mode="wrap")
    k = psf(s, 2.5)[0]
    h = k.shape[0] // 2
    np.testing.assert_allclose(out[32 - h : 32 + h + 1, 32 - h : 32 + h + 1], k, atol=1e-6)


def test_tilted_plane_reduces_to_uniform_and_varies_across_the_field():
    img = _texture()
    flat, zmap = defocus_tilted(img, BRIGHTFIELD, TiltedPlane(2.0, 0.0, 0.0))
    np.testing.assert_allclose(flat, defocus(img, BRIGHTFIELD, 2.0), atol=1e-5)
    assert np.all(zmap == 2.0)
    tilted, zmap = defocus_tilted(img, BRIGHTFIELD, TiltedPlane(0.0, 0.1, 0.0))
    assert zmap[0, 0] == pytest.approx(-0.1 * 47.5 * 0.5)
    assert zmap[-1, 0] == pytest.approx(0.1 * 47.5 * 0.5)
    centre_err = np.abs(tilted[46:50] - img[46:50]).mean()
    edge_err = np.abs(tilted[:4] - img[:4]).mean()
    assert edge_err > 2 * centre_err  # sharp where the plane crosses focus, blurred at the edges


@pytest.mark.parametrize("plane", [None, TiltedPlane(0.5, 0.02, -0.03)])
def test_strip_processing_matches_the_whole_image(plane):
    img = _texture((150, 130, 3), seed=3)
    read = lambda y0, x0, y1, x1: img[y0:y1, x0:x1]
    strips = [s for _, s in iter_defocused_strips(read, img.shape[:2], BRIGHTFIELD, z_um=3.0, plane=plane,
                                                  strip=40, block=57)]
    whole = defocus(img, BRIGHTFIELD, 3.0) if plane is None else defocus_tilted(img, BRIGHTFIELD, plane)[0]
    np.testing.assert_allclose(np.concatenate(strips), whole, atol=1e-5)


def test_single_wavelength_applies_to_every_channel():
    img = _texture((40, 40, 2))
    s = OpticalSetting(na=0.5, wavelengths_um=(0.52,), pixel_size_um=0.5)
    out = defocus(img, s, 1.0)
    np.testing.assert_allclose(out[:, :, 1], defocus(img[:, :, 1], s, 1.0), atol=1e-6)
    with pytest.raises(ValueError, match="wavelengths"):
        defocus(_texture((40, 40, 3)), OpticalSetting(na=0.5, wavelengths_um=(0.5, 0.6), pixel_size_um=0.5), 1.0)


# --- domain randomisation -------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_realisations_stay_inside_their_ranges(seed):
    ranges = RandomizationRanges.for_modality("brightfield", tilt_probability=0.5)
    r = sample_realisation(np.random.default_rng(seed), ranges, modality="brightfield",
                           native_pixel_size_um=0.5, wavelengths_um=rz.BRIGHTFIELD_WAVELENGTHS_UM, patch_size=128)
    assert ranges.na[0] <= r.setting.na <= ranges.na[1]
    assert ranges.z_um[0] <= r.z_um <= ranges.z_um[1]
    assert 0.5 * ranges.pixel_scale[0] - 1e-9 <= r.setting.pixel_size_um <= 0.5 * ranges.pixel_scale[1] + 1e-9
    assert ranges.spherical_waves[0] <= r.setting.spherical_waves <= ranges.spherical_waves[1]
    if r.plane is not None:
        # peak-to-peak defocus over the patch
        span = (abs(r.plane.slope_y) + abs(r.plane.slope_x)) * 128 * r.setting.pixel_size_um
        assert ranges.tilt_span_um[0] - 1e-9 <= span <= ranges.tilt_span_um[1] + 1e-9
    if r.jpeg_quality is not None:
        assert ranges.jpeg_quality[0] <= r.jpeg_quality <= ranges.jpeg_quality[1]


def test_fluorescence_realisations_never_jpeg():
    ranges = RandomizationRanges.for_modality("fluorescence")
    rng = np.random.default_rng(0)
    for _ in range(20):
        r = sample_realisation(rng, ranges, modality="fluorescence", native_pixel_size_um=0.3,
                               wavelengths_um=(0.52,), patch_size=64)
        assert r.jpeg_quality is None
        assert len(r.photometric) == 2


def test_photometric_identity_and_noise_statistics():
    img = np.clip(_texture((64, 64, 3)), 0.05, 1.0)
    same = rz.apply_photometric(img, (1, 1, 1, 0, 0, 0), modality="brightfield")
    np.testing.assert_allclose(same, img, atol=1e-5)
    flat = np.full((256, 256, 1), 0.5, np.float32)
    noisy = rz.add_poisson_gaussian_noise(flat, np.random.default_rng(0), photons=100.0, read_noise=0.0)
    assert noisy.mean() == pytest.approx(0.5, abs=0.005)
    assert noisy.std() == pytest.approx(np.sqrt(0.5 * 100) / 100, rel=0.05)  # Poisson: var = mean
    low = rz.add_poisson_gaussian_noise(flat * 0.02, np.random.default_rng(1), photons=100.0, read_noise=0.0)
    assert set(np.unique(np.rint(low * 100)).tolist()) <= set(range(20))  # exact counts at low light


def test_jpeg_and_resample_keep_shapes_and_means():
    img = np.clip(_texture((64, 64, 3)) * 0.2 + 0.4, 0, 1)
    j = rz.jpeg_recompress(img, 50)
    assert j.shape == img.shape
    assert abs(j.mean() - img.mean()) < 0.01
    small = rz.resample(img, (40, 40))
    assert small.shape == (40, 40, 3)
    assert abs(small.mean() - img.mean()) < 0.01
    const = np.full((50, 70), 0.3, np.float32)
    np.testing.assert_allclose(rz.resample(const, (31, 23)), 0.3, atol=1e-6)


def test_ranges_reject_nonsense():
    with pytest.raises(ValueError, match="pixel_scale"):
        RandomizationRanges(pixel_scale=(0.5, 1.0))
    with pytest.raises(ValueError, match="modality"):
        RandomizationRanges.for_modality("xray")


# --- CLI ----------------------------------------------------------------------------------------------


def test_cli_simulate_writes_a_defocused_ome_tiff(tmp_path, capsys):
    import json

    import skimage.io
    import tifffile

    from wsi_deepr.cli import main
    from wsi_deepr.readers import open_slide

    src = tmp_path / "in.png"
    img = (np.clip(_texture((100, 300, 3)), 0, 1) * 255).astype(np.uint8)
    skimage.io.imsave(src, img, check_contrast=False)
    out = tmp_path / "out.ome.tif"
    assert main(["simulate", str(src), "-o", str(out), "--z", "2", "--pixel-size", "0.4", "-q"]) == 0
    slide = open_slide(out)
    assert slide.shape == (100, 300, 3)
    assert slide.mpp == pytest.approx((0.4, 0.4))
    blurred = tifffile.imread(out).astype(float)
    assert abs(blurred.mean() - img.mean()) < 1.0
    assert blurred.std() < 0.5 * img.std()
    record = json.loads((tmp_path / "out.ome.tif.json").read_text())
    assert record["setting"]["na"] == 0.75
    assert record["z_um"] == 2.0
    tilted = tmp_path / "tilt.ome.tif"
    assert main(["simulate", str(src), "-o", str(tilted), "--tilt", "0", "0.05", "-q"]) == 0
    t = tifffile.imread(tilted).astype(float)
    assert np.abs(t[:, :20] - img[:, :20]).mean() > 2 * np.abs(t[:, 140:160] - img[:, 140:160]).mean()
    assert main(["simulate", str(src), "-o", str(out), "--z", "1"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["simulate", str(src), "-o", str(tmp_path / "x.tif")]) == 2
