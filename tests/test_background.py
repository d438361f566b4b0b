"""Blank-glass detection: the tissue mask, the window skip mask, and refocus with it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st

from wsi_deepr import open_slide, refocus
from wsi_deepr.tiling.plan import detect_background
from wsi_deepr.tiling.background import glass_level, tissue_mask, window_skip_mask
from wsi_deepr.tiling.geometry import TileGrid

from .conftest import shared_path


def _glass_with_tissue(shape=(600, 800), box=(50, 60, 250, 300), seed=0) -> np.ndarray:
    """Near-white glass (with sensor noise) and one block of H&E-pink tissue."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(238, 2.0, (*shape, 3)), 0, 255)
    y0, x0, y1, x1 = box
    tissue = np.array([200.0, 120.0, 170.0]) + rng.normal(0, 15, (y1 - y0, x1 - x0, 3))
    img[y0:y1, x0:x1] = np.clip(tissue, 0, 255)
    return img.astype(np.uint8)


def test_tissue_mask_finds_stain_and_leaves_noisy_glass():
    img = _glass_with_tissue()
    mask = tissue_mask(img, full_scale=255)
    assert mask[60:240, 70:290].all()  # the stained block
    outside = np.ones(mask.shape, bool)
    outside[50:250, 60:300] = False
    assert not mask[outside].any()  # glass with noise is not tissue
    np.testing.assert_allclose(glass_level(img, full_scale=255), 238, atol=6)


def test_tissue_mask_is_the_optical_density_test():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (64, 80, 3)).astype(np.uint8)
    glass = np.array([240.0, 230.0, 250.0])
    od = -np.log10((img.astype(np.float64) + 1) / (glass + 1))
    np.testing.assert_array_equal(tissue_mask(img, full_scale=255, glass=glass, od_threshold=0.15),
                                  od.max(axis=-1) > 0.15)


def test_a_slide_of_tissue_only_is_all_tissue():
    rng = np.random.default_rng(1)
    img = np.clip(np.array([150.0, 80.0, 130.0]) + rng.normal(0, 10, (100, 120, 3)), 0, 255).astype(np.uint8)
    # no glass to measure: the glass level is floored, and the dark tissue stays tissue
    assert tissue_mask(img, full_scale=255).mean() > 0.99


def test_tissue_mask_rejects_bad_arguments():
    with pytest.raises(ValueError, match="od_threshold"):
        tissue_mask(np.zeros((4, 4, 3)), full_scale=255, od_threshold=0)
    with pytest.raises(ValueError, match=r"\(Y, X, C\)"):
        tissue_mask(np.zeros((4, 4)), full_scale=255)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(40, 300), w=st.integers(40, 300), tile=st.sampled_from([32, 48, 64]),
    halo=st.integers(0, 8), factor=st.integers(1, 6), seed=st.integers(0, 2**16),
)
def test_a_window_with_tissue_is_never_skipped(h, w, tile, halo, factor, seed):
    """Safety: on a thumbnail made by max-pooling, any window whose read area holds a
    tissue pixel at full resolution is processed; at full resolution the mask is exact."""
    rng = np.random.default_rng(seed)
    full = np.zeros((h, w), bool)
    for _ in range(rng.integers(0, 4)):
        y, x = rng.integers(0, h), rng.integers(0, w)
        full[y : y + rng.integers(1, 10), x : x + rng.integers(1, 10)] = True
    grid = TileGrid((h, w), tile=tile, halo=halo, overlap=halo)
    ph, pw = -(-h // factor), -(-w // factor)
    padded = np.zeros((ph * factor, pw * factor), bool)
    padded[:h, :w] = full
    pooled = padded.reshape(ph, factor, pw, factor).any(axis=(1, 3))
    skip = window_skip_mask(pooled, grid, dilate=1)
    exact = window_skip_mask(full, grid, dilate=0)
    for win in grid.windows():
        y0, x0, y1, x1 = win.read
        has = full[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)].any()
        assert exact[win.index] == (not has)
        if has:
            assert not skip[win.index]


