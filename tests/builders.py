"""Builders shared by several test modules: synthetic slides, in-memory plans, model cards.

Imported by ``conftest.py`` (for the model fixtures) and by test modules
(``from .builders import make_rgb``); no test module imports another.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from wsi_deepr.inference.normalization import NormStats
from wsi_deepr.testing import default_card
from wsi_deepr.tiling.geometry import TileGrid
from wsi_deepr.tiling.plan import RefocusPlan

__all__ = ["ArrayReader", "make_mono", "make_rgb", "mono_card", "plan_for", "read_levels", "rgb_card"]


# ------------------------------------------------------------------ model cards
def rgb_card(**extra: str) -> dict[str, str]:
    """The card of the brightfield test model: 3 channels, z-score, halo 4 px."""
    return default_card(**{"halo": 4, **extra})


def mono_card(**extra: str) -> dict[str, str]:
    """The card of the fluorescence test model: 1 channel, percentile 1-99.8, halo 4 px."""
    return default_card(**{"modality": "fluorescence", "channels": 1, "normalization": "percentile:1:99.8",
                           "halo": 4, **extra})


# ------------------------------------------------------------------ slides
def make_rgb(path: Path, shape=(2100, 1700), seed: int = 0) -> Path:
    """Smooth random RGB (JPEG tiles): 2 reduced levels, sizes not multiples of anything."""
    rng = np.random.default_rng(seed)
    small = rng.random((shape[0] // 16 + 2, shape[1] // 16 + 2, 3))
    data = np.repeat(np.repeat(small, 16, axis=0), 16, axis=1)[: shape[0], : shape[1]]
    data = (data * 200 + rng.random((*shape, 3)) * 55).astype(np.uint8)
    tifffile.imwrite(path, data, photometric="rgb", tile=(256, 256), compression="jpeg",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    return path


def make_mono(path: Path, shape=(1200, 1000), seed: int = 1) -> Path:
    """Two-channel uint16 fluorescence OME-TIFF."""
    rng = np.random.default_rng(seed)
    data = (rng.random((2, *shape)) * 4000 + 100).astype(np.uint16)
    tifffile.imwrite(path, data, photometric="minisblack", tile=(256, 256), metadata={"axes": "CYX"})
    return path


def read_levels(path: Path) -> list[np.ndarray]:
    """Every pyramid level of the first series of a TIFF, as arrays."""
    with tifffile.TiffFile(path) as tif:
        return [level.asarray() for level in tif.series[0].levels]


# ------------------------------------------------------------------ in-memory plans
class ArrayReader:
    """In-memory RegionReader."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def read(self, level, y0, x0, y1, x1):
        assert level == 0, level
        assert 0 <= y0 < y1 <= self.array.shape[0], ("rows outside the array", y0, y1, self.array.shape)
        assert 0 <= x0 < x1 <= self.array.shape[1], ("columns outside the array", x0, x1, self.array.shape)
        return self.array[y0:y1, x0:x1]


def plan_for(image, spec, *, tile, halo, overlap, stats=None, model_channels=3, dtype=None, skip=None,
             batch=3):
    """A RefocusPlan over an in-memory image (level 0, no slide)."""
    grid = TileGrid(image.shape[:2], tile=tile, halo=halo, overlap=overlap)
    stats = stats or NormStats.identity(image.shape[2])
    return RefocusPlan(ArrayReader(image), 0, grid, image.shape[2], spec, model_channels, stats, dtype,
                       skip=skip, batch=batch)
