"""``refocus_array``: windows blended over an in-memory image equal one model call on the whole image."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")

from wsi_deepr.inference.kernel import refocus_array
from wsi_deepr.inference.normalization import NormStats
from wsi_deepr.testing import conv_model, default_card, save_model
from wsi_deepr.tiling.geometry import pad_reflect

DEPTH = 3  # receptive-field radius of the conv test model


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("kernel") / "conv3.onnx"
    return save_model(conv_model(channels=3, depth=DEPTH, card=default_card(halo=DEPTH)), path)


@pytest.fixture(scope="module")
def mono_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("kernel") / "conv1.onnx"
    card = default_card(modality="fluorescence", channels=1, halo=DEPTH)
    return save_model(conv_model(channels=1, depth=DEPTH, card=card, seed=3), path)


def texture(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Smooth random uint8 texture."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    img = gaussian_filter(rng.random(shape), sigma=(2, 2, 0))
    return (255 * (img - img.min()) / np.ptp(img)).astype(np.uint8)


def whole(image: np.ndarray, model, stats: NormStats, halo: int, **kw) -> np.ndarray:
    """The oracle: one model call on the reflect-padded image (padded as at a slide's edge), cropped back."""
    padded = pad_reflect(image, (halo, halo), (halo, halo))
    out = refocus_array(padded, model, stats=stats, tile=None, threads=1, **kw)
    return out[halo:-halo, halo:-halo]


STATS = NormStats("zscore", (120.0, 110.0, 100.0), (50.0, 40.0, 60.0))


@pytest.mark.parametrize(
    ("shape", "tile", "halo", "overlap"),
    [
        ((150, 229), 64, DEPTH, 0),  # sides not multiples of the step
        ((150, 229), 64, DEPTH + 1, 8),  # feathered cores
        ((97, 61), 40, DEPTH, 16),  # overlap as wide as the stride
        ((40, 40), 64, DEPTH, 0),  # one window larger than the image
    ],
)
def test_tiled_refocus_array_equals_whole_image_when_halo_covers_receptive_field(rgb_model, shape, tile, halo,
                                                                                   overlap):
    image = texture((*shape, 3))
    tiled = refocus_array(image, rgb_model, stats=STATS, tile=tile, halo=halo, overlap=overlap, threads=1)
    expected = whole(image, rgb_model, STATS, halo)
    assert tiled.shape == image.shape
    assert tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, expected, rtol=0, atol=1e-3)


def test_tiled_refocus_array_rounds_to_the_same_integers_as_whole_image(rgb_model):
    image = texture((120, 130, 3), seed=1)
    tiled = refocus_array(image, rgb_model, stats=STATS, tile=48, halo=DEPTH, overlap=8, dtype=np.uint8,
                          threads=1)
    expected = whole(image, rgb_model, STATS, DEPTH, dtype=np.uint8)
    assert tiled.dtype == np.uint8
    # float sums in another order may move a value sitting on .5 by one level, no more
    assert np.abs(tiled.astype(int) - expected.astype(int)).max() <= 1


def test_one_channel_model_refocuses_each_channel_of_a_multichannel_image_alike(mono_model):
    image = texture((90, 110, 2), seed=2)
    stats = NormStats("zscore", (100.0, 140.0), (30.0, 45.0))
    tiled = refocus_array(image, mono_model, stats=stats, model_channels=1, tile=48, halo=DEPTH, overlap=8,
                          threads=1)
    expected = whole(image, mono_model, stats, DEPTH, model_channels=1)
    np.testing.assert_allclose(tiled, expected, rtol=0, atol=1e-3)


def test_halo_smaller_than_receptive_field_is_not_exact(rgb_model):
    """The test above is not vacuous: without enough context the seams show."""
    image = texture((150, 229, 3))
    tiled = refocus_array(image, rgb_model, stats=STATS, tile=64, halo=0, overlap=0, threads=1)
    expected = whole(image, rgb_model, STATS, DEPTH)
    assert np.abs(tiled - expected).max() > 1e-2
