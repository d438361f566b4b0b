"""Property tests of the tile geometry and blending weights (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsi_deepr.errors import TilingError
from wsi_deepr.tiling.geometry import AxisTiling, TileGrid, choose_tile, feather_ramp, pad_reflect


@st.composite
def axes(draw):
    halo = draw(st.integers(0, 12))
    overlap = draw(st.integers(0, 16))
    tile = draw(st.integers(2 * halo + max(2 * overlap, overlap + 1), 2 * halo + 2 * overlap + 40))
    length = draw(st.integers(1, 300))
    return AxisTiling(length, tile, halo, overlap)


@given(axes())
@settings(max_examples=300, deadline=None)
def test_weights_sum_to_one_and_cover_every_pixel(axis: AxisTiling) -> None:
    total = np.zeros(axis.length)
    covered = np.zeros(axis.length, dtype=int)
    for i in range(axis.count):
        start, stop = axis.core(i)
        assert 0 <= start < stop <= axis.length
        w = axis.weights(i)
        assert w.shape == (stop - start,)
        assert np.all(w > 0)
        assert np.all(w <= 1)
        total[start:stop] += w
        covered[start:stop] += 1
        # the window contains its core plus the halo on both sides
        wstart, wstop = axis.window(i)
        assert wstop - wstart == axis.tile
        assert wstart + axis.halo <= start
        assert stop <= wstop - axis.halo
    assert np.all(covered >= 1)
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-12)


@given(axes(), st.data())
@settings(max_examples=200, deadline=None)
def test_windows_touching_is_exact(axis: AxisTiling, data) -> None:
    start = data.draw(st.integers(0, axis.length - 1))
    stop = data.draw(st.integers(start + 1, axis.length))
    expected = [i for i in range(axis.count) if axis.core(i)[0] < stop and axis.core(i)[1] > start]
    assert list(axis.windows_touching(start, stop)) == expected


@given(st.integers(1, 200), st.integers(1, 200), st.integers(0, 8), st.integers(0, 8), st.integers(1, 30))
@settings(max_examples=200, deadline=None)
def test_grid_weights_partition_unity_2d(h, w, halo, overlap, extra) -> None:
    grid = TileGrid((h, w), tile=2 * halo + 2 * overlap + extra, halo=halo, overlap=overlap)
    total = np.zeros((h, w))
    for win in grid.windows():
        y0, x0, y1, x1 = win.core
        total[y0:y1, x0:x1] += grid.weights(*win.index)
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-12)
    assert total.shape == (h, w)


def test_feather_ramp_is_symmetric_partition() -> None:
    for n in (1, 2, 7, 32, 64):
        r = feather_ramp(n)
        np.testing.assert_allclose(r + r[::-1], 1.0, atol=1e-15)
        assert np.all(np.diff(r) > 0)


def test_stride_error_names_the_parameter_to_raise() -> None:
    with pytest.raises(TilingError, match=r"raise --tile to at least 128"):
        TileGrid((100, 100), tile=64, halo=32, overlap=32)


def test_mask_shape_is_checked() -> None:
    grid = TileGrid((1000, 700), tile=128, halo=8, overlap=8)
    assert grid.check_mask(None).shape == grid.grid_shape
    with pytest.raises(TilingError, match="grid_shape"):
        grid.check_mask(np.zeros((1, 1), bool))


@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 25), st.integers(0, 25))
@settings(max_examples=100, deadline=None)
def test_pad_reflect_matches_reflection_of_the_whole_image(h, w, py, px) -> None:
    """Padding a sub-block equals cutting from the reflect-padded image."""
    img = np.arange(h * w * 2, dtype=float).reshape(h, w, 2)
    full = pad_reflect(img, (py, px), (py, px))
    assert full.shape == (h + 2 * py, w + 2 * px, 2)
    np.testing.assert_array_equal(full[py:py + h, px:px + w], img)
    # reflection (not edge/symmetric): the pixel before the border mirrors pixel 1
    if h > 1 and py > 0:
        np.testing.assert_array_equal(full[py - 1, px:px + w], img[1])


def _work(shape, tile, halo, overlap, parallel=1):
    n = TileGrid(shape, tile=tile, halo=halo, overlap=overlap).n_windows
    return -(-n // parallel) * tile * tile


@given(h=st.integers(1, 20000), w=st.integers(1, 20000), halo=st.integers(0, 100), overlap=st.integers(0, 32),
       parallel=st.integers(1, 4))
@settings(max_examples=200, deadline=None)
def test_chosen_tile_is_valid_and_never_costs_more_than_512(h, w, halo, overlap, parallel) -> None:
    tile = choose_tile((h, w), halo=halo, overlap=overlap, parallel=parallel)
    least = 2 * halo + max(2 * overlap, overlap + 1)
    assert tile % 64 == 0
    assert max(512, least) <= tile <= max(1536, least + 63)
    TileGrid((h, w), tile=tile, halo=halo, overlap=overlap)  # a valid layout
    if least <= 512:
        assert _work((h, w), tile, halo, overlap, parallel) <= _work((h, w), 512, halo, overlap, parallel)


def test_chosen_tile_on_whole_slides_and_small_images() -> None:
    # A 40000-px slide with the brightfield model's halo: the largest window,
    # half the model work per output pixel of 512-px windows.
    big = choose_tile((40000, 40000), halo=88, overlap=16)
    assert big == 1536
    ratio = _work((40000, 40000), 512, 88, 16) / _work((40000, 40000), big, 88, 16)
    assert ratio > 1.9
    # An image that one 512-px window covers: nothing larger is cheaper.
    assert choose_tile((300, 250), halo=88, overlap=16) == 512
    # On a tie the smaller window (less memory) wins.
    assert choose_tile((300, 250), halo=8, overlap=8, largest=2048) == 512
    # A halo the smallest window cannot hold raises the floor.
    assert choose_tile((5000, 5000), halo=300, overlap=16, largest=512) == 640
    with pytest.raises(TilingError, match="parallel"):
        choose_tile((100, 100), halo=4, overlap=4, parallel=0)
