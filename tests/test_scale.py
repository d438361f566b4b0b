"""Scale-aware inference: the decision, the reduced reader and refocusing end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.transform import downscale_local_mean

from wsi_deepr import open_slide, refocus
from wsi_deepr.writers.ometiff import write_ome_tiff
from wsi_deepr.readers.reduced import ReducedReader, reduced_shape
from wsi_deepr.imaging.pyramid import downsample2
from wsi_deepr.tiling.scale import TOLERANCE, choose_scale

from .builders import rgb_card


# ---------------------------------------------------------------- decision
def test_inside_the_range_is_native() -> None:
    d = choose_scale([0.5, 1.0, 2.0], model_mpp=0.7, model_mpp_range=(0.5, 1.0))
    assert (d.action, d.level, d.factor, d.processing_mpp) == ("native", 0, 1, 0.5)
    assert "inside" in d.reason


def test_finer_slide_uses_the_matching_pyramid_level() -> None:
    d = choose_scale([0.25, 0.5, 1.0, 2.0], model_mpp=0.7, model_mpp_range=(0.5, 1.0))
    assert (d.action, d.level, d.factor, d.processing_mpp) == ("level", 1, 1, 0.5)
    assert d.downsample == pytest.approx(2.0)
    assert d.as_dict()["model_mpp_range"] == [0.5, 1.0]


def test_finer_slide_without_a_matching_level_is_reduced() -> None:
    # 0.11 µm/px (a 100x scan), no pyramid: reduce 5x to 0.55 µm/px
    d = choose_scale([0.11], model_mpp=0.7, model_mpp_range=(0.5, 1.0))
    assert (d.action, d.level, d.factor) == ("downsample", 0, 5)
    assert d.processing_mpp == pytest.approx(0.55)
    # with a 4x level at 0.44 (inside the tolerance) that level is used instead
    d = choose_scale([0.11, 0.44], model_mpp=0.7, model_mpp_range=(0.5, 1.0))
    assert (d.action, d.level) == ("level", 1)


def test_native_for_unknown_coarser_or_forced() -> None:
    assert choose_scale([None, None], model_mpp=0.7).action == "native"
    assert "no pixel size" in choose_scale([None], model_mpp=0.7).reason
    assert "no training pixel size" in choose_scale([0.25], model_mpp=None).reason
    coarse = choose_scale([2.0], model_mpp=0.7, model_mpp_range=(0.5, 1.0))
    assert coarse.action == "native"
    assert "coarser" in coarse.reason
    forced = choose_scale([0.25, 0.5], model_mpp=0.7, model_mpp_range=(0.5, 1.0), mode="native")
    assert forced.action == "native"
    assert "native scale was requested" in forced.reason
    with pytest.raises(ValueError, match="scale mode 'half'"):
        choose_scale([0.25], model_mpp=0.7, mode="half")


def test_card_without_range_uses_a_band_around_mpp() -> None:
    d = choose_scale([0.25, 0.5], model_mpp=0.5)  # 0.375-0.625
    assert (d.action, d.level) == ("level", 1)


def test_a_reduction_that_keeps_more_detail_beats_a_coarser_level() -> None:
    # an SVS at 0.25 µm/px with 4x levels: 2x reduction to 0.5 beats the 1.0 µm/px level
    d = choose_scale([0.25, 1.0, 4.0], model_mpp=0.7, model_mpp_range=(0.5, 1.0))
    assert (d.action, d.level, d.factor, d.processing_mpp) == ("downsample", 0, 2, 0.5)
    # a stored level at the same pixel size as a reduction wins (no reduction work)
    d = choose_scale([0.25, 0.5, 1.0], model_mpp=0.7, model_mpp_range=(0.5, 1.0))
    assert (d.action, d.level) == ("level", 1)


@settings(max_examples=300, deadline=None)
@given(s0=st.floats(0.02, 3.0), lo=st.floats(0.2, 1.0), ratio=st.floats(1.0, 3.0), n_levels=st.integers(1, 6),
       step=st.sampled_from([2.0, 4.0]))
def test_decision_keeps_the_most_detail_inside_the_range(s0, lo, ratio, n_levels, step) -> None:
    hi = lo * ratio
    mpps = [s0 * step**k for k in range(n_levels)]
    d = choose_scale(mpps, model_mpp=(lo + hi) / 2, model_mpp_range=(lo, hi))
    lo_t, hi_t = lo * (1 - TOLERANCE), hi * (1 + TOLERANCE)
    if lo_t <= s0 <= hi_t or s0 > hi_t:
        assert d.action == "native"
        assert d.processing_mpp == s0
        return
    assert d.processing_mpp == pytest.approx(mpps[d.level] * d.factor)
    achievable = [m for m in mpps if lo_t <= m <= hi_t]
    achievable += [m * max(2, math.ceil(lo / m - 1e-9)) for m in mpps if m < lo_t]
    achievable = [m for m in achievable if m <= hi_t]
    if achievable:  # inside the range, and nothing finer was available
        assert lo_t - 1e-9 <= d.processing_mpp <= hi_t + 1e-9
        assert d.processing_mpp <= min(achievable) + 1e-9
    if d.action == "downsample":
        base = mpps[d.level]
        assert d.factor >= 2  # the smallest factor
        assert d.factor == 2 or base * (d.factor - 1) < lo


# ---------------------------------------------------------------- reader
class _ArrayReader:
    def __init__(self, levels):
        self.levels = levels

    def read(self, level, y0, x0, y1, x1):
        return self.levels[level][y0:y1, x0:x1]


def test_reduced_reader_is_the_area_mean() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 60, 3)).astype(np.uint8)
    r = ReducedReader(_ArrayReader([img]), 0, 4, img.shape, np.dtype(np.uint8))
    assert r.shape == (10, 15, 3)
    # the project's one rounding rule for integer area means: half up (wsi_deepr.imaging.reduce)
    expected = np.floor(downscale_local_mean(img.astype(float), (4, 4, 1)) + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(r.read(0, 0, 0, 10, 15), expected)
    with pytest.raises(ValueError, match="outside the reduced level"):
        r.read(0, 0, 0, 11, 15)
    with pytest.raises(ValueError, match="one level"):
        r.read(1, 0, 0, 1, 1)
    with pytest.raises(ValueError, match="factor=1"):
        ReducedReader(_ArrayReader([img]), 0, 1, img.shape, np.dtype(np.uint8))


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), f=st.integers(2, 5), data=st.data())
def test_reduced_reader_regions_equal_the_whole(h, w, f, data) -> None:
    img = np.arange(h * w * 2, dtype=np.float32).reshape(h, w, 2) % 97
    r = ReducedReader(_ArrayReader([img]), 0, f, img.shape, np.dtype(np.float32))
    assert r.shape == reduced_shape(img.shape, f)
    whole = r.read(0, 0, 0, *r.shape[:2])
    # edge blocks average the pixels they have
    ry, rx = r.shape[:2]
    assert whole[-1, -1, 0] == pytest.approx(img[(ry - 1) * f:, (rx - 1) * f:, 0].mean(), rel=1e-6)
    y0 = data.draw(st.integers(0, ry - 1))
    x0 = data.draw(st.integers(0, rx - 1))
    y1 = data.draw(st.integers(y0 + 1, ry))
    x1 = data.draw(st.integers(x0 + 1, rx))
    np.testing.assert_array_equal(r.read(0, y0, x0, y1, x1), whole[y0:y1, x0:x1])


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def range_model(model_factory):
    """RGB test model for slides of 0.5-1.0 um/px (card mpp 0.7, range normalisation)."""
    return model_factory("m", rgb_card(normalization="range", mpp="0.7", mpp_range="[0.5, 1.0]"))


def _slide(path, image, mpp, *, pyramid=True):
    levels = [image]
    while pyramid and min(levels[-1].shape[:2]) > 64:
        levels.append(downsample2(levels[-1]))
    return write_ome_tiff(path, levels, mpp=(mpp, mpp), channel_names=["RGB"], rgb=True, compression="zlib")


def _image(shape, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    base = 128 + 60 * np.sin(x / 7.0)[..., None] * np.cos(y / 11.0)[..., None]
    return np.clip(base + rng.normal(0, 10, (*shape, 3)), 0, 255).astype(np.uint8)


def test_a_40x_slide_is_refocused_at_its_20x_level(tmp_path, range_model) -> None:
    src = _slide(tmp_path / "s40.ome.tif", _image((300, 420)), 0.25)
    out = tmp_path / "out.ome.tif"
    result = refocus(src, out, model=range_model, tile=128, workers=2, output_scale="processing")
    scale = result.provenance["scale"]
    assert (scale["action"], scale["level"], scale["factor"]) == ("level", 1, 1)
    assert scale["processing_mpp"] == pytest.approx(0.5)
    back = open_slide(out)
    assert back.shape == open_slide(src).level_shapes[1]
    assert back.mpp == pytest.approx((0.5, 0.5))
    assert json.loads(out.with_name("out.ome.tif.json").read_text())["scale"]["action"] == "level"
    # the same pixels as refocusing that level written as a slide of its own
    level1 = open_slide(src).read_region(1, 0, 0, *open_slide(src).level_shapes[1][:2])
    ref = refocus(_slide(tmp_path / "l1.ome.tif", level1, 0.5), tmp_path / "ref.ome.tif", model=range_model,
                  tile=128, workers=2)
    assert ref.provenance["scale"]["action"] == "native"
    np.testing.assert_array_equal(tifffile.imread(out, level=0), tifffile.imread(ref.output, level=0))
    # native scale on request: full resolution, recorded
    full = refocus(src, tmp_path / "full.ome.tif", model=range_model, tile=128, workers=2, scale="native")
    assert open_slide(full.output).shape == (300, 420, 3)
    assert "native scale was requested" in full.provenance["scale"]["reason"]


def test_a_flat_fine_slide_is_reduced_by_area_mean(tmp_path, range_model) -> None:
    img = _image((260, 330), seed=1)
    src = _slide(tmp_path / "fine.ome.tif", img, 0.2, pyramid=False)
    out = tmp_path / "out.ome.tif"
    result = refocus(src, out, model=range_model, tile=128, workers=2, output_scale="processing")
    scale = result.provenance["scale"]
    assert (scale["action"], scale["factor"]) == ("downsample", 3)
    assert open_slide(out).mpp == pytest.approx((0.6, 0.6))
    reduced = ReducedReader(open_slide(src).reader, 0, 3, img.shape, np.dtype(np.uint8))
    ref = refocus(_slide(tmp_path / "r.ome.tif", reduced.read(0, 0, 0, *reduced.shape[:2]), 0.6),
                  tmp_path / "ref.ome.tif", model=range_model, tile=128, workers=2)
    np.testing.assert_array_equal(tifffile.imread(out, level=0), tifffile.imread(ref.output, level=0))
