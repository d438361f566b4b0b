"""Oracle tests: tiled inference equals whole-image inference.

A deterministic ONNX conv model (built with onnx.helper) whose receptive field
fits in the halo must give the same output tiled as on the whole
reflect-padded image, to float precision, at every pixel including the tile
borders and the image edges.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsi_deepr.inference.kernel import infer_windows
from wsi_deepr.tiling.geometry import TileGrid
from wsi_deepr.inference.session import SessionSpec, get_session
from wsi_deepr.inference.normalization import NormStats, compute_stats
from wsi_deepr.parallel.graph import refocus_dask, store_to_zarr
from wsi_deepr.imaging.pyramid import downsample2
from wsi_deepr.testing import conv_model, default_card, save_model

from .builders import ArrayReader, plan_for

DEPTH = 3  # receptive-field radius of the oracle model


@pytest.fixture(scope="module")
def rgb_spec(model_factory) -> SessionSpec:
    path = model_factory("conv3", default_card(halo=DEPTH), depth=DEPTH)
    return SessionSpec(str(path), "cpu", 1)


@pytest.fixture(scope="module")
def mono_spec(model_factory) -> SessionSpec:
    card = default_card(modality="fluorescence", channels=1, halo=DEPTH)
    path = model_factory("conv1", card, channels=1, depth=DEPTH, seed=3)
    return SessionSpec(str(path), "cpu", 1)


def whole_image(spec: SessionSpec, image: np.ndarray, stats: NormStats, halo: int, per_channel=False):
    """Reference: the model on the whole reflect-padded image, no tiling."""
    x = stats.normalize(image)
    x = np.pad(x, ((halo, halo), (halo, halo), (0, 0)), mode="reflect").transpose(2, 0, 1)[None]
    session = get_session(spec)
    if per_channel:
        out = np.concatenate([session.run(None, {"input": x[:, c:c + 1]})[0] for c in range(x.shape[1])], axis=1)
    else:
        out = session.run(None, {"input": x})[0]
    y = out[0].transpose(1, 2, 0)[halo:-halo, halo:-halo]
    return stats.denormalize(y)


@pytest.mark.parametrize(
    ("shape", "tile", "halo", "overlap"),
    [
        ((300, 257), 64, DEPTH, 8),  # sizes not multiples of anything
        ((128, 128), 64, DEPTH, 0),  # plain cropping, no feather
        ((97, 211), 48, 5, 6),  # halo larger than the receptive field
        ((20, 15), 64, DEPTH, 8),  # image smaller than one window
    ],
)
def test_tiled_equals_whole_image(rgb_spec, shape, tile, halo, overlap) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((*shape, 3), dtype=np.float32)
    out = refocus_dask(plan_for(image, rgb_spec, tile=tile, halo=halo, overlap=overlap)).compute()
    ref = whole_image(rgb_spec, image, NormStats.identity(3), DEPTH)
    assert out.shape == image.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)


@given(st.integers(5, 90), st.integers(5, 90), st.integers(0, 6), st.integers(1, 4))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_tiled_equals_whole_image_property(rgb_spec, h, w, overlap, batch) -> None:
    image = np.random.default_rng(h * 1000 + w).random((h, w, 3), dtype=np.float32)
    plan = plan_for(image, rgb_spec, tile=2 * DEPTH + 2 * overlap + 9, halo=DEPTH, overlap=overlap,
                    batch=batch)
    out = refocus_dask(plan).compute(scheduler="sync")
    np.testing.assert_allclose(out, whole_image(rgb_spec, image, NormStats.identity(3), DEPTH), atol=1e-5)


def test_slide_statistics_not_tile_statistics(rgb_spec) -> None:
    """zscore stats from the slide, applied to every tile, still match the oracle."""
    rng = np.random.default_rng(1)
    image = (rng.random((200, 230, 3)) * 200 + 20).astype(np.float32)
    stats = compute_stats("zscore", image.reshape(-1, 3), dtype=np.uint8)
    out = refocus_dask(plan_for(image, rgb_spec, tile=64, halo=DEPTH, overlap=8, stats=stats)).compute()
    np.testing.assert_allclose(out, whole_image(rgb_spec, image, stats, DEPTH), rtol=0, atol=1e-3)


def test_single_channel_model_runs_on_every_channel(mono_spec) -> None:
    image = np.random.default_rng(2).random((150, 170, 3), dtype=np.float32)
    plan = plan_for(image, mono_spec, tile=64, halo=DEPTH, overlap=8, model_channels=1)
    out = refocus_dask(plan).compute()
    ref = whole_image(mono_spec, image, NormStats.identity(3), DEPTH, per_channel=True)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_skip_mask_passes_input_through(rgb_spec) -> None:
    image = np.random.default_rng(3).integers(0, 65535, (180, 140, 2), dtype=np.uint16)
    stats = compute_stats("percentile:1:99", image.reshape(-1, 2), dtype=np.uint16)
    grid = TileGrid(image.shape[:2], tile=64, halo=DEPTH, overlap=8)
    everything = np.ones(grid.grid_shape, bool)
    plan = plan_for(image, None, tile=64, halo=DEPTH, overlap=8, stats=stats, model_channels=1,
                    dtype=np.uint16, skip=everything)
    out = refocus_dask(plan).compute()
    np.testing.assert_array_equal(out, image)


def test_partial_skip_keeps_skipped_cores(rgb_spec) -> None:
    image = np.random.default_rng(4).random((160, 160, 3), dtype=np.float32)
    grid = TileGrid(image.shape[:2], tile=64, halo=DEPTH, overlap=8)
    skip = np.zeros(grid.grid_shape, bool)
    skip[1, 1] = True
    out = refocus_dask(plan_for(image, rgb_spec, tile=64, halo=DEPTH, overlap=8, skip=skip)).compute()
    y0, x0, y1, x1 = grid.window(1, 1).core
    inner = (slice(y0 + 8, y1 - 8), slice(x0 + 8, x1 - 8))  # where this window has weight 1
    np.testing.assert_allclose(out[inner], image[inner], atol=1e-6)
    assert np.abs(out - image).max() > 0.01  # the other windows did run the model


def test_store_to_zarr_matches_dask_array_and_resumes(rgb_spec, tmp_path) -> None:
    image = (np.random.default_rng(5).random((150, 190, 3)) * 255).astype(np.uint8)
    stats = compute_stats("zscore", image.reshape(-1, 3), dtype=np.uint8)
    plan = plan_for(image, rgb_spec, tile=64, halo=DEPTH, overlap=8, stats=stats, dtype=np.uint8, batch=2)
    expected = refocus_dask(plan).compute()
    nby, nbx = plan.block_grid
    assert (nby, nbx) == (3, 2)  # stride 50: 3 window rows; 4 window columns in groups of 2
    target = zarr.create_array(str(tmp_path / "a.zarr"), shape=image.shape, chunks=plan.chunks, dtype="uint8")
    assert plan.block_local_levels == 1  # stride 50, blocks 50 x 100
    half = zarr.create_array(str(tmp_path / "h.zarr"), shape=(75, 95, 3), chunks=(25, 50, 3), dtype="uint8")
    ticks = []
    n = store_to_zarr(plan, target, reduced=[half], progress=ticks.append, num_workers=2)
    assert n == len(ticks) == nby * nbx
    assert sum(ticks) == plan.grid.n_windows
    np.testing.assert_array_equal(target[:], expected)
    np.testing.assert_array_equal(half[:], downsample2(expected))  # per block == whole level
    with pytest.raises(ValueError, match="allow only 1"):
        store_to_zarr(plan, target, reduced=[half, half])
    # blocks reported done are not recomputed (but windows they share are)
    target2 = zarr.create_array(str(tmp_path / "b.zarr"), shape=image.shape, chunks=plan.chunks, dtype="uint8",
                                fill_value=7)
    n = store_to_zarr(plan, target2, done=lambda by, bx: by == 0)
    assert n == (nby - 1) * nbx
    y1 = plan.block_box(0, 0)[2]
    np.testing.assert_array_equal(target2[y1:], expected[y1:])
    assert np.all(target2[:y1] == 7)


def test_block_local_pyramid_levels_equal_whole_image_levels(rgb_spec, tmp_path) -> None:
    image = (np.random.default_rng(8).random((301, 333, 3)) * 255).astype(np.uint8)
    stats = compute_stats("zscore", image.reshape(-1, 3), dtype=np.uint8)
    plan = plan_for(image, rgb_spec, tile=64 + 2 * DEPTH, halo=DEPTH, overlap=0, stats=stats, dtype=np.uint8,
                    batch=2)
    assert plan.block_local_levels == 6  # stride 64
    expected = [refocus_dask(plan).compute()]
    for _ in range(3):
        expected.append(downsample2(expected[-1]))
    target = zarr.create_array(str(tmp_path / "a.zarr"), shape=image.shape, chunks=plan.chunks, dtype="uint8")
    reduced = [zarr.create_array(str(tmp_path / f"{k}.zarr"), shape=expected[k].shape, dtype="uint8",
                                 chunks=(64 >> k, 128 >> k, 3)) for k in (1, 2, 3)]
    store_to_zarr(plan, target, reduced=reduced)
    for k in (1, 2, 3):
        np.testing.assert_array_equal(reduced[k - 1][:], expected[k])


def test_infer_windows_batch_matches_single_windows(rgb_spec) -> None:
    image = np.random.default_rng(6).random((100, 300, 3), dtype=np.float32)
    grid = TileGrid(image.shape[:2], tile=64, halo=DEPTH, overlap=8)
    reader, stats = ArrayReader(image), NormStats.identity(3)
    whole = infer_windows(reader, 0, grid, 1, 0, grid.grid_shape[1], session=rgb_spec, stats=stats, model_channels=3)
    acc = np.zeros_like(whole.data)
    for ix in range(grid.grid_shape[1]):
        part = infer_windows(reader, 0, grid, 1, ix, ix + 1, session=rgb_spec, stats=stats, model_channels=3)
        y0, x0, y1, x1 = part.box
        acc[:, :, x0 - whole.box[1]:x1 - whole.box[1]] += part.data  # (C, Y, X)
    np.testing.assert_allclose(acc, whole.data, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("spec", ["zscore", "percentile:1:99.8", "percentile:0:100", "percentile:37.5:50"])
def test_integer_statistics_match_numpy(dtype, spec) -> None:
    rng = np.random.default_rng(7)
    top = np.iinfo(dtype).max
    pixels = rng.integers(0, top, (10_001, 3), endpoint=True).astype(dtype)
    pixels[:, 2] = (pixels[:, 2] // 50) * 50  # gaps in the histogram
    fast = compute_stats(spec, pixels, dtype=dtype)
    slow = compute_stats(spec, pixels.astype(np.float64), dtype=np.float64)
    np.testing.assert_allclose(fast.offset, slow.offset, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(fast.scale, slow.scale, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize(("halo", "overlap"), [(40, 16), (8, 8), (0, 0)])
def test_default_overlap_is_a_narrow_feather_capped_by_the_halo(tmp_path, halo, overlap) -> None:
    import tifffile

    from wsi_deepr import open_slide
    from wsi_deepr.tiling.plan import plan_refocus
    from wsi_deepr.inference.card import load_model_info

    src = tmp_path / "s.tif"
    tifffile.imwrite(src, np.full((300, 300, 3), 200, np.uint8), photometric="rgb")
    model = load_model_info(save_model(conv_model(card=default_card(halo=halo)), tmp_path / "m.onnx"))
    plan = plan_refocus(open_slide(src), model, tile=256, background="process")
    assert (plan.grid.halo, plan.grid.overlap) == (halo, overlap)
    assert plan_refocus(open_slide(src), model, tile=256, overlap=3, background="process").grid.overlap == 3


def test_default_window_size_and_batch(tmp_path) -> None:
    import tifffile

    from wsi_deepr import open_slide
    from wsi_deepr.tiling.plan import default_batch, plan_refocus
    from wsi_deepr.tiling.geometry import choose_tile
    from wsi_deepr.inference.card import load_model_info

    src = tmp_path / "s.tif"
    tifffile.imwrite(src, np.full((2000, 2600, 3), 200, np.uint8), photometric="rgb", tile=(256, 256))
    model = load_model_info(save_model(conv_model(card=default_card(halo=88)), tmp_path / "m.onnx"))
    plan = plan_refocus(open_slide(src), model, device="cpu", tile="auto", background="process",
                        check_session=False)
    assert plan.grid.tile == choose_tile((2000, 2600), halo=88, overlap=16) > 512
    assert plan.batch == default_batch("cpu", plan.grid.tile) == 1
    assert default_batch("cpu", 512) == 2
    assert default_batch("cpu", 640) == 1
    fixed = plan_refocus(open_slide(src), model, device="cpu", background="process", check_session=False)
    assert (fixed.grid.tile, fixed.batch) == (512, 2)  # the default
    with pytest.raises(ValueError, match="'huge'"):
        plan_refocus(open_slide(src), model, tile="huge", check_session=False)
