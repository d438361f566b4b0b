"""The scan comes back at its own pixel size: the correction made at a coarser scale, upsampled onto it (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from wsi_deepr import open_slide, refocus
from wsi_deepr.imaging.transfer import native_coordinates, transfer_band, upsample_bilinear

from .builders import rgb_card


def _whole(native, inputs, outputs):
    rows = native_coordinates(native.shape[0], inputs.shape[0])
    cols = native_coordinates(native.shape[1], inputs.shape[1])
    return transfer_band(native, inputs, outputs, rows, cols, first_row=0, last_row=inputs.shape[0] - 1)


def test_native_coordinates_share_the_outer_edges() -> None:
    u = native_coordinates(8, 4)
    np.testing.assert_allclose(u, [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3])  # clamped at both ends
    np.testing.assert_allclose(native_coordinates(5, 5), np.arange(5))


def test_a_constant_residual_is_added_everywhere_and_zero_changes_nothing() -> None:
    rng = np.random.default_rng(0)
    native = rng.integers(0, 200, (40, 30, 3)).astype(np.uint8)
    inputs = rng.integers(0, 255, (20, 15, 3)).astype(np.uint8)
    np.testing.assert_array_equal(_whole(native, inputs, inputs), native)
    np.testing.assert_array_equal(_whole(native, inputs, inputs.astype(np.int16) + 7), native.astype(int) + 7)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(2, 40), w=st.integers(2, 40), f=st.sampled_from([2, 3, 4]), band=st.integers(1, 17),
       width=st.integers(1, 23), seed=st.integers(0, 9))
def test_bands_and_column_pieces_give_the_whole_image(h, w, f, band, width, seed) -> None:
    """Streaming in any band height and piece width equals the transfer of the whole image."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, 255, (h, w, 1)).astype(np.uint8)
    outputs = rng.integers(0, 255, (h, w, 1)).astype(np.uint8)
    native = rng.integers(0, 255, (h * f, w * f, 1)).astype(np.uint8)
    whole = _whole(native, inputs, outputs)
    rows_all, cols_all = native_coordinates(h * f, h), native_coordinates(w * f, w)
    got = np.empty_like(native)
    for y0 in range(0, h * f, band):
        rows = rows_all[y0:y0 + band]
        p0, p1 = int(rows[0]), min(h - 1, int(rows[-1]) + 1)
        for x0 in range(0, w * f, width):
            cols = cols_all[x0:x0 + width]
            q0, q1 = int(cols[0]), min(w - 1, int(cols[-1]) + 1)
            got[y0:y0 + len(rows), x0:x0 + len(cols)] = transfer_band(
                native[y0:y0 + len(rows), x0:x0 + len(cols)], inputs[p0:p1 + 1, q0:q1 + 1],
                outputs[p0:p1 + 1, q0:q1 + 1], rows, cols - q0, first_row=p0, last_row=h - 1)
    np.testing.assert_array_equal(got, whole)


def test_upsampling_needs_the_rows_around_each_coordinate() -> None:
    with pytest.raises(ValueError, match="one more row"):
        upsample_bilinear(np.zeros((2, 4, 1)), np.array([2.5]), np.array([0.0]), first_row=1, last_row=9)


@pytest.fixture(scope="module")
def fine_slide(tmp_path_factory):
    """A 0.25 µm/px slide: CMU tissue enlarged 2×, with a band of glass at the top."""
    from .conftest import shared_path

    cmu = open_slide(shared_path("slides", "CMU-1-Small-Region.svs"))
    crop = cmu.read_region(0, 1000, 700, 1400, 1100)
    crop[:200] = 243  # glass: the first row of 128-px windows holds no tissue
    big = np.repeat(np.repeat(crop, 2, axis=0), 2, axis=1)
    path = tmp_path_factory.mktemp("fine") / "fine.tif"
    tifffile.imwrite(path, big, photometric="rgb", tile=(256, 256), compression="zlib",
                     resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    return path


@pytest.fixture(scope="module")
def half_model(model_factory):
    return model_factory("half", rgb_card(mpp="0.5", mpp_range="[0.45, 0.55]"))


@pytest.mark.slow
def test_a_40x_slide_comes_back_at_its_own_pixel_size_with_the_correction_transferred(
        fine_slide, half_model, tmp_path) -> None:
    native = refocus(fine_slide, tmp_path / "native.ome.tif", model=half_model, tile=128, workers=2,
                     where="all", compression="zlib")
    coarse = refocus(fine_slide, tmp_path / "coarse.ome.tif", model=half_model, tile=128, workers=2,
                     where="all", compression="zlib", output_scale="processing")
    assert native.provenance["scale"]["action"] == "downsample"
    assert native.provenance["output_scale"]["processing_mpp"] == pytest.approx(0.5)
    assert "output_scale" not in coarse.provenance
    src = tifffile.imread(fine_slide)
    out = tifffile.imread(native.output)
    small = tifffile.imread(coarse.output)
    assert out.shape == src.shape
    assert small.shape == (src.shape[0] // 2, src.shape[1] // 2, 3)
    assert open_slide(native.output).mpp == pytest.approx((0.25, 0.25))
    # exactly the scan plus the upsampled residual of the coarse run
    from wsi_deepr.readers.reduced import ReducedReader

    reduced = ReducedReader(open_slide(fine_slide).reader, 0, 2, src.shape, np.dtype(np.uint8))
    expected = _whole(src, reduced.read(0, 0, 0, *reduced.shape[:2]), small)
    np.testing.assert_array_equal(out, expected)
    # where the model did not run (the glass), the scan's pixels come back bit for bit
    skipped = native.provenance["background"]["skipped_windows"]
    assert skipped > 0
    np.testing.assert_array_equal(out[:200], src[:200])