def _write_slide(path, img, mpp=0.5):
    tifffile.imwrite(path, img, photometric="rgb", tile=(256, 256), resolution=(1e4 / mpp, 1e4 / mpp),
                     resolutionunit="CENTIMETER")
    return path


def test_refocus_passes_glass_through_and_records_it(tmp_path, rgb_model):
    img = _glass_with_tissue()
    src = _write_slide(tmp_path / "glass.tif", img)
    skipped = refocus(src, tmp_path / "a.ome.tif", model=rgb_model, tile=128, workers=1, compression="zlib")
    full = refocus(src, tmp_path / "b.ome.tif", model=rgb_model, tile=128, workers=1, compression="zlib",
                   background="process")
    a, b = tifffile.imread(skipped.output), tifffile.imread(full.output)
    grid = TileGrid(img.shape[:2], tile=128, halo=4, overlap=4)
    mask = window_skip_mask(tissue_mask(img, full_scale=255), grid)
    assert 0 < mask.sum() < mask.size
    # where only skipped windows reach, the output is the input, bit for bit
    only_skipped = np.ones(img.shape[:2], bool)
    for win in grid.windows():
        if not mask[win.index]:
            y0, x0, y1, x1 = win.core
            only_skipped[max(y0 - 4, 0):y1 + 4, max(x0 - 4, 0):x1 + 4] = False
    assert only_skipped.any()
    np.testing.assert_array_equal(a[only_skipped], img[only_skipped])
    assert not np.array_equal(b[only_skipped], img[only_skipped])  # the model does change glass
    # around the tissue both runs agree: those windows ran in both
    np.testing.assert_array_equal(a[60:240, 70:290], b[60:240, 70:290])
    rec = json.loads((tmp_path / "a.ome.tif.json").read_text())
    assert rec["parameters"]["skipped_windows"] == int(mask.sum())
    assert rec["background"]["skipped_windows"] == int(mask.sum())
    assert 0.05 < rec["background"]["tissue_fraction"] < 0.2
    rec_b = json.loads((tmp_path / "b.ome.tif.json").read_text())
    assert rec_b["parameters"]["skipped_windows"] == 0
    assert rec_b["background"] is None


def test_background_skip_needs_brightfield(tmp_path, mono_model):
    src = tmp_path / "fl.tif"
    tifffile.imwrite(src, np.random.default_rng(0).integers(0, 4000, (200, 200), dtype=np.uint16))
    model = mono_model
    with pytest.raises(ValueError, match="brightfield"):
        refocus(src, tmp_path / "o.ome.tif", model=model, tile=128, background="skip")
    with pytest.raises(ValueError, match="background='sometimes'"):
        refocus(src, tmp_path / "o.ome.tif", model=model, tile=128, background="sometimes")


def test_glass_is_found_on_a_real_slide():
    slide = open_slide(shared_path("slides", "CMU-1-Small-Region.svs"))
    grid = TileGrid(slide.level_shapes[0][:2], tile=512, halo=64, overlap=64)
    found = detect_background(slide, grid)
    # the tissue section leaves glass around it; most windows still hold tissue
    assert 0.02 < found.skip.mean() < 0.6
    assert 0.2 < found.tissue_fraction < 0.95
    assert all(200 < g <= 255 for g in found.glass)


def test_a_large_level_is_read_in_strips_and_averaged(tmp_path):
    img = _glass_with_tissue(shape=(1200, 1000), box=(500, 100, 700, 400))
    slide = open_slide(_write_slide(tmp_path / "big.tif", img))
    grid = TileGrid(img.shape[:2], tile=128, halo=4, overlap=4)
    exact = window_skip_mask(tissue_mask(img, full_scale=255), grid)
    found = detect_background(slide, grid, max_pixels=30_000)  # forces 7x7 block means of level 0
    assert "averaged 7x7" in found.source
    assert not (found.skip & ~exact).any()  # never skips a window that holds tissue
    assert found.skip.sum() >= 0.8 * exact.sum()  # and finds most of the glass
