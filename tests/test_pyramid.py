"""Tests of :mod:`wsi_deepr.pyramid`: level shapes, 2x2 mean, streaming build."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from wsi_deepr.imaging import pyramid as pyramid
from wsi_deepr.imaging.pyramid import build_pyramid, downsample2, pyramid_shapes

SIDES = st.integers(min_value=1, max_value=200_000)
DTYPES = st.sampled_from(
    [np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64]
)


def reference_downsample2(block: np.ndarray) -> np.ndarray:
    """Slow, obviously right 2x2 mean with edge replication and half-up rounding."""
    h, w, c = block.shape
    out = np.empty(((h + 1) // 2, (w + 1) // 2, c), dtype=block.dtype)
    wide = block.astype(np.float64)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            rows = [min(2 * i, h - 1), min(2 * i + 1, h - 1)]
            cols = [min(2 * j, w - 1), min(2 * j + 1, w - 1)]
            mean = sum(wide[r, k] for r in rows for k in cols) / 4
            if block.dtype.kind == "f":
                out[i, j] = mean
            else:
                out[i, j] = np.floor(mean + 0.5)
    return out


# --------------------------------------------------------------------------- shapes


@given(y=SIDES, x=SIDES, min_size=st.integers(min_value=1, max_value=5000))
def test_pyramid_shapes_halve_with_ceil_and_stop(y: int, x: int, min_size: int) -> None:
    shapes = pyramid_shapes((y, x), min_size=min_size)
    assert shapes[0] == (y, x)
    for prev, nxt in itertools.pairwise(shapes):
        assert nxt == (math.ceil(prev[0] / 2), math.ceil(prev[1] / 2))
        assert max(prev) > min_size
    assert max(shapes[-1]) <= min_size


@given(y=st.integers(1, 1024), x=st.integers(1, 1024))
def test_small_slide_has_one_level(y: int, x: int) -> None:
    assert pyramid_shapes((y, x), min_size=1024) == [(y, x)]


def test_pyramid_shapes_example() -> None:
    assert pyramid_shapes((1100, 1300), min_size=400) == [
        (1100, 1300),
        (550, 650),
        (275, 325),
    ]


@pytest.mark.parametrize(
    ("shape", "min_size", "word"),
    [((0, 5), 4, "shape_yx"), ((5, 5), 0, "min_size"), ((5,), 4, "shape_yx")],
)
def test_pyramid_shapes_rejects(shape: tuple, min_size: int, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        pyramid_shapes(shape, min_size=min_size)


# --------------------------------------------------------------------- downsample2


@given(
    shape=hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=9),
    dtype=DTYPES,
    value=st.integers(min_value=0, max_value=255),
)
def test_downsample2_of_constant_is_constant(
    shape: tuple, dtype: type, value: int
) -> None:
    block = np.full(shape, value, dtype=dtype)
    out = downsample2(block)
    assert out.dtype == block.dtype
    assert out.shape == (math.ceil(shape[0] / 2), math.ceil(shape[1] / 2), shape[2])
    assert np.all(out == value)


@given(
    data=hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 3)).map(
            lambda s: (2 * s[0], 2 * s[1], s[2])
        ),
        elements=st.floats(-1e3, 1e3),
    )
)
def test_downsample2_preserves_mean_for_even_sizes(data: np.ndarray) -> None:
    out = downsample2(data)
    np.testing.assert_allclose(
        out.mean(axis=(0, 1)), data.mean(axis=(0, 1)), rtol=1e-9, atol=1e-9
    )


@given(
    data=hnp.arrays(
        np.uint8,
        st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 3)).map(
            lambda s: (2 * s[0], 2 * s[1], s[2])
        ),
    )
)
def test_downsample2_integer_mean_within_rounding(data: np.ndarray) -> None:
    # Each output is its block mean rounded half up: off by -0.25 .. +0.5.
    delta = downsample2(data).astype(np.float64).mean() - data.astype(np.float64).mean()
    assert -0.25 - 1e-9 <= delta <= 0.5 + 1e-9


def _any_block(dtype: type) -> st.SearchStrategy[np.ndarray]:
    low = -1000 if np.dtype(dtype).kind != "u" else 0
    high = 1000 if np.dtype(dtype).kind == "f" else np.iinfo(dtype).max
    return hnp.arrays(
        dtype,
        hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=7),
        elements=st.integers(low, high).map(dtype),
    )


@settings(max_examples=60)
@given(
    data=st.sampled_from([np.uint8, np.uint16, np.int16, np.float32]).flatmap(
        _any_block
    )
)
def test_downsample2_matches_reference_on_any_size(data: np.ndarray) -> None:
    np.testing.assert_array_equal(downsample2(data), reference_downsample2(data))


def test_downsample2_rounds_half_up_and_replicates_edges() -> None:
    block = np.array([[1, 2, 7], [1, 2, 7], [0, 0, 9]], dtype=np.uint8)[..., None]
    out = downsample2(block)[..., 0]
    # 1.5 -> 2; the odd column is averaged with itself; the odd row too.
    np.testing.assert_array_equal(out, [[2, 7], [0, 9]])
    assert downsample2(np.array([[[250], [255]]], dtype=np.uint8)).tolist() == [[[253]]]


def test_downsample2_rejects_non_3d() -> None:
    with pytest.raises(ValueError, match="block"):
        downsample2(np.zeros((4, 4)))


# -------------------------------------------------------------------- build_pyramid


def _base(
    shape: tuple[int, int, int], dtype: str = "uint16"
) -> tuple[zarr.Group, zarr.Array]:
    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    rng = np.random.default_rng(1)
    data = rng.integers(0, 4000, size=shape).astype(dtype)
    base = group.create_array(
        "0", shape=shape, chunks=(512, 512, shape[2]), dtype=dtype
    )
    base[:] = data
    return group, base


def test_build_pyramid_equals_whole_array_downsampling() -> None:
    group, base = _base((1100, 1300, 2))
    levels = build_pyramid(base, group, min_size=300, band=96)
    assert [lv.shape[:2] for lv in levels] == pyramid_shapes((1100, 1300), min_size=300)
    assert levels[0] is base
    expected = base[:]
    for level in levels[1:]:
        expected = downsample2(expected)
        np.testing.assert_array_equal(level[:], expected)
        assert level.chunks == (512, 512, 2)
        assert level.dtype == np.uint16
        assert level.attrs["complete"] is True
        (codec,) = level.compressors
        assert isinstance(codec, zarr.codecs.ZstdCodec)
        assert codec.level == 1


def test_build_pyramid_prefix_and_single_level() -> None:
    group, base = _base((300, 200, 1), dtype="uint8")
    assert build_pyramid(base, group, min_size=300) == [base]
    levels = build_pyramid(base, group, min_size=100, prefix="fine/")
    assert [lv.path for lv in levels[1:]] == ["fine/1", "fine/2"]


def test_build_pyramid_is_restartable(monkeypatch: pytest.MonkeyPatch) -> None:
    group, base = _base((1100, 1300, 1))
    first = build_pyramid(base, group, min_size=200)
    assert len(first) == 4
    built: list[str] = []
    real = pyramid._downsample_level

    def spy(src: zarr.Array, dst: zarr.Array, *, band: int) -> None:
        built.append(dst.path)
        real(src, dst, band=band)

    monkeypatch.setattr(pyramid, "_downsample_level", spy)
    again = build_pyramid(base, group, min_size=200)
    assert built == []
    assert [lv.path for lv in again] == ["0", "1", "2", "3"]

    # An interrupted level (no "complete" mark) is redone, and so is every
    # level after it, even one marked complete.
    group["2"].attrs["complete"] = False
    group["2"][:] = 0
    redone = build_pyramid(base, group, min_size=200)
    assert built == ["2", "3"]
    np.testing.assert_array_equal(redone[2][:], downsample2(redone[1][:]))


def test_build_pyramid_rejects_bad_band() -> None:
    group, base = _base((64, 64, 1))
    with pytest.raises(ValueError, match="band"):
        build_pyramid(base, group, min_size=16, band=0)
