"""Blind defocus estimator and whole-slide defocus map (wsi_deepr.focus)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import shared_path
from wsi_deepr.focus import (IN_FOCUS_UM, DefocusEstimate, DefocusMap, defocus_map, estimate_defocus,
                             na_prior, resample_to_grid)
from wsi_deepr.optics import BRIGHTFIELD_WAVELENGTHS_UM, OpticalSetting, defocus

CMU_MPP = 0.499
SETTING = OpticalSetting(na=0.75, wavelengths_um=BRIGHTFIELD_WAVELENGTHS_UM, pixel_size_um=CMU_MPP)


@pytest.fixture(scope="module")
def cmu() -> np.ndarray:
    from wsi_deepr import open_slide

    s = open_slide(shared_path("slides", "CMU-1-Small-Region.svs"))
    return s.read_region(0, 0, 0, *s.level_shapes[0][:2])


def _tiles(a: np.ndarray, s: int = 128) -> np.ndarray:
    return np.stack([a[y : y + s, x : x + s] for y in range(0, a.shape[0] - s + 1, s)
                     for x in range(0, a.shape[1] - s + 1, s)])


def _tissue(tiles: np.ndarray) -> np.ndarray:
    """Windows that are mostly tissue (>= 60 % of pixels with OD > 0.1 above glass 243)."""
    return np.array([np.mean(np.any(t < 193, axis=-1)) >= 0.6 for t in tiles])


def _blur(rgb: np.ndarray, z: float) -> np.ndarray:
    out = defocus(rgb.astype(np.float32) / 255.0, SETTING, z)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def test_estimates_rise_with_simulated_defocus(cmu: np.ndarray) -> None:
    region = cmu[1200:1712, 800:1312]
    med = []
    for z in (0.0, 1.0, 2.0, 3.0, 4.5, 6.0):
        est = estimate_defocus(_tiles(_blur(region, z)), mpp=CMU_MPP)
        assert est.valid.all()
        med.append(float(np.median(est.defocus_um)))
    assert all(b > a for a, b in zip(med, med[1:])), med
    assert med[0] < IN_FOCUS_UM and 2.0 < med[3] < 4.0, med


def test_in_focus_cmu_is_called_in_focus(cmu: np.ndarray) -> None:
    tiles = _tiles(cmu)
    tiles = tiles[_tissue(tiles)]
    est = estimate_defocus(tiles, mpp=CMU_MPP)
    assert len(tiles) > 50 and est.valid.all()
    assert np.mean(est.defocus_um < IN_FOCUS_UM) >= 0.95
    assert ((est.confidence > 0) & (est.confidence <= 1)).all()


def test_glass_gives_no_estimate(cmu: np.ndarray) -> None:
    tiles = _tiles(cmu)
    glass = np.array([not np.any(t < 215) for t in tiles])
    assert glass.sum() > 20
    est = estimate_defocus(tiles[glass], mpp=CMU_MPP)
    assert not est.valid.any()
    assert (est.confidence == 0).all()
    flat = np.full((2, 128, 128, 3), 238, np.uint8)
    assert not estimate_defocus(flat, mpp=0.5).valid.any()


def test_blank_fluorescence_background_gives_no_estimate() -> None:
    from wsi_deepr import open_slide

    s = open_slide(shared_path("slides", "small_vectra.qptiff"))
    a = s.read_region(0, 0, 0, *s.level_shapes[0][:2])[:, :, :1]  # DAPI
    tiles = _tiles(a)
    bg = float(np.median(a))
    blank = np.array([np.percentile(t, 99.9) <= bg + 3 for t in tiles])
    texture = np.array([np.percentile(t, 99) >= bg + 30 for t in tiles])
    assert blank.sum() > 10 and texture.sum() > 10
    assert not estimate_defocus(tiles[blank], mpp=0.5, modality="fluorescence").valid.any()
    assert estimate_defocus(tiles[texture], mpp=0.5, modality="fluorescence").valid.mean() > 0.9
    rng = np.random.default_rng(0)
    dark = rng.poisson(40.0, (3, 128, 128, 1)).astype(np.uint16) + 100
    assert not estimate_defocus(dark, mpp=0.325, modality="fluorescence").valid.any()


def test_smear_stack_rises_with_distance_from_focus() -> None:
    from scipy.stats import spearmanr

    from wsi_deepr.data.stacks import read_stack

    stack = read_stack(shared_path("stacks", "smear-brightfield"), modality="brightfield")
    h = min(p.shape[0] for p in stack.planes)
    w = min(p.shape[1] for p in stack.planes)
    crops = np.stack([p[(p.shape[0] - h) // 2 : (p.shape[0] - h) // 2 + h,
                        (p.shape[1] - w) // 2 : (p.shape[1] - w) // 2 + w] for p in stack.planes])
    est = estimate_defocus(crops, mpp=0.5).defocus_um
    labels = np.asarray(stack.z_index)
    f = int(np.flatnonzero(labels == 0)[0])
    assert int(np.argmin(est)) == f
    for side in (slice(0, f + 1), slice(f, None)):
        assert spearmanr(np.abs(labels[side]), est[side]).statistic >= 0.9


def test_input_checks() -> None:
    with pytest.raises(ValueError, match="modality"):
        estimate_defocus(np.zeros((64, 64, 3), np.uint8), mpp=0.5, modality="phase")
    with pytest.raises(ValueError, match="mpp"):
        estimate_defocus(np.zeros((64, 64, 3), np.uint8), mpp=0.0)
    with pytest.raises(ValueError, match="too small"):
        estimate_defocus(np.zeros((8, 8, 3), np.uint8), mpp=0.5)
    with pytest.raises(ValueError, match="na="):
        estimate_defocus(np.zeros((64, 64, 3), np.uint8), mpp=0.5, na=3.0)
    e = DefocusEstimate(defocus_um=np.array([np.nan, 1.0]), confidence=np.array([0.0, 0.5]))
    assert e.valid.tolist() == [False, True]
    assert na_prior(0.5) == 0.75 and na_prior(0.1) == 0.95


def _layout_slide(cmu: np.ndarray, path, win: int = 128) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """CMU with a 3-µm region and a 1-µm region (aligned to the map grid); returns the z map."""
    import tifffile

    out = cmu.copy()
    zmap = np.zeros(cmu.shape[:2])
    r3 = (12 * win, 3 * win, 18 * win, 9 * win)  # y0, x0, y1, x1: dense tissue
    r1 = (4 * win, 9 * win, 9 * win, 14 * win)
    for (y0, x0, y1, x1), z in ((r3, 3.0), (r1, 1.0)):
        pad = 64
        src = cmu[y0 - pad : y1 + pad, x0 - pad : x1 + pad]
        out[y0:y1, x0:x1] = _blur(src, z)[pad:-pad, pad:-pad]
        zmap[y0:y1, x0:x1] = z
    tifffile.imwrite(path, out, photometric="rgb", tile=(256, 256), compression="zlib",
                     metadata={"axes": "YXS", "PhysicalSizeX": CMU_MPP, "PhysicalSizeY": CMU_MPP})
    return zmap, r3


def test_map_finds_known_defocused_region(cmu: np.ndarray, tmp_path) -> None:
    path = tmp_path / "layout.ome.tif"
    zmap, _ = _layout_slide(cmu, path)
    m = defocus_map(path, max_workers=2)
    assert isinstance(m, DefocusMap) and m.window == 128 and m.level == 0
    truth = np.array([zmap[y : y + h, x : x + w].mean() for x, y, w, h in m.boxes])
    est = m.defocus_um
    found = np.isfinite(est) & (est >= 2.0)
    true3 = (truth >= 2.5) & np.isfinite(est)
    iou = (found & true3).sum() / max((found | true3).sum(), 1)
    assert iou >= 0.8, iou
    in_focus = (truth == 0) & (m.tissue >= 0.5) & np.isfinite(est)
    assert in_focus.sum() > 50
    assert np.mean(est[in_focus] < IN_FOCUS_UM) >= 0.95
    d = json.loads(json.dumps(m.to_dict()))
    assert len(d["regions"]) == len(m.boxes) and d["threshold_um"] == IN_FOCUS_UM
    assert m.grid(m.defocus_um).shape == m.grid_shape


def test_map_marks_blank_regions(tmp_path) -> None:
    import tifffile

    rng = np.random.default_rng(1)
    img = np.full((600, 700, 3), 236, np.uint8)
    img[100:400, 150:500] = rng.integers(60, 200, (300, 350, 3), dtype=np.uint8)
    path = tmp_path / "blank.ome.tif"
    tifffile.imwrite(path, img, photometric="rgb", metadata={"axes": "YXS", "PhysicalSizeX": 0.5,
                                                             "PhysicalSizeY": 0.5})
    m = defocus_map(path)
    assert m.grid_shape == (5, 6) and m.mpp == pytest.approx(0.5)
    assert np.isnan(m.grid(m.defocus_um)[4]).all()  # bottom row: glass only
    assert (m.tissue[np.isfinite(m.defocus_um)] > 0).all()
    assert m.boxes[-1].tolist() == [640, 512, 60, 88]


@settings(max_examples=40, deadline=None)
@given(h=st.integers(40, 2000), w=st.integers(40, 2000), win=st.integers(32, 700),
       bx=st.integers(0, 1999), by=st.integers(0, 1999), bw=st.integers(1, 900), bh=st.integers(1, 900))
def test_grid_boxes_tile_the_slide_and_resample(h, w, win, bx, by, bw, bh) -> None:
    from wsi_deepr.focus.map import _grid_boxes

    boxes, (rows, cols) = _grid_boxes(h, w, win)
    assert len(boxes) == rows * cols
    assert int((boxes[:, 2] * boxes[:, 3]).sum()) == h * w  # exact partition
    assert (boxes[:, 0] + boxes[:, 2] <= w).all() and (boxes[:, 1] + boxes[:, 3] <= h).all()
    vals = np.arange(len(boxes), dtype=np.float64)
    m = DefocusMap(slide="x", mpp=0.5, window=win, grid_shape=(rows, cols), boxes=boxes,
                   tissue=np.ones(len(boxes)), defocus_um=vals, confidence=np.ones(len(boxes)),
                   threshold_um=IN_FOCUS_UM, level=0, reduction=1, method="", seconds=0.0)
    assert np.array_equal(resample_to_grid(m, boxes), vals)  # the map's own grid maps to itself
    got = resample_to_grid(m, np.array([[bx, by, bw, bh]]))[0]
    r1, c1 = min(rows, (by + bh - 1) // win + 1), min(cols, (bx + bw - 1) // win + 1)
    r0, c0 = by // win, bx // win
    if r0 >= rows or c0 >= cols:
        assert np.isnan(got)
    else:
        assert got == (r1 - 1) * cols + (c1 - 1)  # max over the touched regions
